"""Calibration of particle probabilities: reliability diagrams and the expected calibration error.

A model is calibrated when, of the pixels it gives a particle probability near ``p``, a
share ``p`` are particles. :func:`reliability` bins predicted probabilities
(:data:`RELIABILITY_BINS` equal bins on [0, 1]) and compares each bin's mean probability
(``confidence``) with the share of its pixels inside the mask (``frequency``);
:attr:`Reliability.ece` is the pixel-weighted mean gap. :func:`hrtem_ray.learning.train.evaluate`
records one per eval domain, and the study stores it with every result row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "RELIABILITY_BINS",
    "Reliability",
    "reliability",
    "reliability_from_sums",
    "reliability_sums",
]

#: Bins of predicted particle probability of the reliability diagrams (equal width on [0, 1]).
RELIABILITY_BINS = 10


@dataclass
class Reliability:
    """A reliability diagram: per bin of predicted particle probability (equal widths on
    [0, 1], :data:`RELIABILITY_BINS`), the pixels, their mean probability (``confidence``)
    and the share of them inside the mask (``mask > 0.5``: ``frequency``); NaN in empty bins.
    """

    pixels: list[int]
    confidence: list[float]
    frequency: list[float]

    @property
    def ece(self) -> float:
        """Expected calibration error: pixel-weighted mean of ``|frequency - confidence|``."""
        n = np.asarray(self.pixels, float)
        gap = np.abs(np.asarray(self.frequency) - np.asarray(self.confidence))
        return float(np.nansum(n * gap) / n.sum()) if n.sum() else float("nan")


def reliability_sums(probabilities: torch.Tensor | np.ndarray, masks) -> np.ndarray:
    """Per-bin sums ``(3, RELIABILITY_BINS)`` of particle probabilities against masks (any
    equal shapes): pixels, sum of probabilities, pixels inside the mask (``mask > 0.5``)."""
    p = torch.as_tensor(probabilities).detach().float().reshape(-1).cpu()
    true = (torch.as_tensor(masks).detach().float().reshape(-1).cpu() > 0.5).double()
    index = torch.clamp((p * RELIABILITY_BINS).long(), 0, RELIABILITY_BINS - 1)
    sums = torch.zeros((3, RELIABILITY_BINS), dtype=torch.float64)
    sums[0].index_add_(0, index, torch.ones_like(true))
    sums[1].index_add_(0, index, p.double())
    sums[2].index_add_(0, index, true)
    return sums.numpy()


def reliability(probabilities: torch.Tensor | np.ndarray, masks) -> Reliability:
    """The reliability diagram of particle probabilities against masks (any equal shapes).

    Examples
    --------
    >>> r = reliability(np.array([0.05, 0.05, 0.95, 0.95]), np.array([0, 0, 1, 0]))
    >>> r.pixels[0], r.pixels[9], r.frequency[9], round(r.ece, 3)
    (2, 2, 0.5, 0.25)
    """
    return reliability_from_sums(reliability_sums(probabilities, masks))


def reliability_from_sums(sums: np.ndarray) -> Reliability:
    """:class:`Reliability` from per-bin sums ``(3, bins)``: pixels, sum of probabilities,
    pixels in the mask (sums of several batches or models add up)."""
    count = sums[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, sums[1] / count, np.nan)
        frequency = np.where(count > 0, sums[2] / count, np.nan)
    return Reliability(
        [int(c) for c in count], [float(c) for c in confidence], [float(f) for f in frequency]
    )
