"""Real micrographs held out whole: threshold, from scratch, and simulated-pretrained-then-transferred.

Prints JSON. ``python benchmarks/real_micrographs.py IMAGES MASKS [--pixel-size-angstrom X]``
runs, on a folder of labelled micrographs (``IMAGES``, and ``MASKS`` paired by sorted
file name), the whole real-data protocol of hrtem-ray with its own code path:

1. the simulated dataset of ``--spec`` (default ``sweeps/bright_field.yaml``): ``--data``,
   or simulated into the work folder;
2. the pixel size: ``--pixel-size-angstrom``, or chosen from ``--candidates`` by
   :func:`hrtem_ray.realdata.choose_pixel_size` with a model pretrained on
   ``--pretrain-domain``: ranked by its IoU on ``--select-files`` labelled training files,
   then (``--pixel-size-by transfer``, the default; ``hrtem-ray pixel-size --val-files``)
   at the ``--shortlist`` best a copy is transferred on the most labelled tiles of
   ``--tiles`` of those files, and the candidate whose transferred model has the best IoU
   on the validation micrographs wins (never a test file; the evidence is reported);
3. ``hrtem-ray import`` into a copy of the dataset as domain ``real``, whole micrographs
   held out as its test split (``--test-fraction`` or ``--test-files``);
4. a study on it, every trial run in this process by
   :func:`hrtem_ray.sweep.execute.execute_trial` (no Ray; a rerun with the same ``--work``
   skips finished trials): per labelled-tile count of ``--tiles``, the blur + Otsu
   threshold (``phase: threshold``), models trained from scratch on the tiles only
   (``baseline`` mixtures with no source image) and models pretrained on the simulated
   domain then transferred on the same tiles, one replicate per ``--seeds`` seed;
5. IoU on the held-out micrographs' tiles per method and tile count, with the bootstrap
   interval over replicates (:func:`hrtem_ray.analysis.imported.labelled_tiles_curve`),
   and the goal: the transferred model beats the threshold by at least 0.15 IoU and the
   from-scratch model by a clear margin (their intervals apart) at 16 tiles or fewer.

Keys
----
table
    One row per method and labelled-tile count: ``iou``, ``iou_ci_low``, ``iou_ci_high``,
    ``n_models``, ``configuration`` (``markdown`` holds it as a README table).
goal
    Per tile count the transfer-minus-threshold and transfer-minus-scratch differences,
    and ``met``.
convergence
    Per phase and tile count: models, how many converged, their median best epoch.
pixel_size_angstrom, pixel_size_evidence, split, tiles, settings, seconds
    What was run and how long it took.

The labelled tiles of a replicate are drawn at random with its seed from the training
micrographs (``--target-images random``, the default; ``training.target_images``), the
same for its transferred and its from-scratch model and nested across tile counts, and
the threshold is fitted on each seed's draw; so the intervals include which tiles were
labelled. ``--target-images first`` takes the first tiles by position for every seed (a
strip of the first training micrograph; the benchmark's protocol before 2026-12-07).
The goal's threshold margin is counted from the top of the threshold's interval.

Early stopping (patience 4, at most 200 epochs) ends no stage before 100 optimizer steps
(``--min-steps``, ``training.min_steps``): on 4 tiles an epoch is 2 steps, and patience
alone ended stages after 10 steps, before they had learned anything (``--min-steps 0``
for the protocol before 2026-12-07).

``--tta`` scores every model with test-time augmentation (``training.tta``: the mean over
the 8 rotations and mirror images of each tile); the threshold is unchanged.

``--quick`` shrinks it (tiles 4 and 8, seeds 0 and 1, at most 10 epochs: models may stop
while still learning, see ``convergence``). The machine it
ran on and its load go with the numbers (``machine``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

import common
import polars as pl

REPO = Path(__file__).resolve().parents[1]
DOMAIN = "real"
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg", ".dm3", ".dm4", ".emd", ".mrc")


def _files(location: str) -> list[Path]:
    """The micrographs of a folder (sorted by name), or the one file given."""
    path = Path(location)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]


def _arguments() -> argparse.Namespace:
    parser = common.parser(__doc__, "tiles 4 and 8, seeds 0 and 1, at most 10 epochs")
    parser.add_argument("images", help="folder of labelled micrographs (or one file)")
    parser.add_argument("masks", help="folder of their masks, same sorted order")
    parser.add_argument("--pixel-size-angstrom", type=float, default=None)
    parser.add_argument("--candidates", type=float, nargs="+", default=[2, 3, 4, 6, 9, 12],
                        help="pixel sizes (Å) tried when --pixel-size-angstrom is not given")  # fmt: skip
    parser.add_argument("--select-files", type=int, default=2,
                        help="labelled training files the pixel size is chosen on")  # fmt: skip
    parser.add_argument("--pixel-size-by", choices=("transfer", "simulation"), default="transfer",
                        help="transfer: the candidate whose transferred model segments the "
                             "validation micrographs best, among the --shortlist best by "
                             "simulation (a simulation-only model on --select-files training "
                             "files)")  # fmt: skip
    parser.add_argument("--shortlist", type=int, default=3,
                        help="candidates a transfer is tried at (--pixel-size-by transfer)")  # fmt: skip
    parser.add_argument("--tta", action="store_true",
                        help="score with test-time augmentation (training.tta)")  # fmt: skip
    parser.add_argument("--target-images", choices=("random", "first"), default="random",
                        help="labelled tiles per seed: drawn at random with the seed "
                             "(training.target_images), or the first n by position")  # fmt: skip
    parser.add_argument("--spec", default=str(REPO / "sweeps" / "bright_field.yaml"))
    parser.add_argument("--data", default=None, help="the spec's simulated dataset, if made")
    parser.add_argument(
        "--work", default=None, help="work folder (default out/real_micrographs/LABEL)"
    )
    parser.add_argument("--label", default="real", help="name of this run")
    parser.add_argument("--pretrain-domain", default="0")
    parser.add_argument("--tiles", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--test-files", nargs="+", default=None)
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--transfer-lr", type=float, default=1e-3)
    parser.add_argument("--scratch-lr", type=float, default=1e-3)
    parser.add_argument("--freeze", default="none")
    parser.add_argument("--augment", default="none", help="none, real, or AugmentSpec JSON")
    parser.add_argument(
        "--pretrain-augment", default="none", help="augmentations of the pretraining (as --augment)"
    )
    parser.add_argument("--max-epochs", type=int, default=200,
                        help="most epochs of a stage; early stopping (--patience) ends the "
                             "others (at 30, models on 4 tiles from scratch stopped while still "
                             "learning: best epoch the last)")  # fmt: skip
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--min-steps", type=int, default=100,
                        help="early stopping ends no stage before this many optimizer steps "
                             "(training.min_steps; 0: none)")  # fmt: skip
    parser.add_argument(
        "--n-val", type=int, default=0, help="validation tiles per domain selecting epochs (0: all)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: best on a loaded machine)"
    )
    args = parser.parse_args()
    if args.quick:
        args.tiles, args.seeds, args.max_epochs = [4, 8], [0, 1], 10
        args.patience = min(args.patience, 3)
    return args


def _augment(text: str):
    """The ``--augment`` value as the spec takes it (None, ``real`` or a dict)."""
    if text == "none":
        return None
    return "real" if text == "real" else json.loads(text)


def simulated_dataset(args: argparse.Namespace, work: Path) -> Path:
    """The spec's simulated dataset: ``--data``, or simulated into ``work/sim`` (Ray)."""
    if args.data:
        return Path(args.data)
    from hrtem_ray.study import Study

    target = work / "sim"
    Study.for_dataset(args.spec, data=target).simulate(num_cpus=2)
    return target


def working_copy(source: Path, work: Path) -> Path:
    """A copy of the simulated dataset to import into (exit waves and locks left out)."""
    target = work / "data"
    if not target.exists():
        ignore = shutil.ignore_patterns("waves", ".hrtem-ray.lock*")
        shutil.copytree(source, target, ignore=ignore)
    return target


def study_spec(args: argparse.Namespace, data: Path, domains_eval: list[str]) -> dict:
    """The study of the benchmark (see the module docstring), as a spec dict."""
    import yaml

    raw = yaml.safe_load(Path(args.spec).read_text())
    dataset = {**raw["dataset"], "path": str(data)}
    n_pretrain = int(dataset["n_structures"]["train"])
    augment = _augment(args.augment)
    real = DOMAIN in domains_eval
    return {
        # one name for every run in a work folder: runs that differ only in the transfer
        # or scratch settings share their pretrained models (same model ids)
        "name": "real-micrographs",
        "dataset": dataset,
        "domains": {
            "imported": [DOMAIN] if real else [],
            "pretrain": [args.pretrain_domain],
            "transfer": [DOMAIN] if real else [args.pretrain_domain],
            "eval": domains_eval,
        },
        "pretrain": {
            "lr": [args.pretrain_lr],
            "n_images": [n_pretrain],
            "seeds": args.seeds,
            "augment": _augment(args.pretrain_augment),
        },
        "transfer": (
            {
                "lr": [args.transfer_lr],
                "n_images": args.tiles,
                "freeze": [args.freeze],
                "augment": augment,
            }  # fmt: skip
            if real
            else None
        ),
        "baseline": (
            {
                "pairs": [[args.pretrain_domain, DOMAIN]],
                "mixtures": [[0, n] for n in args.tiles],
                "lr": [args.scratch_lr],
                "seeds": args.seeds,
                "augment": augment,
            }  # fmt: skip
            if real
            else None
        ),
        "training": {
            "max_epochs": args.max_epochs,
            "patience": args.patience,
            "min_delta": 0.002,
            "min_steps": args.min_steps or None,
            "batch_size": 16,
            "n_val": args.n_val or None,
            "tta": args.tta,
            "target_images": args.target_images,
        },  # fmt: skip
        "model": {"size": "small"},
        "keep_checkpoints": "all",
    }


def run_trials(raw: dict, data: Path, root: Path, threads: int) -> tuple[dict[str, float], set]:
    """Run every trial of the spec not done yet, pretrain first; seconds per phase and the
    plan's model ids."""
    from hrtem_ray.spec.config import parse_study_spec
    from hrtem_ray.sweep import results
    from hrtem_ray.sweep.execute import execute_trial
    from hrtem_ray.sweep.run import write_study_spec
    from hrtem_ray.sweep.trials import plan_trials

    spec = parse_study_spec(copy.deepcopy(raw), source="benchmark")
    write_study_spec(str(root), spec, str(data))
    plan = plan_trials(spec)
    done = results.finished_ids(str(root))
    seconds: dict[str, float] = {}
    for phase in ("pretrain", "threshold", "baseline", "transfer"):
        start = time.perf_counter()
        for trial in getattr(plan, phase):
            if trial.model_id in done:
                continue
            print(f"[{phase}] {trial.describe()}", file=sys.stderr, flush=True)
            execute_trial(spec, trial, dataset_root=str(data), study_root=str(root),
                          num_threads=threads, device="cpu")  # fmt: skip
        seconds[phase] = round(time.perf_counter() - start, 1)
    return seconds, {t.model_id for t in plan.all()}


def pixel_size(args, files, masks, split, data, work) -> tuple[float, list[dict] | None]:
    """``--pixel-size-angstrom``, or the candidate chosen by
    :func:`hrtem_ray.realdata.choose_pixel_size` with a simulated-pretrained model: its IoU
    on the first ``--select-files`` training files, then (``--pixel-size-by transfer``)
    its validation IoU on the validation files after a transfer on the most labelled
    tiles of ``--tiles`` at the ``--shortlist`` best candidates (never a test file)."""
    if args.pixel_size_angstrom is not None:
        return args.pixel_size_angstrom, None
    from hrtem_ray.dataset.micrograph_files import read_micrograph

    own = read_micrograph(files[0], 1.0)
    if own.calibration != "--pixel-size-angstrom":  # the files are calibrated
        return own.pixel_size_angstrom, [{"calibration": own.calibration}]
    record = work / "pixel_size.json"
    criterion = {"by": "simulation"}
    if args.pixel_size_by == "transfer":
        criterion = {"by": "transfer", "shortlist": args.shortlist, "tiles": max(args.tiles),
                     "lr": args.transfer_lr, "max_epochs": args.max_epochs,
                     "patience": args.patience, "seed": args.seeds[0]}  # fmt: skip
    if record.exists():  # chosen by an earlier run in this work folder, the same way
        stored = json.loads(record.read_text())
        if stored.get("criterion", {"by": "simulation"}) == criterion:
            return stored["pixel_size_angstrom"], stored["evidence"]
    from hrtem_ray.realdata import TransferCheck, choose_pixel_size

    selector = work / "selector"
    raw = study_spec(args, data, [args.pretrain_domain])
    raw["pretrain"]["seeds"] = args.seeds[:1]
    run_trials(raw, data, selector, args.threads)  # only the pretrain models
    chosen = [i for i, f in enumerate(files) if split[f.name] == "train"][: args.select_files]
    check = None
    if args.pixel_size_by == "transfer":
        held = [i for i, f in enumerate(files) if split[f.name] == "val"]
        chosen += held
        check = TransferCheck(
            tuple(files[i].name for i in held), tiles=max(args.tiles), shortlist=args.shortlist,
            lr=args.transfer_lr, max_epochs=args.max_epochs, patience=args.patience,
            seed=args.seeds[0],
        )  # fmt: skip
    choice = choose_pixel_size(
        selector, f"best:{args.pretrain_domain}", [files[i] for i in chosen],
        [masks[i] for i in chosen], args.candidates, num_threads=args.threads, transfer=check,
    )  # fmt: skip
    print(choice.describe(), file=sys.stderr, flush=True)
    evidence = choice.evidence.to_dicts()
    record.write_text(json.dumps({"pixel_size_angstrom": choice.pixel_size_angstrom,
                                  "evidence": evidence, "model_id": choice.model_id,
                                  "criterion": criterion}))  # fmt: skip
    return choice.pixel_size_angstrom, evidence


def summary(table: pl.DataFrame, tiles: list[int]) -> dict:
    """Per tile count: transfer minus threshold and minus scratch, and whether the goal is met."""

    def cell(method: str, n: int) -> dict | None:
        rows = table.filter((pl.col("method") == method) & (pl.col("n_tiles") == n))
        return rows.row(0, named=True) if rows.height else None

    per_tiles, met = [], False
    for n in tiles:
        transfer, threshold, scratch = (
            cell(m, n) for m in ("transfer", "threshold", "from scratch")
        )
        if not (transfer and threshold and scratch):
            continue
        low = transfer["iou_ci_low"] if transfer["iou_ci_low"] is not None else transfer["iou"]
        # the threshold's interval top when it has one (a threshold per draw of tiles)
        threshold_high = (
            threshold["iou_ci_high"] if threshold["iou_ci_high"] is not None else threshold["iou"]
        )
        scratch_high = (
            scratch["iou_ci_high"] if scratch["iou_ci_high"] is not None else scratch["iou"]
        )
        entry = {
            "n_tiles": n,
            "transfer_minus_threshold": transfer["iou"] - threshold["iou"],
            "transfer_ci_low_minus_threshold": low - threshold_high,
            "transfer_minus_scratch": transfer["iou"] - scratch["iou"],
            "transfer_ci_above_scratch_ci": low > scratch_high,
        }
        entry["met"] = (
            entry["transfer_ci_low_minus_threshold"] >= 0.15
            and entry["transfer_ci_above_scratch_ci"]
        )
        met = met or (entry["met"] and n <= 16)
        per_tiles.append(entry)
    return {"per_tiles": per_tiles, "met": met, "margin_iou": 0.15}


def convergence(rows: pl.DataFrame) -> list[dict]:
    """Per phase and labelled-tile count: models, and how many converged (early stopping).

    A model converged when it stopped on patience or its best epoch is at least
    ``--patience`` epochs before its last (:func:`hrtem_ray.learning.train.has_converged`);
    one that did not was stopped while still learning.
    """
    return (
        rows.filter(pl.col("phase") != "threshold")
        .group_by("phase", "n_transfer")
        .agg(
            models=pl.len(),
            converged=pl.col("converged").cast(pl.Int64).sum(),
            best_epoch_median=pl.col("best_epoch").median(),
        )
        .sort("phase", "n_transfer", nulls_last=False)
        .to_dicts()
    )


def markdown(table: pl.DataFrame) -> list[str]:
    """The table as README lines: method, tiles, IoU [interval], models."""
    lines = ["| method | labelled tiles | IoU on held-out micrographs [95% CI] | models |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for row in table.iter_rows(named=True):
        interval = (
            f" [{row['iou_ci_low']:.3f}, {row['iou_ci_high']:.3f}]"
            if row["iou_ci_low"] is not None
            else ""
        )
        lines.append(
            f"| {row['method']} | {row['n_tiles']} | {row['iou']:.3f}{interval} | {row['n_models']} |"
        )
    return lines


def main() -> None:
    args = _arguments()
    from hrtem_ray.analysis.imported import labelled_tiles_curve
    from hrtem_ray.dataset.micrographs import assign_splits, import_micrographs, imported_domains
    from hrtem_ray.sweep.results import read_results

    start = time.perf_counter()
    work = Path(args.work or REPO / "out" / "real_micrographs" / args.label)
    work.mkdir(parents=True, exist_ok=True)
    files, masks = _files(args.images), _files(args.masks)
    if len(files) != len(masks) or not files:
        raise SystemExit(f"{len(files)} images and {len(masks)} masks: give one mask per image")
    split = assign_splits([f.name for f in files], args.val_fraction,
                          test_fraction=args.test_fraction, test_files=args.test_files)  # fmt: skip
    seconds = {}
    t = time.perf_counter()
    data = working_copy(simulated_dataset(args, work), work)
    seconds["dataset"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    pixel, evidence = pixel_size(args, files, masks, split, data, work)
    seconds["pixel_size"] = round(time.perf_counter() - t, 1)
    if DOMAIN not in imported_domains(data):
        import_micrographs(files, data, DOMAIN, masks=masks, pixel_size_angstrom=pixel,
                           val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                           test_files=args.test_files)  # fmt: skip
    tiles = imported_domains(data)[DOMAIN].images
    raw = study_spec(args, data, [args.pretrain_domain, DOMAIN])
    trial_seconds, planned = run_trials(raw, data, work / "study", args.threads)
    seconds |= trial_seconds
    rows = read_results(str(work / "study")).filter(
        pl.col("model_id").is_in(sorted(planned)) & (pl.col("eval_domain") == DOMAIN)
    )
    table = labelled_tiles_curve(rows, ci=0.95)
    report = {
        "label": args.label,
        "images": str(args.images),
        "pixel_size_angstrom": pixel,
        "pixel_size_evidence": evidence,
        "split": split,
        "tiles": tiles,
        "table": table.to_dicts(),
        "markdown": markdown(table),
        "goal": summary(table, args.tiles),
        "convergence": convergence(rows),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "seconds": {**seconds, "total": round(time.perf_counter() - start, 1)},
        "machine": {"cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]},
    }
    common.emit(report, args.out)


if __name__ == "__main__":
    main()
