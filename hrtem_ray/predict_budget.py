"""What ``predict`` needs before it starts: the model's grid and the memory of a prediction.

:func:`estimate_predict_memory_bytes` estimates the peak memory of
:func:`hrtem_ray.inference.predict` from the micrographs' sizes resampled to the model's
pixel size, and :func:`check_predict_memory` refuses inputs above the memory available (or
``--max-memory``) before any model is loaded. :class:`PredictError` is the error of every
``predict`` refusal (re-exported by :mod:`hrtem_ray.inference`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hrtem_ray.dataset.geometry import resampled_shape
from hrtem_ray.dataset.micrograph_files import Micrograph
from hrtem_ray.spec.footprint import available_memory_bytes, format_bytes

__all__ = [
    "ACTIVATION_BYTES_PER_TILE_PIXEL",
    "BYTES_PER_INPUT_PIXEL",
    "BYTES_PER_MODEL_PIXEL",
    "HELD_BYTES_PER_INPUT_PIXEL",
    "HELD_ENSEMBLE_BYTES_PER_INPUT_PIXEL",
    "MEMBER_BYTES_PER_INPUT_PIXEL",
    "PREDICT_BASE_BYTES",
    "TILES_PER_CHUNK",
    "ModelGeometry",
    "PredictError",
    "check_predict_memory",
    "estimate_predict_memory_bytes",
    "inference_bytes",
]


class PredictError(ValueError):
    """A model cannot be chosen or loaded, or the inputs cannot be predicted."""


@dataclass(frozen=True)
class ModelGeometry:
    """What a study's models take: pixel size (Å), tile size (px) and U-Net size preset."""

    pixel_size_angstrom: float
    tile_px: int
    model_size: str


#: Resident memory of a ``predict`` process before its first micrograph, with margin:
#: Python, torch, hrtem_ray, scikit-image and a small U-Net measured 300 MiB (CPU torch),
#: and about 90 MiB more appear at the first resampling (allocator arenas, FFT plans).
PREDICT_BASE_BYTES = 512 * 2**20


#: Peak bytes per pixel of the model's grid while one micrograph is segmented: float64 DCT
#: coefficients in and out of the resampling, the float32 resampled image, the blended
#: sums and weights, the float64 probability resampled back. Fitted 23.6 on the measured
#: peaks of ``benchmarks/predict_memory.py`` (README, "Micrographs"), rounded up.
BYTES_PER_MODEL_PIXEL = 32


#: Peak bytes per pixel of the input grid while one micrograph is segmented and written
#: (probability, mask, labels, overlay): fitted 10.5 with resampling; 61 all told without
#: (a micrograph at the model's pixel size, model grid and input grid being one).
BYTES_PER_INPUT_PIXEL = 32


#: Bytes per input pixel kept until the end for every file: the image read (float32), its
#: probability (float32) and mask (bool).
HELD_BYTES_PER_INPUT_PIXEL = 9


#: Activation bytes per tile pixel of one tile in a batch of inference (torch, no_grad),
#: by U-Net preset: measured 196 to 214 (small) and 617 to 669 (full) at 64 and 128 px.
ACTIVATION_BYTES_PER_TILE_PIXEL = {"small": 256, "full": 768}


#: Bytes per input pixel of each ensemble member beyond the first: its float64 probability
#: stays in the stack the mean and standard deviation are taken over.
MEMBER_BYTES_PER_INPUT_PIXEL = 8
#: Bytes per input pixel kept until the end by an ensemble: its float64 std map.
HELD_ENSEMBLE_BYTES_PER_INPUT_PIXEL = 8
#: Tiles cut at once by :func:`predict_probability` (at least the batch size).
TILES_PER_CHUNK = 256


def inference_bytes(geometry: ModelGeometry, batch_size: int = 32) -> int:
    """Working set of the tiled inference: a chunk of tiles and their probabilities
    (float32) and one batch's activations (:data:`ACTIVATION_BYTES_PER_TILE_PIXEL`)."""
    tile = geometry.tile_px**2
    activations = ACTIVATION_BYTES_PER_TILE_PIXEL.get(geometry.model_size, 768)
    return max(batch_size, TILES_PER_CHUNK) * tile * 8 + batch_size * tile * activations


def estimate_predict_memory_bytes(
    shapes: Sequence[tuple[int, int]],
    pixel_sizes_angstrom: Sequence[float],
    geometry: ModelGeometry,
    batch_size: int = 32,
    n_models: int = 1,
) -> int:
    """Estimated peak memory (bytes) of :func:`predict` on micrographs of these shapes.

    ``PREDICT_BASE_BYTES + inference_bytes + sum over files of HELD_BYTES_PER_INPUT_PIXEL x
    pixels + max over files of (BYTES_PER_MODEL_PIXEL x resampled pixels +
    BYTES_PER_INPUT_PIXEL x pixels)``: every file's image, probability and mask stay in
    memory until the end, and the files are segmented one at a time. The resampled size is
    the same field of view at the model's pixel size
    (:func:`hrtem_ray.dataset.geometry.resampled_shape`): a micrograph of 2.0 Å/px predicted
    by a model of 0.4 Å/px is 25 times as many pixels. The README's "Micrographs" section
    compares the estimate with measured peaks. An ensemble of ``n_models`` adds
    :data:`MEMBER_BYTES_PER_INPUT_PIXEL` per pixel for each member beyond the first to the
    file being segmented, and keeps its std map (:data:`HELD_ENSEMBLE_BYTES_PER_INPUT_PIXEL`).

    Parameters
    ----------
    shapes
        ``(H, W)`` of each micrograph.
    pixel_sizes_angstrom
        Each micrograph's pixel size.
    geometry
        The model's pixel size, tile size and preset (:func:`study_geometry`).
    batch_size
        Tiles per forward pass.
    n_models
        Models predicting each file (an ensemble's replicates; 1 without one).
    """
    ensemble = n_models > 1
    held_per_pixel = HELD_BYTES_PER_INPUT_PIXEL + ensemble * HELD_ENSEMBLE_BYTES_PER_INPUT_PIXEL
    peak_per_pixel = BYTES_PER_INPUT_PIXEL + (n_models - 1) * MEMBER_BYTES_PER_INPUT_PIXEL
    held, peak = 0, 0
    for shape, pixel in zip(shapes, pixel_sizes_angstrom, strict=True):
        pixels = math.prod(shape)
        resampled = math.prod(resampled_shape(shape, pixel, geometry.pixel_size_angstrom))
        held += held_per_pixel * pixels
        peak = max(peak, BYTES_PER_MODEL_PIXEL * resampled + peak_per_pixel * pixels)
    return PREDICT_BASE_BYTES + inference_bytes(geometry, batch_size) + held + peak


def check_predict_memory(
    micrographs: Sequence[Micrograph],
    geometry: ModelGeometry,
    max_memory_bytes: int | None = None,
    batch_size: int = 32,
    n_models: int = 1,
) -> int:
    """Refuse micrographs whose prediction would need more memory than the limit.

    Parameters
    ----------
    micrographs
        The files read (shapes and pixel sizes).
    geometry
        The model's (:func:`study_geometry`).
    max_memory_bytes
        The limit (``--max-memory``); default the memory available now
        (:func:`hrtem_ray.spec.footprint.available_memory_bytes`).
    batch_size
        Tiles per forward pass.
    n_models
        Models predicting each file (an ensemble's replicates).

    Returns
    -------
    int
        The estimate (:func:`estimate_predict_memory_bytes`).

    Raises
    ------
    PredictError
        The estimate exceeds the limit: the message names the largest file, its size and
        resampled size, the estimate and the limit, and ``--max-memory``.
    """
    model_pixel = geometry.pixel_size_angstrom
    shapes = [m.image.shape for m in micrographs]
    pixels = [m.pixel_size_angstrom for m in micrographs]
    estimate = estimate_predict_memory_bytes(shapes, pixels, geometry, batch_size, n_models)
    limit = available_memory_bytes() if max_memory_bytes is None else int(max_memory_bytes)
    if estimate <= limit:
        return estimate
    largest = max(
        micrographs,
        key=lambda m: math.prod(resampled_shape(m.image.shape, m.pixel_size_angstrom, model_pixel)),
    )
    height, width = largest.image.shape
    new_h, new_w = resampled_shape(largest.image.shape, largest.pixel_size_angstrom, model_pixel)
    what = "the limit of --max-memory" if max_memory_bytes is not None else "the memory available"
    raise PredictError(
        f"predicting {len(micrographs)} file(s) needs an estimated {format_bytes(estimate)}, "
        f"more than {what} ({format_bytes(limit)}): {largest.name} ({height} x {width} px at "
        f"{largest.pixel_size_angstrom:g} A/px) is resampled to {new_h} x {new_w} px at the "
        f"model's {model_pixel:g} A/px; predict fewer or smaller files (crop or bin them), or "
        "set --max-memory (e.g. 64GB) on a machine that has it"
    )
