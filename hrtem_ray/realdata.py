"""Real micrographs: what to label next (``hrtem-ray suggest``) and unknown pixel sizes.

:func:`suggest` ranks unlabelled micrographs, or tiles of them, by how much the replicate
models of a study's configuration disagree on them (the per-pixel standard deviation of
their particle probabilities, :func:`hrtem_ray.inference.ensemble_probability`): the next
labelling step of an active-learning loop. It writes the top ``n`` as a list
(``suggestions.csv`` and ``.parquet``) and a contact sheet (``contact_sheet.png``: each
suggested tile next to its disagreement map).

:func:`choose_pixel_size` picks the pixel size of uncalibrated labelled micrographs: it
segments them with a pretrained model at each candidate pixel size and keeps the one
with the best IoU against their masks, returning every candidate's IoU as the evidence
(``hrtem-ray pixel-size``; the chosen size then goes to ``hrtem-ray import
--pixel-size-angstrom``). With a :class:`TransferCheck` it goes one step further, as the
networks are used after transfer: at the best few candidates it transfers the model on
labelled tiles and keeps the candidate whose transferred model segments held-out
validation files best (on the real Au micrographs of ``benchmarks/real_micrographs.py``
the simulation-only model preferred 3 Å/px, the transferred models 4 Å/px, where they
were better on the held-out test files too). Hold the test micrographs out of it (the
choice is a selection, made on labelled data).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from hrtem_ray.dataset.geometry import cut_tiles, resample_labelled, tile_positions
from hrtem_ray.dataset.micrograph_files import (
    Micrograph,
    MicrographError,
    read_mask,
    read_micrograph,
)
from hrtem_ray.inference import (
    PredictError,
    StudyModel,
    display_grey,
    ensemble_probability,
    load_study_models,
    torch_threads,
)

__all__ = [
    "PixelSizeChoice",
    "TransferCheck",
    "SUGGESTION_COLUMNS",
    "choose_pixel_size",
    "contact_sheet",
    "labelled_tiles",
    "rank_regions",
    "suggest",
    "transfer_iou",
]

log = logging.getLogger(__name__)

#: Columns of the suggestion list.
SUGGESTION_COLUMNS = (
    "rank",
    "source",
    "y_px",
    "x_px",
    "size_px",
    "disagreement",
    "mean_probability",
)


def rank_regions(
    members: dict[str, np.ndarray], tile_px: int | None = None, top_n: int | None = None
) -> pl.DataFrame:
    """Regions ranked by the ensemble's disagreement, most first.

    Parameters
    ----------
    members
        File name -> the models' particle probabilities ``(M, H, W)`` of that file.
    tile_px
        Rank tiles of this side (non-overlapping, the last of a row or column ending at
        the edge; a file smaller than a tile is one region); ``None``: whole files.
    top_n
        Keep the first ``top_n`` (all when ``None``).

    Returns
    -------
    polars.DataFrame
        Columns :data:`SUGGESTION_COLUMNS`: ``disagreement`` is the region's mean of the
        per-pixel standard deviation over the models, ``mean_probability`` its mean
        probability; ties keep file and position order.

    Examples
    --------
    >>> agree = np.stack([np.zeros((4, 8)), np.zeros((4, 8))])
    >>> agree[1, :, 4:] = 1.0  # the models disagree on the right half
    >>> rank_regions({"a.png": agree}, tile_px=4)["x_px"].to_list()
    [4, 0]
    """
    rows = []
    for name, stack in members.items():
        std, mean = stack.std(axis=0), stack.mean(axis=0)
        height, width = std.shape
        if tile_px is None or height < tile_px or width < tile_px:
            regions = [(0, 0, height, width)]
        else:
            regions = [(y, x, tile_px, tile_px) for y, x in tile_positions(std.shape, tile_px, 0)]
        for y, x, h, w in regions:
            rows.append(
                {
                    "source": name,
                    "y_px": int(y),
                    "x_px": int(x),
                    "size_px": int(max(h, w)),
                    "disagreement": float(std[y : y + h, x : x + w].mean()),
                    "mean_probability": float(mean[y : y + h, x : x + w].mean()),
                }
            )
    schema = {"source": pl.String, "y_px": pl.Int64, "x_px": pl.Int64, "size_px": pl.Int64,
              "disagreement": pl.Float64, "mean_probability": pl.Float64}  # fmt: skip
    table = pl.DataFrame(rows, schema=schema).sort(
        "disagreement", descending=True, maintain_order=True
    )
    if top_n is not None:
        table = table.head(top_n)
    return (
        table.with_row_index("rank", offset=1)
        .with_columns(pl.col("rank").cast(pl.Int64))
        .select(SUGGESTION_COLUMNS)
    )


def contact_sheet(
    table: pl.DataFrame,
    images: dict[str, np.ndarray],
    stds: dict[str, np.ndarray],
    path: str | Path,
    thumb_px: int = 128,
) -> Path:
    """A PNG of the ranked regions: per row the region (grey) and its disagreement map
    (0 black to 0.5 white), labelled with rank, file and score."""
    from PIL import Image, ImageDraw

    label_px = 14
    sheet = Image.new("L", (2 * thumb_px + 8, max(1, table.height) * (thumb_px + label_px)), 255)
    draw = ImageDraw.Draw(sheet)
    for k, row in enumerate(table.iter_rows(named=True)):
        y, x, size = row["y_px"], row["x_px"], row["size_px"]
        crop = images[row["source"]][y : y + size, x : x + size]
        std = stds[row["source"]][y : y + size, x : x + size]
        top = k * (thumb_px + label_px)
        draw.text(
            (2, top), f"#{row['rank']} {row['source']} y{y} x{x}: {row['disagreement']:.3f}", fill=0
        )
        for j, tile in enumerate((display_grey(crop), np.round(np.clip(std / 0.5, 0, 1) * 255))):
            thumb = Image.fromarray(tile.astype(np.uint8)).resize((thumb_px, thumb_px))
            sheet.paste(thumb, (j * (thumb_px + 8), top + label_px))
    target = Path(path)
    sheet.save(target)
    return target


def suggest(
    study: str | Path,
    model: str,
    files: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    top_n: int = 10,
    by: str = "tile",
    pixel_size_angstrom: float | None = None,
    device: str | None = None,
    num_threads: int | None = None,
) -> pl.DataFrame:
    """Rank unlabelled micrographs (``by="file"``) or their tiles (``by="tile"``) by how
    much the replicates of a study's configuration disagree; write the top ``top_n``.

    Tiles are the model's tile size brought to each file's pixel grid. Writes
    ``suggestions.csv``, ``suggestions.parquet`` and ``contact_sheet.png`` to ``out_dir``.
    ``num_threads``: torch threads while predicting (restored afterwards).

    Raises
    ------
    MicrographError, PredictError
        Unreadable files, no study, fewer than two replicates, a bad ``by`` or ``top_n``;
        before anything is written.
    """
    if by not in ("tile", "file"):
        raise PredictError(f"--by: {by!r}; allowed: tile, file")
    if top_n < 1:
        raise PredictError(f"--top: {top_n}; allowed: 1 or more")
    paths = [Path(f) for f in files]
    if not paths:
        raise MicrographError("no files to rank")
    micrographs = [read_micrograph(p, pixel_size_angstrom) for p in paths]
    models = load_study_models(str(study), model, ensemble=True)
    log.info(f"model: {models[0].reason}")
    members, images, stds, tiles = {}, {}, {}, {}
    for micrograph in micrographs:
        with torch_threads(num_threads):
            stack = ensemble_probability(models, micrograph, device=device)
        members[micrograph.name], images[micrograph.name] = stack, micrograph.image
        stds[micrograph.name] = stack.std(axis=0)
        ratio = models[0].pixel_size_angstrom / micrograph.pixel_size_angstrom
        tiles[micrograph.name] = max(1, round(models[0].tile_px * ratio))
    tile_px = None if by == "file" else min(tiles.values())
    table = rank_regions(members, tile_px, top_n)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table.write_csv(out / "suggestions.csv")
        table.write_parquet(out / "suggestions.parquet")
        contact_sheet(table, images, stds, out / "contact_sheet.png")
    return table


@dataclass(frozen=True)
class TransferCheck:
    """How :func:`choose_pixel_size` checks its best candidates by transferring the model.

    Attributes
    ----------
    val_files
        Names of the labelled files held out as validation: the transferred model is
        scored on all their tiles (and picks its epoch on them); the other files give the
        training tiles. At least one file on each side.
    tiles
        Labelled training tiles the model is transferred on (the first ones, file by file).
    shortlist
        Candidates tried, the best by the simulation-only IoU.
    lr, max_epochs, patience, min_delta, seed
        The transfer (early stopping on the validation tiles; the 8 symmetries as
        augmentation, as a study's transfer stage).
    """

    val_files: tuple[str, ...]
    tiles: int = 16
    shortlist: int = 3
    lr: float = 1e-3
    max_epochs: int = 30
    patience: int = 4
    min_delta: float = 0.002
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.val_files:
            raise MicrographError("--val-files: give at least one labelled file for validation")
        if self.tiles < 1 or self.shortlist < 1:
            raise MicrographError(
                f"--transfer-tiles and --shortlist must be at least 1, not {self.tiles}, "
                f"{self.shortlist}"
            )


@dataclass(frozen=True)
class PixelSizeChoice:
    """The pixel size :func:`choose_pixel_size` chose, and its evidence.

    Attributes
    ----------
    pixel_size_angstrom
        The candidate with the highest IoU (with a :class:`TransferCheck`: the highest
        validation IoU after transfer).
    evidence
        One row per candidate: ``pixel_size_angstrom``, ``iou`` (pooled over the files it
        was measured on), ``files``; with a :class:`TransferCheck` also
        ``val_iou_after_transfer`` (null for candidates not shortlisted).
    model_id
        The model that segmented the files.
    """

    pixel_size_angstrom: float
    evidence: pl.DataFrame
    model_id: str

    def describe(self) -> str:
        """The choice and every candidate's IoU, one line each."""
        lines = [
            f"pixel size {self.pixel_size_angstrom:g} A/px: the best IoU of {self.model_id} "
            f"against the masks of {self.evidence.item(0, 'files')} labelled files"
        ]
        transferred = "val_iou_after_transfer" in self.evidence.columns
        if transferred:
            lines[0] = (
                f"pixel size {self.pixel_size_angstrom:g} A/px: the best validation IoU of "
                f"{self.model_id} transferred on labelled tiles, among the candidates it "
                "segments best before transfer"
            )
        for row in self.evidence.iter_rows(named=True):
            mark = "  <- chosen" if row["pixel_size_angstrom"] == self.pixel_size_angstrom else ""
            after = row.get("val_iou_after_transfer") if transferred else None
            more = "" if after is None else f"; after transfer, on validation files {after:.3f}"
            lines.append(f"  {row['pixel_size_angstrom']:g} A/px: IoU {row['iou']:.3f}{more}{mark}")
        return "\n".join(lines)


def choose_pixel_size(
    study: str | Path,
    model: str,
    files: Sequence[str | Path],
    masks: Sequence[str | Path],
    candidates_angstrom: Sequence[float],
    *,
    device: str | None = None,
    num_threads: int | None = None,
    transfer: TransferCheck | None = None,
) -> PixelSizeChoice:
    """The candidate pixel size at which a pretrained model segments labelled files best.

    Each file is read as if its pixel were each candidate (it must have no calibration
    of its own), segmented by the model (:func:`hrtem_ray.inference.segment`, through
    :func:`~hrtem_ray.inference.ensemble_probability`) and compared with its mask (pooled
    IoU of probability > 0.5 and mask > 0.5 over all files). Ties go to the first
    candidate. ``num_threads``: torch threads while predicting.

    With ``transfer`` (:class:`TransferCheck`): the simulation-only IoU is measured on
    the training files only, and at its ``shortlist`` best candidates a copy of the
    model is transferred on ``tiles`` labelled tiles of the training files (cut as
    ``hrtem-ray import`` cuts them) and scored on every tile of the validation files;
    the candidate with the best validation IoU after transfer is chosen.

    Raises
    ------
    MicrographError
        A file with its own calibration, a mask of another shape, no candidates, a
        candidate that is not positive; before any model runs.
    PredictError
        As :func:`hrtem_ray.inference.choose_model`.
    """
    if not candidates_angstrom or any(not c > 0 for c in candidates_angstrom):
        raise MicrographError(
            f"--candidates: {list(candidates_angstrom)}; give positive pixel sizes in Å"
        )
    if len(masks) != len(files) or not files:
        raise MicrographError(f"{len(masks)} masks for {len(files)} files; give one mask per file")
    labelled = []
    for path, mask_path in zip(files, masks, strict=True):
        micrograph = read_micrograph(path, candidates_angstrom[0])
        if micrograph.calibration != "--pixel-size-angstrom":
            raise MicrographError(
                f"{path}: the file has its own calibration ({micrograph.pixel_size_angstrom:g} "
                f"Å/px, {micrograph.calibration}); no pixel size to choose"
            )
        labelled.append((micrograph, read_mask(mask_path, micrograph.image.shape)))
    held = set(transfer.val_files) if transfer is not None else set()
    unknown = held - {m.name for m, _ in labelled}
    if unknown or (held and len(held) == len(labelled)):
        raise MicrographError(
            f"--val-files {sorted(held)}: "
            + (f"{sorted(unknown)} are not among the labelled files" if unknown
               else "leave at least one labelled file for the training tiles")
        )  # fmt: skip
    training = [(m, k) for m, k in labelled if m.name not in held]
    validation = [(m, k) for m, k in labelled if m.name in held]
    (loaded,) = load_study_models(str(study), model)
    rows = []
    for candidate in candidates_angstrom:
        inter = union = 0
        for read, mask in training:  # read once; only the declared pixel size changes
            micrograph = replace(read, pixel_size_angstrom=float(candidate))
            with torch_threads(num_threads):
                (prob,) = ensemble_probability([loaded], micrograph, device=device)
            pred, true = prob > 0.5, mask > 0.5
            inter += int((pred & true).sum())
            union += int((pred | true).sum())
        iou = inter / union if union else 1.0
        log.info(f"pixel size {candidate:g} A/px: IoU {iou:.3f}")
        rows.append({"pixel_size_angstrom": float(candidate), "iou": iou, "files": len(training)})
    evidence = pl.DataFrame(rows)
    score = "iou"
    if transfer is not None:
        order = np.argsort(-evidence.get_column("iou").to_numpy(), kind="stable")
        after: list[float | None] = [None] * evidence.height
        for i in order[: transfer.shortlist]:
            candidate = float(evidence.item(int(i), "pixel_size_angstrom"))
            with torch_threads(num_threads):
                after[int(i)] = transfer_iou(loaded, training, validation, candidate, transfer,
                                             device=device)  # fmt: skip
            log.info(f"pixel size {candidate:g} A/px: after transfer, validation IoU "
                     f"{after[int(i)]:.3f}")  # fmt: skip
        evidence = evidence.with_columns(
            pl.Series("val_iou_after_transfer", after, dtype=pl.Float64)
        )
        score = "val_iou_after_transfer"
    values = evidence.get_column(score).fill_null(-1.0).to_numpy()
    best = evidence.row(int(np.argmax(values)), named=True)
    return PixelSizeChoice(best["pixel_size_angstrom"], evidence, loaded.model_id)


def labelled_tiles(
    labelled: Sequence[tuple[Micrograph, np.ndarray]],
    pixel_size_angstrom: float,
    model: StudyModel,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks of the tiles of labelled files read at ``pixel_size_angstrom``,
    resampled to the model's pixel size and cut as ``hrtem-ray import`` cuts them (no
    overlap), file by file."""
    images, masks = [], []
    for read, mask in labelled:
        image, fitted = resample_labelled(
            read.image, mask, pixel_size_angstrom, model.pixel_size_angstrom
        )
        positions = tile_positions(image.shape, model.tile_px, 0)
        images.append(cut_tiles(image, positions, model.tile_px))
        masks.append(cut_tiles(fitted, positions, model.tile_px))
    return np.concatenate(images).astype(np.float32), np.concatenate(masks).astype(np.float32)


def transfer_iou(
    loaded: StudyModel,
    training: Sequence[tuple[Micrograph, np.ndarray]],
    validation: Sequence[tuple[Micrograph, np.ndarray]],
    pixel_size_angstrom: float,
    check: TransferCheck,
    *,
    device: str | None = None,
) -> float:
    """The validation IoU of a copy of ``loaded`` transferred on ``check.tiles`` tiles of
    the ``training`` files, all read at ``pixel_size_angstrom`` (:func:`labelled_tiles`)."""
    from hrtem_ray.learning.train import evaluate, train_stage

    train_images, train_masks = labelled_tiles(training, pixel_size_angstrom, loaded)
    val_images, val_masks = labelled_tiles(validation, pixel_size_angstrom, loaded)
    model = copy.deepcopy(loaded.model)
    train_stage(
        model, train_images[: check.tiles], train_masks[: check.tiles], val_images, val_masks,
        lr=check.lr, epochs=check.max_epochs, patience=check.patience,
        min_delta=check.min_delta, seed=check.seed, device=device,
    )  # fmt: skip
    scored = evaluate(model, {"val": (val_images, val_masks)}, device=device)
    return float(scored["val"].iou)
