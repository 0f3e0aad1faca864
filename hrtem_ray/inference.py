"""Segmenting micrographs with a study's model: tiled inference, masks, particle tables.

:func:`predict` (``hrtem_ray.predict``, ``hrtem-ray predict``) reads micrographs
(:func:`hrtem_ray.dataset.micrograph_files.read_micrograph`), chooses a model of a study
(:func:`choose_model`: a model id, or ``best:DOMAIN``), and for each file

1. resamples the image to the model's pixel size (the study dataset's
   ``simulation.output_sampling_angstrom``; :func:`hrtem_ray.dataset.geometry.resample`);
2. predicts it in tiles of the model's image size that overlap by ``overlap_px``
   (default a quarter tile): each tile is standardised on its own, as in training, and the
   tiles' probability maps are blended with a separable sin² (Hann) window
   (:func:`blend_window`), so that every pixel is a smooth weighted mean of the tiles
   covering it and no seams show at tile borders;
3. brings the probability map back to the input's pixel grid (linear interpolation) and
   thresholds it at ``threshold`` (0.5);
4. measures the particles with :func:`skimage.measure.regionprops` (8-connected
   components): :func:`particle_table`.

Outputs written to ``out_dir`` per file ``<stem>``: ``<stem>_mask.tif`` (uint8 0/255,
ImageJ calibration in nm of the input), ``<stem>_mask.png``, ``<stem>_overlay.png`` (the
image with particles tinted red), and for all files ``particles.parquet`` and
``particles.csv`` (each written atomically) and ``predict.json``, the run record (model,
files with their sha256, options, outputs; written first with ``complete: false``, last
with ``true``). One output directory holds one run: a directory that holds another run's
results (another model, other files or options) is refused before anything is written,
unless ``overwrite``, which deletes that run's outputs first (:func:`prepare_output_dir`);
the same run again simply writes the same outputs again.

Ensembles (``ensemble=True``, ``hrtem-ray predict --ensemble``): the replicates of the
chosen model's configuration (its models that differ only in their seed,
:func:`replicates`) each predict every file; the mask is their mean probability above the
threshold, ``<stem>_std.tif`` and ``<stem>_std.png`` hold the per-pixel standard deviation
over the models, and the particle table gets each particle's spread
(:data:`ENSEMBLE_COLUMNS`). :mod:`hrtem_ray.realdata` ranks unlabelled micrographs by
this disagreement (``hrtem-ray suggest``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from hrtem_ray.analysis.tables import CONFIGURATION_COLUMNS
from hrtem_ray.dataset.geometry import cut_tiles, resample, tile_positions
from hrtem_ray.dataset.micrograph_files import (
    Micrograph,
    MicrographError,
    micrograph_format,
    read_micrograph,
)
from hrtem_ray.learning.train import load_checkpoint, torch_threads
from hrtem_ray.learning.train import predict as predict_tiles
from hrtem_ray.predict_budget import (
    TILES_PER_CHUNK,
    ModelGeometry,
    PredictError,
    check_predict_memory,
    estimate_predict_memory_bytes,
    inference_bytes,
)
from hrtem_ray.spec.config import parse_stored_study_spec
from hrtem_ray.spec.footprint import format_bytes
from hrtem_ray.spec.types import output_gpts
from hrtem_ray.store import storage
from hrtem_ray.store.layout import STUDY_FILE
from hrtem_ray.sweep import results

#: The run record of an output directory (see the module docstring).
RUN_RECORD = "predict.json"
#: Names of the files a run writes per input file (after its stem), and for all files.
OUTPUT_SUFFIXES = ("_mask.tif", "_mask.png", "_overlay.png", "_std.tif", "_std.png")
TABLE_FILES = ("particles.parquet", "particles.csv")

PARTICLE_COLUMNS = (
    "source",
    "label",
    "area_nm2",
    "equivalent_diameter_nm",
    "centroid_x_nm",
    "centroid_y_nm",
    "mean_probability",
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelChoice:
    """The model :func:`choose_model` picked, and why."""

    model_id: str
    reason: str


@dataclass(frozen=True)
class StudyModel:
    """A loaded model with the image geometry it was trained on."""

    model: torch.nn.Module
    model_id: str
    reason: str
    pixel_size_angstrom: float
    tile_px: int


@dataclass
class PredictionResult:
    """What :func:`predict` returns.

    Attributes
    ----------
    masks : dict
        File name -> boolean mask on the input's pixel grid.
    probabilities : dict
        File name -> float32 particle probability on the input's pixel grid.
    particles : polars.DataFrame
        One row per particle, columns :data:`PARTICLE_COLUMNS`.
    model_id, reason : str
        The model used and why it was chosen (an ensemble: its first model).
    files : list of str
        Files written (empty without ``out_dir``).
    std : dict
        Ensemble only: file name -> per-pixel standard deviation over the models of the
        particle probability (``probabilities`` then holds their mean).
    model_ids : list of str
        The models used (one, or the ensemble's).
    """

    masks: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray]
    particles: pl.DataFrame
    model_id: str
    reason: str
    files: list[str]
    std: dict[str, np.ndarray] = field(default_factory=dict)
    model_ids: list[str] = field(default_factory=list)


def choose_model(study_root: str, model: str) -> ModelChoice:
    """The model named by ``model``: a model id, or ``best:DOMAIN``.

    ``best:DOMAIN`` takes, among the study's models with a usable stored checkpoint, the
    one with the lowest loss (excess cross-entropy) on eval domain ``DOMAIN``; the reason
    says which, with its loss and IoU, how many were compared, and whether a model with
    a lower loss kept no checkpoint (``keep_checkpoints: pretrain``). A better model whose
    checkpoint is damaged (truncated, incomplete, not matching its digest: every
    candidate down to the chosen one is read in full, :func:`results.checkpoint_problem`
    with ``deep``) is skipped with a WARNING naming it and why, and the reason says so
    too: the choice is never silently the runner-up.

    Raises
    ------
    PredictError
        No results, no row for ``DOMAIN`` (the eval domains are listed), or no model
        with a usable checkpoint; or the model id has no usable checkpoint.
    """
    if not model.startswith("best:"):
        problem = results.checkpoint_problem(study_root, model, deep=True)
        if problem is not None:
            raise PredictError(f"--model {model}: no usable checkpoint in {study_root} ({problem})")
        return ModelChoice(model, f"model {model} as given")
    domain = model.removeprefix("best:")
    table = results.read_results(study_root)
    if table.is_empty():
        raise PredictError(f"--model {model}: {study_root} has no results yet; run the sweep")
    rows = table.filter(pl.col("eval_domain") == domain).sort("loss", nulls_last=True)
    if rows.is_empty():
        known = ", ".join(sorted(table.get_column("eval_domain").unique().to_list()))
        raise PredictError(f"--model {model}: no results on domain {domain!r}; evaluated: {known}")
    best, damaged, n_usable = None, [], 0
    for row in rows.iter_rows(named=True):
        if not results.checkpoint_files(study_root, row["model_id"]):
            continue  # kept no checkpoint (keep_checkpoints: pretrain), or deleted by design
        # read in full down to the chosen one, so that a damaged better model is reported
        problem = results.checkpoint_problem(study_root, row["model_id"], deep=best is None)
        if problem is None:
            n_usable += 1
            best = best or row
        elif best is None:
            damaged.append((row, problem))
    if best is None:
        extra = f"; {len(damaged)} damaged: {damaged[0][1]}" if damaged else ""
        raise PredictError(
            f"--model {model}: none of the {rows.height} models evaluated on {domain!r} has a "
            f"usable stored checkpoint (set keep_checkpoints: all in the spec and rerun the "
            f"sweep){extra}"
        )
    reason = (
        f"best:{domain}: {best['model_id']} ({best['phase']}) has the lowest loss on {domain} "
        f"({best['loss']:.4f}, IoU {best['iou']:.3f}) of the {n_usable} models "
        "with a usable stored checkpoint"
    )
    for row, problem in damaged:
        warning = (
            f"best:{domain}: skipped {row['model_id']} ({row['phase']}, loss "
            f"{row['loss']:.4f}, lower than the chosen {best['loss']:.4f}): {problem}; "
            f"`hrtem-ray check {study_root} --deep --repair` then a sweep retrains it"
        )
        log.warning(warning)
        reason += f"; skipped {row['model_id']} (loss {row['loss']:.4f}): damaged checkpoint"
    overall = rows.row(0, named=True)
    if overall["model_id"] != best["model_id"] and overall["model_id"] not in {
        r["model_id"] for r, _ in damaged
    }:
        reason += (
            f"; {overall['model_id']} ({overall['phase']}) has a lower loss "
            f"({overall['loss']:.4f}) but kept no checkpoint (keep_checkpoints: all keeps it)"
        )
    return ModelChoice(best["model_id"], reason)


#: Extra particle-table columns of an ensemble prediction.
ENSEMBLE_COLUMNS = ("probability_spread", "mean_pixel_std")


def replicates(study_root: str, model_id: str) -> list[str]:
    """The models of ``model_id``'s configuration (itself included) that have a checkpoint.

    Replicates differ only in their seed (``pretrain.seeds``, ``transfer.seeds`` or
    ``baseline.seeds``): same :data:`CONFIGURATION_COLUMNS`. Sorted by model id.
    """
    table = results.read_results(study_root)
    columns = [c for c in CONFIGURATION_COLUMNS if c in table.columns]
    key = pl.concat_str(
        [pl.col(c).cast(pl.String).fill_null("<null>") for c in columns], separator="|"
    )
    models = table.select("model_id", key.alias("key")).unique("model_id")
    mine = models.filter(pl.col("model_id") == model_id)
    if mine.is_empty():
        return []
    same = models.filter(pl.col("key") == mine.item(0, "key")).get_column("model_id").to_list()
    return sorted(m for m in same if results.checkpoint_problem(study_root, m) is None)


def choose_ensemble(study_root: str, model: str) -> tuple[list[str], str]:
    """The replicate models of the configuration of ``model`` (an id or ``best:DOMAIN``), and why.

    Raises
    ------
    PredictError
        As :func:`choose_model`, or when fewer than two replicates have a checkpoint.
    """
    choice = choose_model(study_root, model)
    ids = replicates(study_root, choice.model_id)
    if len(ids) < 2:
        raise PredictError(
            f"--ensemble: the configuration of {choice.model_id} has {len(ids)} model(s) with a "
            "stored checkpoint; an ensemble needs replicates: seeds (pretrain.seeds, "
            "transfer.seeds or baseline.seeds) and keep_checkpoints: all for transfer models"
        )
    reason = f"{choice.reason}; ensemble of its {len(ids)} replicates (seeds): {', '.join(ids)}"
    return ids, reason


def study_geometry(study_root: str) -> ModelGeometry:
    """The pixel size, tile size and model size of a study's models, from its ``study.json``.

    Raises
    ------
    PredictError
        ``study_root`` holds no ``study.json``.
    """
    spec_path = storage.join(study_root, STUDY_FILE)
    if not storage.exists(spec_path):
        raise PredictError(f"--study: no study.json in {study_root} (run its sweep first)")
    spec = parse_stored_study_spec(storage.read_json(spec_path)["spec"], source=spec_path)
    sim = spec.dataset.simulation
    tile_px = output_gpts(spec.dataset.structures.cell_angstrom, sim)
    return ModelGeometry(sim.output_sampling_angstrom, tile_px, spec.model.size)


def _load_checkpoint_model(study_root: str, model_id: str, model: str) -> torch.nn.Module:
    """A stored checkpoint's model (on the CPU); ``model`` is what the user asked for."""
    location = results.checkpoint_path(study_root, model_id)
    with tempfile.TemporaryDirectory(prefix="hrtem-predict-") as tmp:
        storage.download_dir(location, tmp)
        try:
            net, _ = load_checkpoint(tmp)
        except Exception as exc:  # passed the checks, yet torch cannot load it
            raise PredictError(
                f"--model {model}: cannot load the checkpoint {location} "
                f"({type(exc).__name__}: {exc})"
            ) from None
    return net


def choose_models(study_root: str, model: str, ensemble: bool = False) -> tuple[list[str], str]:
    """The models ``predict`` uses, and why: the one :func:`choose_model` picks, or with
    ``ensemble`` its configuration's replicates (:func:`choose_ensemble`)."""
    if ensemble:
        return choose_ensemble(study_root, model)
    choice = choose_model(study_root, model)
    return [choice.model_id], choice.reason


def _load_models(
    study_root: str, ids: Sequence[str], reason: str, geometry: ModelGeometry, model: str
) -> list[StudyModel]:
    """The checkpoints of ``ids``, each with the study's pixel and tile size."""
    pixel, tile = geometry.pixel_size_angstrom, geometry.tile_px
    return [
        StudyModel(_load_checkpoint_model(study_root, m, model), m, reason, pixel, tile)
        for m in ids
    ]


def load_study_models(study_root: str, model: str, ensemble: bool = False) -> list[StudyModel]:
    """Choose (:func:`choose_models`) and load a study's model, or with ``ensemble`` its
    replicates, each with the study's pixel size and tile size.

    Raises
    ------
    PredictError
        ``study_root`` holds no ``study.json``, as :func:`choose_model` or
        :func:`choose_ensemble`, or a chosen checkpoint cannot be loaded.
    """
    ids, reason = choose_models(study_root, model, ensemble)
    return _load_models(study_root, ids, reason, study_geometry(study_root), model)


def load_study_model(study_root: str, model: str) -> StudyModel:
    """The model :func:`choose_model` picks, loaded (:func:`load_study_models`)."""
    return load_study_models(study_root, model)[0]


def check_output_dir(out_dir: str | Path) -> None:
    """Refuse an output directory that is a file, lies under a file or cannot be written.

    Raises
    ------
    PredictError
        Naming the path and why (:func:`hrtem_ray.store.storage.check_writable_root`).
    """
    try:
        storage.check_writable_root(str(Path(out_dir).expanduser().absolute()))
    except storage.StorageError as exc:
        raise PredictError(f"-o {out_dir}: {exc}") from None


def blend_window(tile_px: int, floor: float = 1e-3) -> np.ndarray:
    """Separable sin² (Hann) weights ``(tile_px, tile_px)``, at least ``floor`` (image borders)."""
    ramp = np.sin(np.pi * (np.arange(tile_px) + 0.5) / tile_px) ** 2
    return np.maximum(np.outer(ramp, ramp), floor).astype(np.float32)


def predict_probability(
    model: torch.nn.Module,
    image: np.ndarray,
    tile_px: int,
    overlap_px: int | None = None,
    *,
    batch_size: int = 32,
    device: str | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Particle probability of an image of any size on the model's grid (tiled and blended).

    Parameters
    ----------
    model
        A segmentation model (2 classes).
    image
        ``(H, W)`` image at the model's pixel size; smaller than a tile, it is padded by
        reflection.
    tile_px
        The model's image size.
    overlap_px
        Overlap of neighbouring tiles; default ``tile_px // 4`` (the sin² blend hides
        seams at a quarter tile with about 1.8x the tiles of no overlap; half a tile
        costs 4x).
    batch_size, device, tta
        As :func:`hrtem_ray.learning.train.predict` (``tta``: each tile's mean logits over
        its 8 rotations and mirror images).
    """
    overlap_px = tile_px // 4 if overlap_px is None else int(overlap_px)
    height, width = image.shape
    pad = ((0, max(0, tile_px - height)), (0, max(0, tile_px - width)))
    padded = np.pad(image, pad, mode="reflect") if any(p[1] for p in pad) else image
    positions = tile_positions(padded.shape, tile_px, overlap_px)
    window = blend_window(tile_px)
    total = np.zeros(padded.shape, np.float32)
    weight = np.zeros(padded.shape, np.float32)
    chunk = max(batch_size, TILES_PER_CHUNK)
    for i in range(0, len(positions), chunk):
        batch = positions[i : i + chunk]
        probs = predict_tiles(
            model, cut_tiles(padded, batch, tile_px), batch_size=batch_size, device=device,
            tta=tta,
        )  # fmt: skip
        for (y, x), prob in zip(batch, probs, strict=True):
            total[y : y + tile_px, x : x + tile_px] += prob * window
            weight[y : y + tile_px, x : x + tile_px] += window
    return (total / weight)[:height, :width]


def segment(
    model: torch.nn.Module,
    micrograph: Micrograph,
    model_pixel_size_angstrom: float,
    tile_px: int,
    overlap_px: int | None = None,
    *,
    batch_size: int = 32,
    device: str | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Particle probability of a micrograph on its own pixel grid (see the module docstring;
    ``tta`` as :func:`predict_probability`)."""
    image = resample(micrograph.image, micrograph.pixel_size_angstrom, model_pixel_size_angstrom)
    prob = predict_probability(
        model, image, tile_px, overlap_px, batch_size=batch_size, device=device, tta=tta
    )
    back = resample(
        prob,
        model_pixel_size_angstrom,
        micrograph.pixel_size_angstrom,
        shape=micrograph.image.shape,
        mask=True,
    )
    return np.clip(back, 0.0, 1.0)


def particle_table(
    mask: np.ndarray,
    probability: np.ndarray,
    pixel_size_angstrom: float,
    source: str,
    members: np.ndarray | None = None,
) -> pl.DataFrame:
    """One row per 8-connected particle of ``mask`` (columns :data:`PARTICLE_COLUMNS`).

    Areas in nm² (pixels x pixel area), the equivalent diameter of a disc of that area in
    nm, the centroid in nm from the image's top-left corner (x to the right, y down),
    and the mean probability over the particle. With ``members``, the probability maps
    ``(M, H, W)`` of an ensemble's models (``probability`` their mean), also
    :data:`ENSEMBLE_COLUMNS`: ``probability_spread``, the standard deviation over the
    models of each model's mean probability over the particle, and ``mean_pixel_std``,
    the particle's mean of the per-pixel standard deviation over the models.
    """
    from skimage.measure import label, regionprops

    pixel_nm = pixel_size_angstrom / 10.0
    labels = label(mask.astype(bool), connectivity=2)
    rows = [
        {
            "source": source,
            "label": int(region.label),
            "area_nm2": float(region.area) * pixel_nm**2,
            "equivalent_diameter_nm": float(region.equivalent_diameter_area) * pixel_nm,
            "centroid_x_nm": float(region.centroid[1]) * pixel_nm,
            "centroid_y_nm": float(region.centroid[0]) * pixel_nm,
            "mean_probability": float(region.intensity_mean),
        }
        for region in regionprops(labels, intensity_image=probability)
    ]
    schema = {
        "source": pl.String,
        "label": pl.Int64,
        **{c: pl.Float64 for c in PARTICLE_COLUMNS[2:]},
    }
    table = pl.DataFrame(rows, schema=schema)
    if members is None:
        return table
    flat = labels.ravel()
    n = int(flat.max()) + 1
    area = np.maximum(np.bincount(flat, minlength=n), 1)
    per_model = np.stack([np.bincount(flat, m.ravel(), minlength=n) / area for m in members])
    pixel_std = np.bincount(flat, members.std(axis=0).ravel(), minlength=n) / area
    index = table.get_column("label").to_numpy()
    return table.with_columns(
        probability_spread=pl.Series(per_model.std(axis=0)[index], dtype=pl.Float64),
        mean_pixel_std=pl.Series(pixel_std[index], dtype=pl.Float64),
    )


def display_grey(image: np.ndarray) -> np.ndarray:
    """An image as uint8 grey, stretched between its 0.5th and 99.5th percentiles."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8: the image in grey with the mask tinted red (``alpha`` opacity)."""
    grey = display_grey(image).astype(np.float32)
    rgb = np.stack([grey, grey, grey], axis=-1)
    red = np.array([255.0, 0.0, 0.0], np.float32)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * red
    return rgb.astype(np.uint8)


def _write_calibrated_tiff(path: Path, array: np.ndarray, pixel_size_angstrom: float) -> None:
    """``array`` as an ImageJ TIFF calibrated in nm."""
    import tifffile

    pixel_nm = pixel_size_angstrom / 10.0
    tifffile.imwrite(
        path, array, imagej=True, resolution=(1 / pixel_nm, 1 / pixel_nm), metadata={"unit": "nm"}
    )


def write_outputs(
    out_dir: Path, micrograph: Micrograph, mask: np.ndarray, std: np.ndarray | None = None
) -> list[str]:
    """``<stem>_mask.tif`` (calibrated, nm), ``<stem>_mask.png`` and ``<stem>_overlay.png``.

    With ``std`` (an ensemble's per-pixel standard deviation of the particle probability)
    also ``<stem>_std.tif`` (float32, calibrated) and ``<stem>_std.png`` (0 black to 0.5,
    the largest possible, white).
    """
    from PIL import Image

    stem = Path(micrograph.source).stem
    paths = [
        out_dir / f"{stem}_mask.tif",
        out_dir / f"{stem}_mask.png",
        out_dir / f"{stem}_overlay.png",
    ]
    binary = mask.astype(np.uint8) * 255
    _write_calibrated_tiff(paths[0], binary, micrograph.pixel_size_angstrom)
    Image.fromarray(binary).save(paths[1])
    Image.fromarray(overlay(micrograph.image, mask)).save(paths[2])
    if std is not None:
        paths += [out_dir / f"{stem}_std.tif", out_dir / f"{stem}_std.png"]
        _write_calibrated_tiff(paths[3], std.astype(np.float32), micrograph.pixel_size_angstrom)
        levels = np.round(np.clip(std / 0.5, 0, 1) * 255).astype(np.uint8)
        Image.fromarray(levels).save(paths[4])
    return [str(p) for p in paths]


def _check_files(files: Sequence[Path]) -> None:
    """Formats known and file names distinct (outputs are named by stem), before any work."""
    if not files:
        raise MicrographError("no files to predict")
    seen: dict[str, Path] = {}
    for path in files:
        micrograph_format(path)
        if path.stem in seen:
            raise MicrographError(
                f"two files have the same name {path.stem!r} ({seen[path.stem]} and {path}); "
                "their outputs would overwrite each other"
            )
        seen[path.stem] = path


def ensemble_probability(
    models: Sequence[StudyModel],
    micrograph: Micrograph,
    overlap_px: int | None = None,
    *,
    batch_size: int = 32,
    device: str | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Every model's particle probability of a micrograph on its own grid, ``(M, H, W)``
    (``tta`` as :func:`predict_probability`)."""
    return np.stack(
        [
            segment(
                m.model,
                micrograph,
                m.pixel_size_angstrom,
                m.tile_px,
                overlap_px,
                batch_size=batch_size,
                device=device,
                tta=tta,
            )  # fmt: skip
            for m in models
        ]
    )


def _run_record(model_id: str, micrographs: Sequence[Micrograph], options: dict) -> dict:
    """What makes a run the same run: the model, the files (name, sha256), the options."""
    return {
        "model_id": model_id,
        "files": [{"name": m.name, "sha256": m.sha256} for m in micrographs],
        **options,
    }


def _same_run(a: dict, b: dict) -> bool:
    keys = ("model_id", "files", "threshold", "overlap_px", "pixel_size_angstrom", "ensemble")
    # runs recorded before --tta existed had none
    return all(a.get(k) == b.get(k) for k in keys) and bool(a.get("tta")) == bool(b.get("tta"))


def _is_output_name(name: str) -> bool:
    return name in TABLE_FILES or name == RUN_RECORD or name.endswith(OUTPUT_SUFFIXES)


def _describe_run(record: dict) -> str:
    files = [str(f.get("name")) for f in record.get("files", []) if isinstance(f, dict)]
    shown = ", ".join(files[:3]) + (f", ... {len(files) - 3} more" if len(files) > 3 else "")
    state = "complete" if record.get("complete") else "not finished"
    return (
        f"model {record.get('model_id')} on {len(files)} files ({shown}), threshold "
        f"{record.get('threshold')}, {state}"
    )


def prepare_output_dir(out_dir: Path, run: dict, overwrite: bool) -> list[Path]:
    """Check that ``out_dir`` may take this run's outputs; return what ``overwrite`` deletes.

    Parameters
    ----------
    out_dir
        The output directory (missing, or not a directory: nothing to check here).
    run
        This run's record (:func:`_run_record`).
    overwrite
        Replace another run's results.

    Returns
    -------
    list of Path
        The other run's outputs to delete before writing (empty when the directory holds
        none, or holds an earlier run of the same model, files and options, whose outputs
        are simply written again).

    Raises
    ------
    PredictError
        ``out_dir`` holds another run's results (its ``predict.json``, or masks, overlays
        or particle tables without one) and ``overwrite`` is off; named, with what to do.
    """
    if not out_dir.is_dir():
        return []
    found = sorted(p for p in out_dir.iterdir() if p.is_file() and _is_output_name(p.name))
    if not found:
        return []
    try:
        previous = json.loads((out_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and _same_run(previous, run):
        return []
    if overwrite:
        return found
    what = (
        f"the results of another predict run ({_describe_run(previous)})"
        if isinstance(previous, dict)
        else f"{len(found)} prediction outputs without a {RUN_RECORD} ({', '.join(p.name for p in found[:3])}"
        + (", ...)" if len(found) > 3 else ")")
    )
    raise PredictError(
        f"-o {out_dir} holds {what}: its particle table would not list both runs' files; "
        "give another output directory, or pass --overwrite (overwrite=True) to replace them"
    )


def _write_table(particles: pl.DataFrame, out_dir: Path) -> list[str]:
    """``particles.parquet`` and ``particles.csv``, each written atomically."""
    import io

    buffer = io.BytesIO()
    particles.write_parquet(buffer)
    paths = [out_dir / name for name in TABLE_FILES]
    storage.write_bytes_atomic(paths[0], buffer.getvalue())
    storage.write_bytes_atomic(paths[1], particles.write_csv().encode("utf-8"))
    return [str(p) for p in paths]


def predict(
    study: str | Path,
    model: str,
    files: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    pixel_size_angstrom: float | None = None,
    overlap_px: int | None = None,
    threshold: float = 0.5,
    batch_size: int = 32,
    device: str | None = None,
    num_threads: int | None = None,
    ensemble: bool = False,
    tta: bool = False,
    overwrite: bool = False,
    max_memory_bytes: int | None = None,
) -> PredictionResult:
    """Segment micrographs with a study's model, or the ensemble of its replicates.

    Parameters
    ----------
    study
        The study root (``study.json``, results and checkpoints).
    model
        A model id, or ``best:DOMAIN`` (:func:`choose_model`).
    files
        Micrographs (:data:`hrtem_ray.dataset.micrograph_files.FORMATS`); their names must differ.
    out_dir
        Where to write masks, overlays and the particle table; None writes nothing.
    pixel_size_angstrom
        Pixel size of files without calibration.
    overlap_px
        Tile overlap on the model's grid; default a quarter tile.
    threshold
        Probability above which a pixel is a particle.
    batch_size, device
        As :func:`hrtem_ray.learning.train.predict`.
    num_threads
        torch threads for the inference (restored afterwards).
    ensemble
        Use every replicate of the chosen model's configuration (:func:`choose_ensemble`):
        the mask is the mean probability above ``threshold``; the per-pixel standard
        deviation over the models is written as ``<stem>_std.tif`` / ``_std.png`` and
        the particle table gets :data:`ENSEMBLE_COLUMNS`.
    tta
        Test-time augmentation: each tile's mean logits over its 8 rotations and mirror
        images (:func:`hrtem_ray.learning.train.forward`; 8 times the compute).
    overwrite
        Replace another run's results in ``out_dir`` (else refused, see
        :func:`prepare_output_dir`).
    max_memory_bytes
        Refuse inputs whose estimated peak memory (:func:`check_predict_memory`) exceeds
        this; default the memory available now.

    The model choice and its reason, then one line per micrograph, are logged at INFO
    (logger ``hrtem_ray.inference``; ``hrtem-ray predict`` prints them).

    Returns
    -------
    PredictionResult
        Masks, probabilities and the particle table (and the ensemble's std maps).

    Raises
    ------
    MicrographError, PredictError
        Before anything is written or predicted: unknown formats, clashing names, a bad
        threshold, an output path that is a file or under one (or not writable), a study
        without ``study.json`` or an unreachable ``s3://`` study
        (:class:`~hrtem_ray.store.storage.StorageError`), unreadable files or headers
        declaring more pixels than memory holds, inputs whose prediction needs more than
        ``max_memory_bytes``, no usable model, ``out_dir`` holding another run's results (see
        :func:`prepare_output_dir`).
    """
    paths = [Path(f) for f in files]
    _check_files(paths)
    if not 0 < threshold < 1:
        raise PredictError(f"threshold must be in (0, 1), got {threshold}")
    if out_dir is not None:
        check_output_dir(out_dir)
    storage.check_reachable(str(study))
    geometry = study_geometry(str(study))
    micrographs = [read_micrograph(p, pixel_size_angstrom) for p in paths]
    ids, reason = choose_models(str(study), model, ensemble)
    estimate = check_predict_memory(micrographs, geometry, max_memory_bytes, batch_size, len(ids))
    loaded = _load_models(str(study), ids, reason, geometry, model)
    options = {
        "threshold": threshold,
        "overlap_px": overlap_px,
        "pixel_size_angstrom": pixel_size_angstrom,
        "ensemble": [m.model_id for m in loaded] if ensemble else None,
        "tta": tta,
    }
    run = _run_record(loaded[0].model_id, micrographs, options)
    target = Path(out_dir) if out_dir is not None else None
    stale = [] if target is None else prepare_output_dir(target, run, overwrite)
    log.info(f"model: {loaded[0].reason}")
    log.info(f"memory: an estimated {format_bytes(estimate)} at the peak")
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info(f"--overwrite: deleted {len(stale)} outputs of another run in {target}")
    masks, probabilities, stds, tables, written = {}, {}, {}, [], []
    with torch_threads(num_threads):
        if target is not None:
            target.mkdir(parents=True, exist_ok=True)
            storage.write_json_atomic(target / RUN_RECORD, {**run, "complete": False})
        for micrograph in micrographs:
            members = ensemble_probability(
                loaded, micrograph, overlap_px, batch_size=batch_size, device=device, tta=tta
            )
            prob = members.mean(axis=0) if ensemble else members[0]
            std = members.std(axis=0) if ensemble else None
            mask = prob > threshold
            table = particle_table(
                mask, prob, micrograph.pixel_size_angstrom, micrograph.name,
                members if ensemble else None,
            )  # fmt: skip
            masks[micrograph.name], probabilities[micrograph.name] = mask, prob
            if std is not None:
                stds[micrograph.name] = std
            tables.append(table)
            log.info(f"{micrograph.name}: {table.height} particles ({micrograph.calibration})")
            if target is not None:
                written += write_outputs(target, micrograph, mask, std)
    particles = (
        pl.concat(tables)
        if tables
        else particle_table(np.zeros((1, 1), bool), np.zeros((1, 1)), 1, "")
    )
    if target is not None:
        written += _write_table(particles, target)
        outputs = [Path(p).name for p in written]
        storage.write_json_atomic(
            target / RUN_RECORD, {**run, "complete": True, "outputs": outputs}
        )
        written.append(str(target / RUN_RECORD))
    return PredictionResult(
        masks, probabilities, particles, loaded[0].model_id, loaded[0].reason, written, stds,
        [m.model_id for m in loaded],
    )  # fmt: skip


__all__ = [
    "CONFIGURATION_COLUMNS",
    "ENSEMBLE_COLUMNS",
    "PARTICLE_COLUMNS",
    "ModelChoice",
    "ModelGeometry",
    "PredictError",
    "PredictionResult",
    "StudyModel",
    "blend_window",
    "check_output_dir",
    "check_predict_memory",
    "choose_ensemble",
    "choose_model",
    "choose_models",
    "display_grey",
    "ensemble_probability",
    "estimate_predict_memory_bytes",
    "inference_bytes",
    "load_study_model",
    "load_study_models",
    "overlay",
    "prepare_output_dir",
    "particle_table",
    "predict",
    "predict_probability",
    "replicates",
    "segment",
    "study_geometry",
    "torch_threads",
    "write_outputs",
]
