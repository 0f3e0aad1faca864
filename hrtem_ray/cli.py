"""The ``hrtem-ray`` command line: simulate, sweep, run, report, slurm."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hrtem_ray import __version__
from hrtem_ray.config import SpecError


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto', 'host:6379', 'ray://host:10001'); default: a private local cluster",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of a local cluster (default: all)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hrtem-ray", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hrtem-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate a study's dataset into Parquet shards")
    sim.add_argument("spec", help="study spec YAML (only its 'dataset' section is read)")
    sim.add_argument(
        "--out", default=None, help="dataset directory or URI (default: <storage>/data)"
    )
    _add_cluster_args(sim)

    sweep = sub.add_parser("sweep", help="run a study's pretrain / transfer / baseline trials")
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
    _add_cluster_args(sweep)

    run = sub.add_parser("run", help="simulate + sweep + analyse + report in one go")
    run.add_argument("spec")
    run.add_argument("--out", default=None, help="study output directory or URI (default: storage)")
    run.add_argument("--num-gpus", type=int, default=None)
    _add_cluster_args(run)

    rep = sub.add_parser("report", help="write the HTML report of a results directory")
    rep.add_argument("results_dir")
    rep.add_argument("--data", default=None, help="dataset directory (for the example-image panel)")
    rep.add_argument("-o", "--out", required=True, help="report output directory")

    slurm = sub.add_parser(
        "slurm", help="inside a Slurm allocation: start Ray on its nodes and run a study"
    )
    slurm.add_argument("spec")
    slurm.add_argument("--out", default=None)
    slurm.add_argument(
        "--command", dest="study_command", choices=("run", "sweep", "simulate"), default="run"
    )
    slurm.add_argument("--head-ip", default=None, help="head node address (default: resolved)")
    slurm.add_argument("--temp-dir", default=None, help="Ray temp dir on every node")
    slurm.add_argument("--port", type=int, default=6379)
    slurm.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser


def _study(args):
    from hrtem_ray.study import Study

    return Study.from_yaml(args.spec, out=args.out)


def _simulate(args) -> int:
    from tqdm import tqdm

    from hrtem_ray.config import load_dataset_spec
    from hrtem_ray.data import completed_shards, plan_shards, simulate_dataset
    from hrtem_ray.runtime import ray_session
    from hrtem_ray.study import Study, _absolute

    spec = load_dataset_spec(args.spec)
    if args.out is not None:
        root = _absolute(args.out)
    else:
        root = Study.from_yaml(args.spec).data_root
    todo = len(plan_shards(spec)) - len(completed_shards(root))
    with tqdm(total=max(todo, 0), unit="shard", desc="simulate", file=sys.stderr) as bar:
        with ray_session(
            args.address, num_cpus=args.num_cpus, object_store_memory_bytes=512 * 1024**2
        ):
            summary = simulate_dataset(spec, root, on_shard=lambda record: bar.update(1))
    print(
        f"dataset {summary.root}: {summary.images} images written in {summary.shards_written} of "
        f"{summary.shards} shards, {summary.seconds:.1f} s, {summary.images_per_second:.2f} images/s"
    )
    return 0


def _sweep(args) -> int:
    study = _study(args)
    if args.dry_run:
        print(study.dry_run())
        return 0
    report = study.sweep(address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    print(f"results: {study.results_dir} ({study.results().height} rows)")
    return 1 if report.failed else 0


def _run(args) -> int:
    study = _study(args)
    table = study.run(address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    print(
        f"results: {study.results_dir} ({table.height} rows); report: {study.report_dir}/report.html"
    )
    return 0


def _report(args) -> int:
    from hrtem_ray.report import write_report

    path = write_report(args.results_dir, args.out, data_dir=args.data)
    print(f"report: {path}")
    return 0


def _slurm(args) -> int:
    from hrtem_ray import slurm

    return slurm.main_from_cli(args)


COMMANDS = {"simulate": _simulate, "sweep": _sweep, "run": _run, "report": _report, "slurm": _slurm}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hrtem-ray`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `hrtem-ray slurm SPEC [options] -- EXTRA...`: EXTRA goes to the study command
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = _parser().parse_args(argv)
    args.extra = extra
    try:
        return COMMANDS[args.command](args)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
