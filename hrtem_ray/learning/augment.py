"""Array helpers for training: standardisation, soft labels, dihedral augmentation.

Images and masks are float32 arrays of shape ``(N, H, W)`` (numpy) or tensors whose last two
axes are the image axes. Masks hold the particle probability in [0, 1]; the soft label of a
pixel is the two-class distribution ``(1 - mask, mask)`` (background, particle).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from hrtem_ray.spec.types import (
    N_SYMMETRIES,  # 4 rotations of the square, each with or without a flip
)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def standardize(images: ArrayT, eps: float = 1e-8) -> ArrayT:
    """Standardise every image to mean 0 and variance 1 over its last two axes.

    Parameters
    ----------
    images
        Array or tensor ``(..., H, W)``.
    eps
        Added to the standard deviation so that a constant image maps to zeros.

    Returns
    -------
    Same type and shape as ``images``, float32 for numpy input.
    """
    if isinstance(images, torch.Tensor):
        mean = images.mean(dim=(-2, -1), keepdim=True)
        std = images.std(dim=(-2, -1), keepdim=True, unbiased=False)
        return (images - mean) / (std + eps)
    x = np.asarray(images, dtype=np.float64)
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = x.std(axis=(-2, -1), keepdims=True)
    return ((x - mean) / (std + eps)).astype(np.float32)


def soft_labels(masks: torch.Tensor) -> torch.Tensor:
    """Two-class soft labels ``(background, particle)`` from masks ``(N, 1, H, W)``.

    Returns a tensor ``(N, 2, H, W)`` whose channels sum to 1.
    """
    masks = masks.clamp(0.0, 1.0)
    return torch.cat([1.0 - masks, masks], dim=1)


def label_entropy_floor(masks: np.ndarray | torch.Tensor) -> float:
    """Mean entropy (nats) of the soft labels of ``masks``: the lowest reachable cross-entropy.

    With class-probability targets, cross-entropy = H(q) + KL(q || p) >= H(q), with equality
    when the predicted distribution equals the soft label; the mean of H(q) over all pixels is
    therefore the floor of the mean cross-entropy on these masks.
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    q = np.clip(np.asarray(masks, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(q > 0, q * np.log(q), 0.0) + np.where(q < 1, (1 - q) * np.log1p(-q), 0.0))
    return float(h.mean())


def dihedral(x: ArrayT, k: int) -> ArrayT:
    """Apply symmetry ``k`` (0-7) of the square to the last two axes of ``x``.

    ``k % 4`` quarter turns counter-clockwise, followed by a left-right flip when ``k >= 4``;
    ``k = 0`` is the identity. The images must be square.
    """
    if not 0 <= k < N_SYMMETRIES:
        raise ValueError(f"symmetry index must be in 0..7, got {k}")
    if isinstance(x, torch.Tensor):
        x = torch.rot90(x, k % 4, dims=(-2, -1))
        return torch.flip(x, dims=(-1,)) if k >= 4 else x
    x = np.rot90(x, k % 4, axes=(-2, -1))
    return np.flip(x, axis=-1) if k >= 4 else x


def augment(
    images: torch.Tensor, masks: torch.Tensor, ks: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply symmetry ``ks[i]`` to image ``i`` and to mask ``i`` (the same one to both).

    Parameters
    ----------
    images, masks
        Tensors ``(B, ..., H, W)`` with square images.
    ks
        Integer symmetry indices (0-7), one per sample.

    Returns
    -------
    The augmented images and masks, new tensors of the same shapes.
    """
    images, masks = images.clone(), masks.clone()
    for k in np.unique(ks):
        if k == 0:
            continue
        sel = torch.as_tensor(np.flatnonzero(ks == k), device=images.device)
        images[sel] = dihedral(images[sel], int(k))
        masks[sel] = dihedral(masks[sel], int(k))
    return images, masks


def epoch_order(
    n_images: int, rng: np.random.Generator, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled sample order of one epoch.

    With augmentation an epoch visits every (image, symmetry) pair once, i.e.
    ``N_SYMMETRIES * n_images`` (8 x) samples, as in the reference study (its dataset sizes
    count images before the dihedral augmentation); without, every image once with the
    identity.

    Returns
    -------
    indices, symmetries
        Two int64 arrays of equal length: the image index and symmetry index of each sample.
    """
    n_sym = N_SYMMETRIES if augment else 1
    perm = rng.permutation(n_images * n_sym)
    return perm // n_sym, perm % n_sym
