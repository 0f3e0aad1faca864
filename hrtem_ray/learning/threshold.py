"""The classical baseline every network must beat: a Gaussian blur plus an Otsu threshold.

:func:`fit_threshold` chooses, on labelled training tiles, the blur (a Gaussian of
``sigma_px`` pixels, from :data:`SIGMA_CANDIDATES_PX`) and the polarity (particles
``dark`` or ``bright`` against the background) that give the highest IoU on those tiles;
:func:`threshold_segment` then segments any tile with them: blur, then Otsu's threshold of
the blurred tile itself (a global threshold per tile: no learned level), particles on the
chosen side. :func:`pooled_iou` scores masks exactly as the networks are scored
(:func:`hrtem_ray.learning.train.evaluate`: intersection over union of prediction and
``mask > 0.5`` over all pixels of the set).

Nothing here is trained: a threshold "model" is two numbers, deterministic for a given
set of training tiles. The study stores it as rows of their own (``phase: threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = [
    "SIGMA_CANDIDATES_PX",
    "ThresholdModel",
    "fit_threshold",
    "otsu_level",
    "pooled_iou",
    "threshold_segment",
]

#: Blur widths tried on the training tiles (Gaussian standard deviation, pixels).
SIGMA_CANDIDATES_PX: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
Polarity = Literal["dark", "bright"]


@dataclass(frozen=True)
class ThresholdModel:
    """A fitted blur-and-Otsu segmentation.

    Attributes
    ----------
    sigma_px
        Gaussian blur before thresholding, in pixels of the tiles.
    polarity
        ``dark``: particles are the pixels below the threshold (bright-field TEM);
        ``bright``: above it.
    train_iou
        Pooled IoU on the training tiles it was chosen on.
    n_train
        Training tiles it was chosen on.
    """

    sigma_px: float
    polarity: Polarity
    train_iou: float
    n_train: int


def otsu_level(image: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``image``: the level maximising the between-class variance.

    A constant image gives its value (everything on one side).

    Examples
    --------
    >>> level = otsu_level(np.array([0.0, 0.1, 0.0, 1.0, 0.9, 1.0]))
    >>> 0.1 < level < 0.9
    True
    """
    values = np.asarray(image, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return low
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def threshold_segment(images: np.ndarray, sigma_px: float, polarity: Polarity) -> np.ndarray:
    """Boolean particle masks ``(N, H, W)``: each tile blurred, then cut at its Otsu level.

    Parameters
    ----------
    images
        Tiles ``(N, H, W)`` (or one ``(H, W)`` tile).
    sigma_px
        Gaussian blur (pixels; 0: none), reflecting at the tile's edges.
    polarity
        ``dark`` or ``bright`` particles (see :class:`ThresholdModel`).
    """
    if polarity not in ("dark", "bright"):
        raise ValueError(f"polarity must be 'dark' or 'bright', got {polarity!r}")
    stack = np.asarray(images, dtype=np.float64)
    single = stack.ndim == 2
    stack = stack[None] if single else stack
    out = np.empty(stack.shape, dtype=bool)
    for k, image in enumerate(stack):
        blurred = gaussian_filter(image, sigma_px, mode="reflect") if sigma_px > 0 else image
        level = otsu_level(blurred)
        out[k] = blurred < level if polarity == "dark" else blurred > level
    return out[0] if single else out


def pooled_iou(predicted: np.ndarray, masks: np.ndarray) -> float:
    """IoU of ``predicted`` (boolean) and ``masks > 0.5`` over all pixels; 1.0 when both empty."""
    truth = np.asarray(masks) > 0.5
    pred = np.asarray(predicted, dtype=bool)
    union = int((pred | truth).sum())
    return int((pred & truth).sum()) / union if union else 1.0


def fit_threshold(
    images: np.ndarray,
    masks: np.ndarray,
    sigmas_px: tuple[float, ...] = SIGMA_CANDIDATES_PX,
) -> ThresholdModel:
    """Choose the blur and polarity with the highest pooled IoU on labelled tiles.

    Ties go to the smaller blur, then to ``dark``.

    Parameters
    ----------
    images, masks
        Training tiles and their masks, ``(N, H, W)``.
    sigmas_px
        Blur widths to try (pixels).

    Raises
    ------
    ValueError
        Without tiles, or images and masks of different shapes.
    """
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 3 or images.shape != masks.shape or not len(images):
        raise ValueError(
            f"need images and masks of one shape (N, H, W), N >= 1; got {images.shape} "
            f"and {masks.shape}"
        )
    best: tuple[float, float, Polarity] | None = None
    for sigma in sorted(sigmas_px):
        for polarity in ("dark", "bright"):
            iou = pooled_iou(threshold_segment(images, sigma, polarity), masks)
            if best is None or iou > best[0]:
                best = (iou, float(sigma), polarity)  # type: ignore[assignment]
    assert best is not None
    return ThresholdModel(best[1], best[2], best[0], len(images))
