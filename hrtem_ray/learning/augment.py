"""Array helpers for training: standardisation, soft labels, dihedral and realistic augmentation.

Images and masks are float32 arrays of shape ``(N, H, W)`` (numpy) or tensors whose last two
axes are the image axes. Masks hold the particle probability in [0, 1]; the soft label of a
pixel is the two-class distribution ``(1 - mask, mask)`` (background, particle).

:func:`realistic_augment` adds what real micrographs have and simulations lack (intensity
gamma and contrast, Gaussian and Poisson noise, blur, scale jitter, illumination
gradients), for a training stage whose spec asks for it (``transfer.augment``).
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


def inverse_symmetry(k: int) -> int:
    """The symmetry that undoes symmetry ``k`` of :func:`dihedral`: a mirror image undoes
    itself, ``k`` quarter turns are undone by ``4 - k``.

    >>> [inverse_symmetry(k) for k in range(8)]
    [0, 3, 2, 1, 4, 5, 6, 7]
    """
    if not 0 <= k < N_SYMMETRIES:
        raise ValueError(f"symmetry index must be in 0..7, got {k}")
    return k if k >= 4 else (4 - k) % 4


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


def _uniform(generator: torch.Generator, n: int, low: float, high: float, device) -> torch.Tensor:
    """``n`` draws from U(low, high) on ``device`` (float32, ``(n, 1, 1, 1)``)."""
    u = torch.rand((n, 1, 1, 1), generator=generator).to(device)
    return low + (high - low) * u


def _chosen(generator: torch.Generator, n: int, probability: float, device) -> torch.Tensor:
    """Which of ``n`` samples an augmentation applies to, as a ``(n, 1, 1, 1)`` bool tensor."""
    return (torch.rand((n, 1, 1, 1), generator=generator) < probability).to(device)


def _zoom(
    images: torch.Tensor, masks: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks zoomed about their centres by ``scale`` (> 1 enlarges), reflected at edges."""
    import torch.nn.functional as F

    n = images.shape[0]
    theta = torch.zeros((n, 2, 3), dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale.reshape(n)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    zoom = {"mode": "bilinear", "padding_mode": "reflection", "align_corners": False}
    return F.grid_sample(images, grid, **zoom), F.grid_sample(masks, grid, **zoom)


def _gaussian_blur(images: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Each image blurred by a Gaussian of its own std (pixels), in Fourier space (periodic)."""
    height, width = images.shape[-2:]
    qy = torch.fft.fftfreq(height, device=images.device).reshape(1, 1, height, 1)
    qx = torch.fft.rfftfreq(width, device=images.device).reshape(1, 1, 1, -1)
    transfer = torch.exp(-2 * torch.pi**2 * sigma_px**2 * (qy**2 + qx**2))
    return torch.fft.irfft2(torch.fft.rfft2(images) * transfer, s=(height, width))


def realistic_augment(
    images: torch.Tensor, masks: torch.Tensor, spec, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmentations of an :class:`~hrtem_ray.spec.study.AugmentSpec`, for real micrographs.

    Each augmentation the spec sets is applied to each sample with probability
    ``spec.probability`` at a strength drawn uniformly from its range: zoom (image and
    mask, ``scale_jitter``); then on the image scaled to [0, 1]: a linear illumination
    ramp (``flat_field``), ``gamma``, ``contrast`` (about the mean, clipped to [0, 1]),
    Poisson resampling at a mean of ``poisson_counts`` electrons per pixel, a Gaussian
    blur (``blur_sigma_px``) and Gaussian noise (``gaussian_noise`` times the image's
    std); finally every image is standardised again (mean 0, variance 1), as the model
    expects. Standardising undoes a contrast change on its own (an affine map) except
    where it clips: ``contrast`` acts through the clipping and the noise that follows it,
    whose relative strength it sets.

    Parameters
    ----------
    images, masks
        ``(B, 1, H, W)`` standardised images and masks in [0, 1].
    spec
        An :class:`~hrtem_ray.spec.study.AugmentSpec`.
    generator
        The CPU generator of every random draw (same seed, same augmentations).

    Returns
    -------
    The augmented images and masks, new tensors.
    """
    n, device, p = images.shape[0], images.device, spec.probability
    x, m = images.float(), masks.float()
    if spec.scale_jitter is not None:
        scale = _uniform(generator, n, 1 - spec.scale_jitter, 1 + spec.scale_jitter, device)
        on = _chosen(generator, n, p, device)
        zx, zm = _zoom(x, m, torch.where(on, scale, torch.ones_like(scale)))
        x, m = zx, zm.clamp(0.0, 1.0)
    low = x.amin(dim=(-2, -1), keepdim=True)
    x = (x - low) / (x.amax(dim=(-2, -1), keepdim=True) - low + 1e-6)
    if spec.flat_field is not None:
        height, width = x.shape[-2:]
        angle = _uniform(generator, n, 0.0, 2 * torch.pi, device)
        yy = torch.linspace(-0.5, 0.5, height, device=device).reshape(1, 1, height, 1)
        xx = torch.linspace(-0.5, 0.5, width, device=device).reshape(1, 1, 1, width)
        ramp = torch.cos(angle) * xx + torch.sin(angle) * yy
        amount = _uniform(generator, n, 0.0, spec.flat_field, device)
        x = torch.where(_chosen(generator, n, p, device), x * (1 + amount * ramp), x)
    if spec.gamma is not None:
        log_gamma = _uniform(generator, n, *np.log(spec.gamma), device)
        x = torch.where(_chosen(generator, n, p, device), x.clamp(min=0) ** log_gamma.exp(), x)
    if spec.contrast is not None:  # about the mean, in [0, 1]: sets the signal against the noise
        factor = _uniform(generator, n, *spec.contrast, device)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        changed = (mean + (x - mean) * factor).clamp(0.0, 1.0)
        x = torch.where(_chosen(generator, n, p, device), changed, x)
    if spec.poisson_counts is not None:
        counts = _uniform(generator, n, *spec.poisson_counts, device)
        rate = (x.clamp(min=0) * counts).cpu()
        noisy = (torch.poisson(rate, generator=generator).to(device)) / counts
        x = torch.where(_chosen(generator, n, p, device), noisy, x)
    if spec.blur_sigma_px is not None:
        sigma = _uniform(generator, n, *spec.blur_sigma_px, device)
        x = torch.where(_chosen(generator, n, p, device), _gaussian_blur(x, sigma), x)
    if spec.gaussian_noise is not None:
        level = _uniform(generator, n, 0.0, spec.gaussian_noise, device)
        noise = torch.randn(x.shape, generator=generator).to(device)
        spread = x.std(dim=(-2, -1), keepdim=True)
        x = torch.where(_chosen(generator, n, p, device), x + noise * level * spread, x)
    return standardize(x).to(images.dtype), m.to(masks.dtype)
