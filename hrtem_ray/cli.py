"""The ``hrtem-ray`` command line: simulate, sweep, run, report, slurm, check, import, predict,
suggest, pixel-size."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from hrtem_ray._version import __version__
from hrtem_ray.cluster import slurm
from hrtem_ray.cluster.signals import sigterm_interrupts
from hrtem_ray.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEMS,
)

EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_OK}    done: every planned shard and model is done (report: written)
  {EXIT_ERROR}    unexpected error (traceback printed)
  {EXIT_BAD_INPUT}    bad input, refused before Ray starts: spec error, dataset mismatch,
       study lock held, unusable output path, unreachable storage, more than
       this machine holds, nothing to report
  {EXIT_FAILED}    trials failed for good (failure table printed; `run` writes a report
       marked "partial")
  {EXIT_PROBLEMS}    check: damaged or stray files found (--repair quarantines them)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C / SIGTERM): rerun the same command to resume
"""


UNTIL_DECIDED_HELP = (
    "adaptive study: train seeds in rounds until the findings are decided or the budget is "
    "spent (the spec's adaptive section, else its defaults)"
)


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto', 'host:6379', 'ray://host:10001'); default: a private local cluster",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of a local cluster (default: all)"
    )


def _subparser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` ends with the exit codes."""
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hrtem-ray",
        description=__doc__,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hrtem-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = _subparser(sub, "simulate", "simulate a study's dataset into Parquet shards")
    sim.add_argument(
        "spec",
        help="study spec YAML (its 'dataset' section; 'name' and 'storage' for the default --out)",
    )
    sim.add_argument(
        "--out", default=None, help="dataset directory or URI (default: <storage>/data)"
    )
    _add_cluster_args(sim)

    sweep = _subparser(sub, "sweep", "run a study's pretrain / transfer / baseline trials")
    sweep.add_argument("spec")
    sweep.add_argument(
        "--out", default=None, help="study output directory or URI (default: storage)"
    )
    sweep.add_argument("--dry-run", action="store_true", help="print trial counts, run nothing")
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="continue a previous run (re-running the same command does the same)",
    )
    sweep.add_argument(
        "--num-gpus", type=int, default=None, help="GPUs of a local cluster (default: detected)"
    )
    sweep.add_argument("--until-decided", action="store_true", help=UNTIL_DECIDED_HELP)
    _add_cluster_args(sweep)

    run = _subparser(sub, "run", "simulate + sweep + analyse + report in one go")
    run.add_argument("spec")
    run.add_argument("--out", default=None, help="study output directory or URI (default: storage)")
    run.add_argument("--num-gpus", type=int, default=None)
    run.add_argument(
        "--all-results",
        action="store_true",
        help="report rows of other configurations in results/ too (default: current spec only)",
    )
    run.add_argument("--until-decided", action="store_true", help=UNTIL_DECIDED_HELP)
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print trial counts (an adaptive study: its first round and budget), run nothing",
    )
    _add_cluster_args(run)

    rep = _subparser(sub, "report", "write the HTML report of a study or a results directory")
    rep.add_argument(
        "results_dir",
        help="a study directory (its results/ and study.json), a results directory, file or glob",
    )
    rep.add_argument(
        "--data",
        default=None,
        help="dataset directory for the example-image panel (default for a study: its data/)",
    )
    rep.add_argument("-o", "--out", required=True, help="report output directory")
    rep.add_argument(
        "--all-results",
        action="store_true",
        help="for a study: also report rows of other configurations (default: current spec only)",
    )

    slurm_parser = _subparser(
        sub, "slurm", "inside a Slurm allocation: start Ray on its nodes and run a study"
    )
    slurm.add_arguments(slurm_parser)

    check = _subparser(
        sub,
        "check",
        "report damaged results, histories, checkpoints, shards, temp files (runs nothing)",
    )
    check.add_argument("out", help="study output directory or URI")
    check.add_argument(
        "--repair",
        action="store_true",
        help="quarantine and invalidate, so that the next run redoes them",
    )
    check.add_argument("--spec", default=None, help="study spec (default: OUT/study.json)")
    check.add_argument("--data", default=None, help="dataset (default: the spec's, else OUT/data)")
    check.add_argument("--deep", action="store_true", help="also read needed checkpoints in full")

    imp = _subparser(sub, "import", "import micrographs (and masks) as a domain of a dataset")
    imp.add_argument(
        "files", nargs="+", help="DM3/DM4, TIA SER/EMI, EMD, HSPY/ZSPY, MRC, TIFF, PNG, NPY, ..."
    )
    imp.add_argument("--data", required=True, help="the dataset directory (of hrtem-ray simulate)")
    imp.add_argument("--domain", required=True, help="name of the new domain, e.g. exp_au")
    imp.add_argument(
        "--masks", nargs="+", default=None, help="one mask per file, same order (0/1 or 0-255)"
    )
    imp.add_argument(
        "--pixel-size-angstrom", type=float, default=None, help="for files without calibration"
    )
    imp.add_argument("--overlap-px", type=int, default=0, help="tile overlap (dataset pixels)")
    imp.add_argument(
        "--val-fraction", type=float, default=0.25, help="share of the non-test files in val (0.25)"
    )
    imp.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="share of the files held out whole as the test split (0: none)",
    )
    imp.add_argument(
        "--test-files",
        nargs="+",
        default=None,
        help="file names held out whole as the test split (instead of --test-fraction)",
    )
    imp.add_argument(
        "--max-upsampling",
        type=float,
        default=4.0,
        help="refuse files whose pixels are more than this many times the dataset's (4)",
    )

    pred = _subparser(sub, "predict", "segment micrographs with a study's model")
    pred.add_argument("files", nargs="+", help="micrographs (the formats of import)")
    pred.add_argument("--study", required=True, help="the study directory (its results)")
    pred.add_argument("--model", required=True, help="MODEL_ID, or best:DOMAIN")
    pred.add_argument("-o", "--out", required=True, help="output directory")
    pred.add_argument(
        "--pixel-size-angstrom", type=float, default=None, help="for files without calibration"
    )
    pred.add_argument("--overlap-px", type=int, default=None, help="default: a quarter tile")
    pred.add_argument("--threshold", type=float, default=0.5, help="particle probability (0.5)")
    pred.add_argument("--num-threads", type=int, default=None, help="torch threads")
    pred.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of another predict run in -o (else refused)",
    )
    pred.add_argument(
        "--max-memory",
        type=_size,
        default=None,
        help="refuse inputs whose estimated peak memory exceeds this, e.g. 64GB "
        "(default: the memory available now)",
    )
    pred.add_argument(
        "--ensemble",
        action="store_true",
        help="use every replicate (seed) of the model's configuration: mean probability, "
        "per-pixel std map (<stem>_std.tif/.png), per-particle spread",
    )
    pred.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: each tile's mean prediction over its 8 rotations and "
        "mirror images (8x the compute)",
    )
    sug = _subparser(
        sub, "suggest", "rank unlabelled micrographs or tiles by ensemble disagreement"
    )
    sug.add_argument("files", nargs="+", help="unlabelled micrographs (the formats of import)")
    sug.add_argument("--study", required=True, help="the study directory")
    sug.add_argument(
        "--model", required=True, help="MODEL_ID or best:DOMAIN: its configuration's replicates"
    )
    sug.add_argument("-o", "--out", required=True, help="output directory")
    sug.add_argument("--top", type=int, default=10, help="how many to list (10)")
    sug.add_argument("--by", choices=("tile", "file"), default="tile", help="rank tiles or files")
    sug.add_argument(
        "--pixel-size-angstrom", type=float, default=None, help="for files without calibration"
    )
    sug.add_argument("--num-threads", type=int, default=None, help="torch threads")

    pix = _subparser(
        sub, "pixel-size", "choose the pixel size of uncalibrated labelled micrographs"
    )
    pix.add_argument("files", nargs="+", help="labelled micrographs without calibration")
    pix.add_argument("--masks", nargs="+", required=True, help="one mask per file, same order")
    pix.add_argument("--study", required=True, help="the study directory of a pretrained model")
    pix.add_argument("--model", required=True, help="MODEL_ID, or best:DOMAIN")
    pix.add_argument(
        "--candidates", nargs="+", type=float, required=True, help="pixel sizes to try, in Å"
    )
    pix.add_argument(
        "--val-files",
        nargs="+",
        default=None,
        help="names of labelled files held out for validation: the best --shortlist "
        "candidates are then checked by transferring the model on --transfer-tiles tiles of "
        "the other files and scoring it on these (the networks are used after transfer)",
    )
    pix.add_argument("--transfer-tiles", type=int, default=16, help="with --val-files")
    pix.add_argument("--shortlist", type=int, default=3, help="with --val-files")
    pix.add_argument("--num-threads", type=int, default=None, help="torch threads")
    return parser


def _size(text: str) -> int:
    """``--max-memory``: a size such as ``8GB`` or ``512MiB`` in bytes."""
    from hrtem_ray.spec.footprint import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _study(args):
    """The study of the command's spec; ``--all-results`` is refused for an adaptive one."""
    from hrtem_ray.spec.base import SpecError
    from hrtem_ray.study import Study

    study = Study.from_yaml(args.spec, out=args.out, until_decided=args.until_decided)
    if getattr(args, "all_results", False) and study.spec.adaptive is not None:
        raise SpecError(
            "--all-results: not with an adaptive study (adaptive: in the spec or "
            "--until-decided): its rounds decide on the models of its own plan; leave it out"
        )
    return study


def _say(line: str) -> None:
    """A line for the user on stderr."""
    print(line, file=sys.stderr, flush=True)


class _StderrLines(logging.Handler):
    """Prints each record's message as one line on the current ``sys.stderr`` (see :func:`_say`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _say(self.format(record))
        except Exception:
            self.handleError(record)


@contextmanager
def progress_printed() -> Iterator[None]:
    """While inside, the ``hrtem_ray`` loggers' INFO and above are printed to stderr.

    The one place where progress reaches the terminal: the library logs its progress
    lines (shards, trials, outcomes, notes) and warnings, and the command prints each
    message as it is, one line each, as :func:`_say` prints the command's own lines.
    """
    logger = logging.getLogger("hrtem_ray")
    handler, level = _StderrLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """:func:`warnings.showwarning` of the command: one ``warning: MESSAGE`` line on stderr."""
    _say(f"warning: {message}")


@contextmanager
def warnings_printed() -> Iterator[None]:
    """While inside, each Python warning the filters let through (a damaged shard ignored, a
    dark-field micrograph, a file imported twice...) is printed as one ``warning: ...`` line."""
    with warnings.catch_warnings():
        warnings.showwarning = _warning_line
        yield


def interrupted_message(done: int, total: int, unit: str = "models") -> str:
    """The line printed when a command was interrupted."""
    return f"interrupted: {done} of {total} {unit} done; rerun the same command to resume"


def _interrupted_models(study) -> int:
    progress = study.progress()
    _say(interrupted_message(progress.done, progress.total))
    return EXIT_INTERRUPTED


def _simulate(args) -> int:
    from hrtem_ray.study import Study

    # --out is the dataset directory itself (not a study root)
    study = Study.for_dataset(args.spec, data=args.out)
    try:
        summary = study.simulate(address=args.address, num_cpus=args.num_cpus)
    except KeyboardInterrupt:
        done, total = study.shard_progress()
        _say(interrupted_message(done, total, "shards"))
        return EXIT_INTERRUPTED
    done, total = study.shard_progress()
    print(
        f"dataset {summary.root}: {summary.images} images written in {summary.shards_written} of "
        f"{summary.shards} shards, {summary.seconds:.1f} s, {summary.images_per_second:.2f} images/s "
        f"({summary.structures_from_store} structures from the exit-wave store, "
        f"{summary.structures_simulated} simulated)"
    )
    if done < total:  # a shard that was not written (Ray Data reported no error)
        _say(f"error: {total - done} of {total} shards are missing in {study.dataset_root}")
        return EXIT_ERROR
    return EXIT_OK


def _sweep_outcome(study, args) -> int | None:
    """Run the sweep; return the exit code if the command must stop here, else ``None``."""
    try:
        report = study.sweep(address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    except KeyboardInterrupt:
        return _interrupted_models(study)
    if report.finished:
        return None
    if report.interrupted or report.unaccounted:
        # stopped by a signal, or (Tune having handled it) models neither done nor failed
        _say(interrupted_message(report.done, report.total))
        return EXIT_INTERRUPTED
    return EXIT_FAILED


def _sweep(args) -> int:
    study = _study(args)
    if args.dry_run:
        print(study.dry_run())
        return EXIT_OK
    code = _sweep_outcome(study, args)
    selection = study.result_selection()
    if selection.note():
        _say(selection.note())
    print(f"results: {study.results_dir} ({selection.table.height} rows)")
    return EXIT_OK if code is None else code


def _run(args) -> int:
    from hrtem_ray.report.build import ReportError

    study = _study(args)
    if args.dry_run:
        print(study.dry_run())
        return EXIT_OK
    # before the lock creates anything
    study.preflight(args.address, trials=True, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    with study.lock("hrtem-ray run"):  # one lock over the sweep and the report
        code = _sweep_outcome(study, args)
        if code == EXIT_INTERRUPTED:
            _say("no report written: the study is not finished")
            return code
        try:
            path = study.report(all_results=args.all_results)
        except ReportError as error:  # every trial failed: nothing to report
            _say(f"no report written: {error}")
            return EXIT_FAILED if code is None else code
    table = study.results(all_results=args.all_results)
    print(f"results: {study.results_dir} ({table.height} rows); report: {path}")
    return EXIT_OK if code is None else code


def _report(args) -> int:
    from hrtem_ray.report.build import write_report
    from hrtem_ray.study import locate_results

    location = locate_results(args.results_dir, data_dir=args.data, all_results=args.all_results)
    for note in location.notes:
        _say(note)
    path = write_report(
        location.results,
        args.out,
        data_dir=location.data_dir,
        notes=location.notes,
        source=location.source,
    )
    print(f"report: {path}")
    return EXIT_OK


def _check(args) -> int:
    from hrtem_ray.sweep import check

    return check.main_from_cli(args)


#: What ``hrtem-ray import`` says after its summary line, by :class:`ImportSummary` status.
_IMPORT_STATUS = {
    "imported": "",
    "resumed": "; resumed an interrupted import: {written} of {shards} files written now",
    "repaired": "; {written} damaged shards written again",
    "unchanged": "; already imported from these files: nothing to do",
}


def _import(args) -> int:
    from hrtem_ray.dataset.micrographs import import_micrographs, import_progress

    try:
        done = import_micrographs(
            args.files,
            args.data,
            args.domain,
            masks=args.masks,
            pixel_size_angstrom=args.pixel_size_angstrom,
            overlap_px=args.overlap_px,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            test_files=args.test_files,
            max_upsampling=args.max_upsampling,
        )
    except KeyboardInterrupt:
        written, claimed = import_progress(args.data, args.domain)
        _say(interrupted_message(written, claimed or len(args.files), "files"))
        return EXIT_INTERRUPTED
    status = _IMPORT_STATUS[done.status].format(written=done.written, shards=done.shards)
    print(done.describe(args.data) + status)
    return EXIT_OK


def _predict(args) -> int:
    from hrtem_ray.inference import predict

    result = predict(
        args.study,
        args.model,
        args.files,
        args.out,
        pixel_size_angstrom=args.pixel_size_angstrom,
        overlap_px=args.overlap_px,
        threshold=args.threshold,
        num_threads=args.num_threads,
        ensemble=args.ensemble,
        tta=args.tta,
        overwrite=args.overwrite,
        max_memory_bytes=args.max_memory,
    )
    used = (
        f"an ensemble of {len(result.model_ids)} replicates of {result.model_id}"
        if args.ensemble
        else result.model_id
    )
    maps = "masks, std maps, overlays" if args.ensemble else "masks, overlays"
    print(
        f"predicted {len(result.masks)} files with {used}: {result.particles.height} particles; "
        f"{maps}, particles.parquet/csv in {args.out}"
    )
    return EXIT_OK


def _suggest(args) -> int:
    from hrtem_ray.realdata import suggest

    table = suggest(
        args.study,
        args.model,
        args.files,
        args.out,
        top_n=args.top,
        by=args.by,
        pixel_size_angstrom=args.pixel_size_angstrom,
        num_threads=args.num_threads,
    )
    for row in table.iter_rows(named=True):
        print(
            f"{row['rank']:>3}  {row['source']}  y={row['y_px']} x={row['x_px']} "
            f"size={row['size_px']}  disagreement {row['disagreement']:.4f}"
        )
    print(f"suggestions.csv, suggestions.parquet, contact_sheet.png in {args.out}")
    return EXIT_OK


def _pixel_size(args) -> int:
    import os

    from hrtem_ray.realdata import TransferCheck, choose_pixel_size

    check = None
    if args.val_files:
        check = TransferCheck(tuple(os.path.basename(f) for f in args.val_files),
                              tiles=args.transfer_tiles, shortlist=args.shortlist)  # fmt: skip
    choice = choose_pixel_size(
        args.study, args.model, args.files, args.masks, args.candidates,
        num_threads=args.num_threads, transfer=check,
    )  # fmt: skip
    print(choice.describe())
    return EXIT_OK


COMMANDS = {
    "simulate": _simulate,
    "sweep": _sweep,
    "run": _run,
    "report": _report,
    "slurm": slurm.main_from_cli,
    "check": _check,
    "import": _import,
    "predict": _predict,
    "suggest": _suggest,
    "pixel-size": _pixel_size,
}


# Exceptions that mean bad input or a refusal (exit 2), as (module, class name).
BAD_INPUT_ERRORS: tuple[tuple[str, str], ...] = (
    ("hrtem_ray.spec.base", "SpecError"),
    ("hrtem_ray.dataset.manifest", "DatasetError"),
    ("hrtem_ray.dataset.micrograph_files", "MicrographError"),
    ("hrtem_ray.report.build", "ReportError"),
    ("hrtem_ray.inference", "PredictError"),
    ("hrtem_ray.store.lock", "LockHeldError"),
    ("hrtem_ray.store.storage", "StorageError"),
)


def is_bad_input(exc: BaseException) -> bool:
    """Whether ``exc`` means bad input or a refusal (exit 2).

    Only modules that are already imported are looked at: an exception of a class whose
    module was never loaded cannot have been raised, so the check imports nothing (a
    refusal of ``--out`` does not wait for torch or abTEM to load).
    """
    for module_name, class_name in BAD_INPUT_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


#: Longest error message printed (characters); a longer one is cut, saying its length.
MAX_ERROR_CHARS = 4000


def error_line(exc: BaseException, max_chars: int = MAX_ERROR_CHARS) -> str:
    """``error: <message>``, cut to ``max_chars`` characters (an error may echo its input)."""
    from hrtem_ray.spec.base import clip_text

    return clip_text(f"error: {exc}", max_chars)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hrtem-ray`` console script; returns the exit code."""
    # `hrtem-ray slurm SPEC [options] -- EXTRA...`: EXTRA goes to the study command
    args = slurm.parse_args(_parser(), sys.argv[1:] if argv is None else argv)

    try:
        # SIGTERM stops a command like Ctrl-C (the study re-arms this once Ray has started)
        with sigterm_interrupts(), progress_printed(), warnings_printed():
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        # interrupted outside the commands' own handling (while reading, starting Ray...)
        _say("interrupted; rerun the same command to resume")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not is_bad_input(exc):
            raise
        _say(error_line(exc))
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
