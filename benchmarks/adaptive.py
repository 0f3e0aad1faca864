"""Adaptive studies: the sequential rule's error rate and power, the published table replayed,
and a real laptop-scale study, adaptive against its fixed grid.

Prints JSON. Parts (``--parts``):

``synthetic`` (no training)
    Adaptive rounds (:func:`hrtem_ray.sweep.rounds.run_rounds`) on
    :class:`hrtem_ray.sweep.replay.SyntheticStudy` tables: 31 configurations of a
    laptop-shaped defocus study, every finding targeted, 2 seeds a configuration in round
    1, 2 more per round, at most 6 rounds, at most 300 models.
    ``false_decision_rate_null``: on 1,000 studies whose every measure lies exactly on its
    claim's edge (:data:`~hrtem_ray.sweep.replay.NULL_EFFECTS`), the share in which a
    finding is called ``agrees`` or ``disagrees``, per finding (``by_finding``; ``max``:
    goal at most 0.05), ``pooled`` over the findings and ``any_finding`` (a study with at
    least one). ``power_true_effect``: on 200 studies with the reference study's effect
    sizes (:data:`~hrtem_ray.sweep.replay.TRUE_EFFECTS`), the share deciding each finding
    the right way, and the trainings spent. ``fixed_grid_null``: a fixed grid of 3 seeds
    on 200 of the nulls, judged by ``analysis.findings`` with percentile intervals
    (``interval="percentile"``) and with its default t intervals (one look of the
    sequential rule's interval at 95%, ``single_look``).
``replay`` (the published table)
    The reference study's 7,200 defocus models and 720 mixtures replayed as an adaptive
    study (:class:`~hrtem_ray.sweep.replay.TableSource`): a round draws replicates from the
    table instead of training them; transfer models come with their own pretraining run
    (``per_model``, the study's protocol). ``trainings_adaptive`` against the table's
    15,120 trainings: the paper-scale projection.
``laptop`` (real training, CPU)
    ``sweeps/laptop.yaml`` (its dataset simulated once, not timed): the fixed grid
    (``hrtem-ray sweep``), judged by one look at 95%; then the adaptive study of the
    findings it decides (``adaptive.findings``; budget: the fixed grid's models), each
    timed as a command in its own study root (``--fixed-study OUT``: a finished ``hrtem-ray
    run`` of the preset is the fixed grid instead; its sweep is not timed again). ``trainings_ratio_fixed_vs_adaptive`` (goal at
    least 3), ``seconds_ratio_fixed_vs_adaptive``, both sides' verdicts, and every
    applicable finding targeted with the fixed grid's budget, replayed on its models.

``oracle`` (no training; part of ``laptop``)
    ``oracle_on_the_fixed_grid`` (:func:`fewest_seeds`): the fixed grid's models cut to
    their first 2, 3, ... seeds, each cut looked at once; the fewest seeds that decide
    each finding, and the trainings of an oracle that gives each finding's configurations
    just those: no sequential rule is expected to beat it, so
    ``trainings_ratio_fixed_vs_oracle`` bounds what an adaptive study can save on this grid.

``--quick``: 40 synthetic studies per design, n_boot 400, no laptop part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import polars as pl
import yaml

from hrtem_ray.analysis import findings
from hrtem_ray.sweep.adaptive import Budget, Design
from hrtem_ray.sweep.replay import (
    NULL_EFFECTS,
    TRUE_EFFECTS,
    TableSource,
    replay,
    simulate_studies,
    true_verdicts,
)

REPO = Path(__file__).resolve().parents[1]
KEYS = ("1", "2a", "2b", "2c", "3", "4", "5a", "5b", "5c")
PUBLISHED = REPO / "tests" / "data" / "published"
#: The findings the published table decides (5c: the study published no times).
PUBLISHED_KEYS = ("1", "2a", "2b", "2c", "3", "4", "5a", "5b")
ROUNDS = {"batch": 2, "first_seeds": 2, "max_rounds": 6}
SYNTHETIC_BUDGET = 300


def decision_rates(effects: dict, studies: int, n_boot: int, first_seed: int) -> dict:
    """Verdicts of adaptive rounds on ``studies`` synthetic studies, against the truth."""
    start = time.perf_counter()
    table = simulate_studies(effects, studies, KEYS, budget=Budget(SYNTHETIC_BUDGET),
                             first_seed=first_seed, n_boot=n_boot, **ROUNDS)  # fmt: skip
    truth = true_verdicts(effects)
    table = table.with_columns(
        truth=pl.col("finding").replace_strict(truth),
        decided=pl.col("verdict") != "undecidable",
    )
    table = table.with_columns(right=pl.col("verdict") == pl.col("truth"))
    per = table.group_by("finding").agg(
        pl.col("decided").mean().alias("decided"), pl.col("right").mean().alias("right"),
        pl.col("round").mean().alias("mean_round_decided"),
    ).sort("finding")  # fmt: skip
    studies_table = table.group_by("study").agg(
        pl.col("decided").any(), pl.col("trainings").first(), pl.col("rounds").first()
    )
    return {
        "studies": studies,
        "seconds": round(time.perf_counter() - start, 1),
        "per_finding": {
            r["finding"]: {k: r[k] for k in ("decided", "right", "mean_round_decided")}
            for r in per.iter_rows(named=True)
        },  # fmt: skip
        "any_finding_decided": studies_table.get_column("decided").mean(),
        "mean_trainings": studies_table.get_column("trainings").mean(),
        "mean_rounds": studies_table.get_column("rounds").mean(),
        "truth": truth,
    }


def fixed_grid_null(studies: int, seeds: int, n_boot: int) -> dict:
    """False decisions of a fixed grid of ``seeds`` seeds on synthetic nulls: by
    ``analysis.findings(interval="percentile")`` and by its default t intervals, one look
    of the sequential rule's interval at 95% (:func:`~hrtem_ray.analysis.sequential.single_look`)."""
    from hrtem_ray.analysis.sequential import single_look
    from hrtem_ray.sweep.replay import SyntheticStudy

    counts = {"percentile": dict.fromkeys(KEYS, 0), "single_look": dict.fromkeys(KEYS, 0)}
    for index in range(studies):
        study = SyntheticStudy(NULL_EFFECTS, seed=30_000 + index)
        design = study.design()
        table = study.table({k: seeds for k, c in design.configs.items() if c.phase != "pretrain"})
        percentile = findings(table, n_boot=n_boot, interval="percentile")
        for key, verdict in percentile.select("finding", "verdict").iter_rows():
            counts["percentile"][key] += verdict != "undecidable"
        for key, found in single_look(table, 0.95, KEYS, n_boot).findings.items():
            counts["single_look"][key] += found.verdict != "undecidable"
    rates = {name: {k: n / studies for k, n in c.items()} for name, c in counts.items()}
    return {
        "seeds": seeds, "studies": studies,
        **{f"{name}_by_finding": r for name, r in rates.items()},
        **{f"{name}_max": max(r.values()) for name, r in rates.items()},
    }  # fmt: skip


def synthetic(studies_null: int, studies_power: int, n_boot: int) -> dict:
    """``false_decision_rate_null``, ``power_true_effect`` and ``fixed_grid_null``."""
    null = decision_rates(NULL_EFFECTS, studies_null, n_boot, first_seed=10_000)
    rates = {k: v["decided"] for k, v in null["per_finding"].items()}
    power = decision_rates(TRUE_EFFECTS, studies_power, n_boot, first_seed=20_000)
    setup = {"configurations": 31, "budget_max_models": SYNTHETIC_BUDGET, "n_boot": n_boot,
             **ROUNDS, "level": 0.95}  # fmt: skip
    return {
        "false_decision_rate_null": {
            "by_finding": rates,
            "max": max(rates.values()),
            "pooled": sum(rates.values()) / len(rates),
            "any_finding": null["any_finding_decided"],
            "studies": studies_null,
            "mean_trainings": null["mean_trainings"],
            "seconds": null["seconds"],
        },  # fmt: skip
        "power_true_effect": {
            "by_finding": {k: v["right"] for k, v in power["per_finding"].items()},
            "mean_round_decided": {
                k: v["mean_round_decided"] for k, v in power["per_finding"].items()
            },
            "studies": studies_power,
            "mean_trainings": power["mean_trainings"],
            "mean_rounds": power["mean_rounds"],
            "effects": TRUE_EFFECTS,
            "seconds": power["seconds"],
        },  # fmt: skip
        "synthetic_setup": setup,
        "fixed_grid_null": fixed_grid_null(studies_power, 3, n_boot),
    }


def published_replay(n_boot: int) -> dict:
    """The published table replayed as an adaptive study (the paper-scale projection)."""
    table = pl.concat(
        [pl.read_parquet(PUBLISHED / f"published_{name}_results.parquet")
         for name in ("defocus", "baseline")], how="diagonal_relaxed",
    )  # fmt: skip
    full = table.get_column("model_id").n_unique()
    start = time.perf_counter()
    design = Design.from_table(table, "per_model")
    records = replay(design, TableSource(table), PUBLISHED_KEYS, budget=Budget(full),
                     n_boot=n_boot, batch=1, first_seeds=2)  # fmt: skip
    last = records[-1]
    shared = dict(last["trainings_by_phase"])
    shared["pretrain"] = 2 * sum(1 for c in design.configs.values() if c.phase == "pretrain")
    return {
        "trainings_full_table": full,
        "trainings_adaptive": last["trainings"],
        "trainings_adaptive_by_phase": last["trainings_by_phase"],
        "trainings_ratio_full_vs_adaptive": full / last["trainings"],
        "trainings_if_parents_were_shared": sum(shared.values()),
        "rounds": len(records),
        "stop": last["stop"],
        "verdicts": {k: v["verdict"] for k, v in last["decided"].items()},
        "full_table_verdicts": dict(
            findings(table, n_boot=n_boot).select("finding", "verdict").iter_rows()
        ),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _cli(*args: object) -> float:
    """Run ``hrtem-ray ARGS``; its wall time in seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hrtem_ray.cli", *map(str, args)],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"hrtem-ray {args[0]} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return time.perf_counter() - start


def _verdicts(look) -> dict[str, str]:
    return {k: f.verdict for k, f in look.findings.items()}


def laptop(tmp: Path, n_boot: int, fixed_study: Path | None = None) -> dict:
    """The laptop preset's fixed grid, then the adaptive study of the findings it decides.

    Both sides are judged by the same rule: the fixed grid looks once at 95%
    (:func:`~hrtem_ray.analysis.sequential.single_look`), the adaptive study spends its
    5% over its rounds (``analysis.findings``' default t intervals are that look). Its
    percentile verdicts (``interval="percentile"``) are reported beside (``fixed_grid_percentile_verdicts``); on the synthetic nulls they are
    wrong far more often than 5% (``fixed_grid_null``).
    """
    from hrtem_ray.analysis import load_results
    from hrtem_ray.analysis.sequential import single_look
    from hrtem_ray.spec.config import load_study_spec

    raw = yaml.safe_load(common.LAPTOP_SPEC.read_text())
    data = tmp / "data" if fixed_study is None else fixed_study / "data"
    if fixed_study is None:
        _cli("simulate", common.LAPTOP_SPEC, "--out", data)
    raw["dataset"]["path"] = str(data)
    fixed_spec = tmp / "fixed.yaml"
    fixed_spec.write_text(yaml.safe_dump(raw))
    if fixed_study is None:
        seconds_fixed = _cli("sweep", fixed_spec, "--out", tmp / "fixed")
        fixed_results = tmp / "fixed" / "results"
    else:  # a finished `hrtem-ray run sweeps/laptop.yaml`: its sweep's wall time is not known
        seconds_fixed, fixed_results = None, fixed_study / "results"
    table = load_results(fixed_results, categorical=False)
    n_fixed = table.get_column("model_id").n_unique()
    applicable = [k for k, need in load_study_spec(fixed_spec).finding_requirements().items()
                  if need is None]  # fmt: skip
    fixed = _verdicts(single_look(table, 0.95, applicable, n_boot))
    targets = [k for k, v in fixed.items() if v != "undecidable"]
    report = {
        "trainings_fixed_grid": n_fixed,
        "seconds_fixed_grid": None if seconds_fixed is None else round(seconds_fixed, 1),
        "fixed_grid_from": "this run" if fixed_study is None else str(fixed_study),
        "fixed_grid_verdicts": fixed,
        "fixed_grid_percentile_verdicts": dict(
            findings(table, n_boot=n_boot, interval="percentile")
            .select("finding", "verdict")
            .iter_rows()
        ),
        "targets": targets,
    }
    if targets:
        report["oracle_on_the_fixed_grid"] = fewest_seeds(table, targets, n_boot)
    if not targets:
        return report | {"note": "the fixed grid decides no finding: nothing to compare"}
    raw["adaptive"] = {"findings": targets, "max_models": n_fixed}
    adaptive_spec = tmp / "adaptive.yaml"
    adaptive_spec.write_text(yaml.safe_dump(raw))
    seconds_adaptive = _cli("sweep", adaptive_spec, "--out", tmp / "adaptive")
    folder = tmp / "adaptive" / "adaptive"
    rounds = [json.loads(p.read_text()) for p in sorted(folder.glob("round-*.json"))]
    last = rounds[-1]
    adaptive = {k: v["verdict"] for k, v in last["decided"].items()}
    # every applicable finding, the fixed grid's budget, replayed on the fixed grid's models
    design = Design.from_table(table, "shared")  # at most its own seeds a configuration
    everything = replay(design, TableSource(table), applicable, budget=Budget(n_fixed),
                        n_boot=n_boot, **{**ROUNDS, "batch": 1})[-1]  # fmt: skip
    return report | {
        "trainings_adaptive": last["trainings"],
        "trainings_ratio_fixed_vs_adaptive": n_fixed / last["trainings"],
        "seconds_adaptive": round(seconds_adaptive, 1),
        "seconds_ratio_fixed_vs_adaptive": (
            None if seconds_fixed is None else seconds_fixed / seconds_adaptive
        ),
        "adaptive_verdicts": adaptive,
        "adaptive_decides_the_same": all(adaptive.get(k) == fixed[k] for k in targets),
        "adaptive_rounds": [
            {k: r[k] for k in ("round", "trainings", "decided", "open", "futile", "stop")}
            for r in rounds
        ],
        "all_findings_replayed_on_the_fixed_grid": {
            "trainings": everything["trainings"],
            "verdicts": {k: v["verdict"] for k, v in everything["decided"].items()},
            "futile": list(everything["futile"]),
            "stop": everything["stop"],
        },  # fmt: skip
    }


def fewest_seeds(table: pl.DataFrame, targets: list[str], n_boot: int) -> dict:
    """What an oracle would have trained: the fixed grid's own models, cut to its first
    ``s`` seeds (``s`` = 2, 3, ...), each cut looked at once at 95% like the grid.

    Per finding, ``first_decided_at_seeds``: the fewest seeds from which its verdict is the
    full grid's at every larger cut. ``trainings_oracle``: an allocation that gives every
    configuration a finding rests on (:meth:`~hrtem_ray.sweep.adaptive.Design.needed`) that
    finding's seeds, and no other configuration anything (parents shared); it knows in
    advance how many seeds suffice and spends nothing on looks, so no sequential rule is
    expected to decide the same findings with fewer (only a split of seeds that is not
    even within a finding's configurations could).
    """
    from hrtem_ray.analysis.sequential import single_look

    design = Design.from_table(table, "shared")
    top = int(table.get_column("seed").max()) + 1
    cuts = {}
    for s in range(2, top + 1):
        cut = table.filter(pl.col("seed") < s)
        look = single_look(cut, 0.95, targets, n_boot)
        cuts[s] = {
            "trainings": cut.get_column("model_id").n_unique(),
            "verdicts": {k: f.verdict for k, f in look.findings.items()},
            "intervals": {k: [f.ci_low, f.ci_high] for k, f in look.findings.items()},
        }
    final = cuts[top]["verdicts"]
    first = {}
    for key in targets:
        stays = [
            s for s in cuts if all(cuts[u]["verdicts"][key] == final[key] for u in cuts if u >= s)
        ]
        first[key] = min(stays) if final[key] != "undecidable" else None
    allocation: dict[str, int] = {}
    for key, seeds in first.items():
        for config in design.needed([key]) if seeds else []:
            allocation[config] = max(allocation.get(config, 0), seeds)
    oracle = sum(design.trainings(allocation).values())
    return {
        "by_seeds": cuts,
        "first_decided_at_seeds": first,
        "trainings_oracle": oracle,
        "trainings_oracle_by_phase": design.trainings(allocation),
        "trainings_ratio_fixed_vs_oracle": table.get_column("model_id").n_unique() / oracle,
    }


def main() -> None:
    args = common.parser(__doc__, "40 synthetic studies, n_boot 400, no laptop part")
    args.add_argument("--parts", default="synthetic,replay,laptop",
                      help="comma-separated: synthetic, replay, laptop, oracle (the "
                           "laptop part's oracle alone, on --fixed-study)")  # fmt: skip
    args.add_argument("--fixed-study", type=Path, default=None,
                      help="laptop part: a finished `hrtem-ray run sweeps/laptop.yaml` OUT "
                           "as the fixed grid (its data and results; not run again)")  # fmt: skip
    args.add_argument("--update", action="store_true",
                      help="keep the other keys of an existing --out file")  # fmt: skip
    args = args.parse_args()
    parts = set(args.parts.split(","))
    n_boot = 400 if args.quick else 1000
    report: dict = {"quick": args.quick, "cpu_count": os.cpu_count()}
    if args.update and args.out and Path(args.out).exists():
        report = {**json.loads(Path(args.out).read_text()), **report}
    if "synthetic" in parts:
        report |= synthetic(40 if args.quick else 1000, 40 if args.quick else 200, n_boot)
    if "replay" in parts:
        report["published_replay"] = published_replay(n_boot)
    if "laptop" in parts and not args.quick:
        with tempfile.TemporaryDirectory(prefix="hrtem-adaptive-") as tmp:
            report["laptop"] = laptop(Path(tmp), n_boot, args.fixed_study)
    elif "oracle" in parts:  # the laptop part's oracle only, on --fixed-study's models
        from hrtem_ray.analysis import load_results

        if args.fixed_study is None:
            raise SystemExit("--parts oracle needs --fixed-study OUT")
        table = load_results(args.fixed_study / "results", categorical=False)
        laptop_part = report.setdefault("laptop", {})
        targets = laptop_part.get("targets") or list(KEYS)
        laptop_part["oracle_on_the_fixed_grid"] = fewest_seeds(table, targets, n_boot)
    common.emit(report, args.out)


if __name__ == "__main__":
    main()
