"""Image geometry of micrographs: resampling to another pixel size, and tiling.

:func:`resample` maps an image onto a grid of another pixel size covering the same field
of view (``round(side * from / to)`` pixels, pixel centres aligned) by band-limited
(Fourier) resampling of the image's mirror-symmetric extension: its DCT-II coefficients
are cropped (downsampling: an ideal low-pass at the new Nyquist frequency, so nothing
aliases) or zero-padded (upsampling), then inverted at the new size. Mirroring instead of
wrapping keeps the edges free of wrap-around ringing; lattice fringes below the new
Nyquist frequency keep their amplitude (a Gaussian anti-aliasing filter would damp them),
and upsampling then downsampling returns the original exactly.
Masks and probability maps are resampled linearly (order 1, no overshoot) and kept as
fractions in [0, 1] (soft labels at particle edges, as simulated masks are).

Tiles (:func:`tile_starts`, :func:`tile_positions`, :func:`cut_tiles`) cover an image with
squares of the dataset's image size that overlap by at least a given width; the last tile
of a row or column ends at the image's edge. :mod:`hrtem_ray.dataset.micrographs` imports
micrographs as such tiles, and :mod:`hrtem_ray.inference` predicts on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "cut_tiles",
    "resample",
    "resample_labelled",
    "resampled_shape",
    "tile_positions",
    "tile_starts",
]


def resampled_shape(shape: Sequence[int], from_angstrom: float, to_angstrom: float) -> tuple:
    """Shape of the same field of view at another pixel size (at least 1 px per side)."""
    return tuple(max(1, int(round(s * from_angstrom / to_angstrom))) for s in shape)


def resample(
    image: np.ndarray,
    from_angstrom: float,
    to_angstrom: float,
    *,
    shape: Sequence[int] | None = None,
    mask: bool = False,
) -> np.ndarray:
    """``image`` on a grid of pixel size ``to_angstrom`` (see the module docstring).

    Parameters
    ----------
    image
        ``(H, W)`` array at ``from_angstrom`` per pixel.
    from_angstrom, to_angstrom
        Pixel sizes in Å.
    shape
        Output shape; default :func:`resampled_shape` (the same field of view).
    mask
        Linear interpolation (for masks and probability maps: no overshoot); masks are
        *not* thresholded here.
    """
    shape = (
        tuple(shape)
        if shape is not None
        else resampled_shape(image.shape, from_angstrom, to_angstrom)
    )
    if shape == image.shape:
        return np.asarray(image, np.float32)
    if mask:
        from skimage.transform import resize

        out = resize(np.asarray(image, np.float64), shape, order=1, mode="edge")
        return out.astype(np.float32)
    return _dct_resample(np.asarray(image, np.float64), shape).astype(np.float32)


def resample_labelled(
    image: np.ndarray, mask: np.ndarray | None, from_angstrom: float, to_angstrom: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """An image and its mask (or ``None``) on the grid of ``to_angstrom``.

    The image as :func:`resample` gives it, the mask interpolated linearly onto the
    image's new shape and clipped to [0, 1]: how labelled micrographs are brought to a
    model's or a dataset's pixel size before they are cut into tiles.
    """
    image = resample(image, from_angstrom, to_angstrom)
    if mask is None:
        return image, None
    mask = resample(mask, from_angstrom, to_angstrom, shape=image.shape, mask=True)
    return image, np.clip(mask, 0.0, 1.0)


def _dct_resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Band-limited resampling of a 2-D image to ``shape`` (DCT-II crop or zero-pad)."""
    from scipy.fft import dctn, idctn

    coefficients = dctn(image, type=2, norm="ortho")
    out = np.zeros(shape, np.float64)
    keep = tuple(min(a, b) for a, b in zip(image.shape, shape, strict=True))
    out[: keep[0], : keep[1]] = coefficients[: keep[0], : keep[1]]
    # orthonormal DCT: scale so that a constant image keeps its value
    out *= math.sqrt(shape[0] * shape[1] / (image.shape[0] * image.shape[1]))
    return idctn(out, type=2, norm="ortho")


def tile_starts(length: int, tile_px: int, overlap_px: int = 0) -> list[int]:
    """Start offsets of tiles of ``tile_px`` covering ``[0, length)``, overlapping by at least
    ``overlap_px``; the last tile ends at ``length`` (it may overlap more).

    Raises
    ------
    ValueError
        ``length < tile_px``, or ``overlap_px`` not in ``[0, tile_px)``.
    """
    if not 0 <= overlap_px < tile_px:
        raise ValueError(f"overlap must be in [0, {tile_px}) px, got {overlap_px}")
    if length < tile_px:
        raise ValueError(f"a side of {length} px is smaller than one tile ({tile_px} px)")
    stride = tile_px - overlap_px
    starts = list(range(0, length - tile_px + 1, stride))
    if starts[-1] != length - tile_px:
        starts.append(length - tile_px)
    return starts


def tile_positions(shape: Sequence[int], tile_px: int, overlap_px: int = 0) -> list[tuple]:
    """``(y, x)`` top-left corners of the tiles of an image, row by row."""
    return [
        (y, x)
        for y in tile_starts(shape[0], tile_px, overlap_px)
        for x in tile_starts(shape[1], tile_px, overlap_px)
    ]


def cut_tiles(image: np.ndarray, positions: Sequence[tuple], tile_px: int) -> np.ndarray:
    """The tiles ``(N, tile_px, tile_px)`` of ``image`` at ``positions``."""
    return np.stack([image[y : y + tile_px, x : x + tile_px] for y, x in positions])
