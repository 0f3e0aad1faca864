"""Benchmark of the analysis layer on a results table of about a million rows.

The input replicates the defocus study's grid (5 pretraining defoci, 11 target
defoci, 2 x 2 learning rates, 4 transfer sizes, 3 freezing modes, 3 seeds, the
mixture baselines) with losses computed from a smooth formula plus noise, until the
requested number of rows is reached (each replica has its own seeds and model ids).

The table is written to one Parquet file and read back the way each library's user
would: ``hrtem_ray.analysis.load_results`` (label columns as categoricals, the
default) and ``pandas.read_parquet``. Prints JSON with

- ``seconds_all_functions_1m_rows``: every public analysis function once on the
  loaded table, best of ``--repeat``, scaled to 1 M rows;
- ``speedup_vs_pandas``: the time of a straightforward pandas implementation of
  ``pair_matrix`` (both phases) and ``ood_spread`` on its loaded frame divided by
  the Polars time of the same functions on theirs;
- ``speedup_vs_pandas_with_load``: the same ratio with each side's load time added;
- ``speedup_vs_pandas_string_labels``: the ratio when Polars gets the labels as
  plain strings (``load_results(..., categorical=False)``), as pandas does;
- ``seconds_ci_all_functions_1m_rows``: every public analysis function once with
  ``ci=0.95, n_boot=1000`` (bootstrap intervals over models), best of ``--repeat``,
  scaled to 1 M rows;
- ``cpu_seconds_ci_all_functions_1m_rows``: the process CPU time (all threads) of
  one such call, scaled to 1 M rows: on a shared machine, a measure of the work that
  does not count the time other processes hold the cores;
- ``ci_speedup_vs_pandas``: a straightforward pandas/numpy bootstrap of the same
  intervals of ``pair_matrix`` (both phases), ``ood_spread`` and
  ``transfer_asymmetry`` (per group: a pivot to a model x eval-domain matrix, an
  index matrix of resampled models, ``np.median`` over it; timed once) divided by
  the time of the same functions with ``ci``;
- ``seconds_findings_published_table``: ``analysis.findings`` (intervals from 1000
  bootstrap replicates) on the reference study's published tables (7,200 + 7,200
  defocus models and 720 mixtures, ``tests/data/published``), best of ``--repeat``;
  ``cpu_seconds_findings_published_table``: the process CPU time of one such call.

Usage::

    python benchmarks/analysis.py            # 1 M rows
    python benchmarks/analysis.py --quick    # one repeat (well under a minute)
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import numpy as np
import pandas as pd
import polars as pl

from hrtem_ray import analysis

PUBLISHED = Path(__file__).resolve().parents[1] / "tests" / "data" / "published"
PRETRAIN = (-10, -5, 0, 5, 10)
DOMAINS = tuple(range(-25, 30, 5))
LRS_PRETRAIN = (1e-3, 1e-4)
LRS_TRANSFER = (1e-4, 1e-5)
SIZES = (64, 128, 256, 512)
FREEZE = ("none", "encoder", "decoder")
SEEDS = (0, 1, 2)
MIXTURES = ((128, 384), (256, 256), (384, 128))


def _grid(**axes: Any) -> pl.DataFrame:
    """Cartesian product of the given axes as a DataFrame."""
    frame = None
    for name, values in axes.items():
        column = pl.DataFrame({name: list(values)})
        frame = column if frame is None else frame.join(column, how="cross")
    return frame


def _models() -> pl.DataFrame:
    """One row per model of one replica of the defocus study."""
    pretrain = _grid(pretrain_domain=PRETRAIN, pretrain_lr=LRS_PRETRAIN, seed=SEEDS).with_columns(
        phase=pl.lit("pretrain"), transfer_domain=None, transfer_lr=None, n_pretrain=512,
        n_transfer=None, freeze=pl.lit("none"),
    )  # fmt: skip
    transfer = (
        _grid(
            pretrain_domain=PRETRAIN,
            transfer_domain=DOMAINS,
            pretrain_lr=LRS_PRETRAIN,
            transfer_lr=LRS_TRANSFER,
            n_transfer=SIZES,
            freeze=FREEZE,
            seed=SEEDS,
        )  # fmt: skip
        .filter(pl.col("pretrain_domain") != pl.col("transfer_domain"))
        .with_columns(phase=pl.lit("transfer"), n_pretrain=512)
    )
    pairs = {tuple(sorted((a, b))) for a in PRETRAIN for b in DOMAINS if a != b}
    mixtures = pl.DataFrame(
        [(a, b, na, nb) for a, b in sorted(pairs) for na, nb in MIXTURES],
        schema=["pretrain_domain", "transfer_domain", "n_pretrain", "n_transfer"],
        orient="row",
    )
    baseline = mixtures.join(_grid(pretrain_lr=LRS_PRETRAIN, seed=SEEDS), how="cross").with_columns(
        phase=pl.lit("baseline"), transfer_lr=None, freeze=pl.lit("none")
    )
    return pl.concat([pretrain, transfer, baseline], how="diagonal_relaxed")


def _ood(a: pl.Expr, e: pl.Expr) -> pl.Expr:
    """Out-of-distribution penalty of a model trained at defocus a, evaluated at e."""
    scale = pl.when(a == 0).then(0.6).otherwise(1.0)
    return 0.004 * (a - e).abs().pow(1.5) * scale


def make_table(rows: int, rng_seed: int = 0) -> pl.DataFrame:
    """A results table in the contract's schema with at least ``rows`` rows."""
    models = _models()
    base = models.height * len(DOMAINS)
    replicas = max(1, math.ceil(rows / base))
    table = (
        _grid(replica=range(replicas))
        .join(models, how="cross")
        .with_columns(seed=pl.col("seed") + 3 * pl.col("replica"))
        .with_row_index("model")
        .join(pl.DataFrame({"eval_domain": DOMAINS}), how="cross")
    )
    a, b, e = (
        pl.col(c).cast(pl.Float64) for c in ("pretrain_domain", "transfer_domain", "eval_domain")
    )
    difficulty = 0.04 + 0.08 * (-((e / 6) ** 2)).exp()
    lr_cost = pl.when(pl.col("pretrain_lr") < 1e-3).then(0.005).otherwise(0.0)
    share_a = pl.col("n_pretrain") / 512
    share_b = pl.col("n_transfer").cast(pl.Float64) / 512
    transfer_cost = (
        0.7 * _ood(b, e) + 0.2 * _ood(a, e) + 0.0005 * (a - b).abs() * pl.when(a == 0).then(0.3).otherwise(1.0)
        + 0.03 * (64 / pl.col("n_transfer")).sqrt() - 0.015
        + pl.col("freeze").replace_strict({"none": 0.0, "encoder": 0.008, "decoder": 0.002})
        + pl.when(pl.col("transfer_lr") < 1e-4).then(0.01).otherwise(0.0)
    )  # fmt: skip
    mixture_cost = pl.min_horizontal(
        _ood(a, e) + 0.02 * (1 - share_a), _ood(b, e) + 0.02 * (1 - share_b)
    )
    cost = (
        pl.when(pl.col("phase") == "pretrain")
        .then(_ood(a, e))
        .when(pl.col("phase") == "transfer")
        .then(transfer_cost)
        .otherwise(mixture_cost)
    )
    rng = np.random.default_rng(rng_seed)
    noise = rng.lognormal(-6.0, 0.5, table.height)
    table = table.with_columns(loss=difficulty + cost + lr_cost + pl.Series(noise))
    n = table.height
    return table.select(
        study=pl.lit("defocus"),
        model_id=pl.format("m{}", "model"),
        phase="phase",
        parent_id=pl.when(pl.col("phase") == "transfer")
        .then(pl.format("p{}_{}_{}", "pretrain_domain", "pretrain_lr", "seed"))
        .otherwise(None),
        pretrain_domain=pl.col("pretrain_domain").cast(pl.String),
        transfer_domain=pl.col("transfer_domain").cast(pl.String),
        eval_domain=pl.col("eval_domain").cast(pl.String),
        pretrain_lr="pretrain_lr",
        transfer_lr=pl.col("transfer_lr").cast(pl.Float64),
        n_pretrain=pl.col("n_pretrain").cast(pl.Int64),
        n_transfer=pl.col("n_transfer").cast(pl.Int64),
        freeze="freeze",
        seed=pl.col("seed").cast(pl.Int64),
        epochs=pl.lit(10, pl.Int64),
        loss="loss",
        cross_entropy=pl.col("loss") + 0.3133,
        iou=(0.95 - 2 * pl.col("loss")).clip(0, 1),
        best_epoch=pl.Series(rng.integers(1, 11, n)),
        train_seconds=pl.Series(rng.uniform(30, 60, n)),
        config_hash=pl.format("h{}", "model"),
        hrtem_ray_version=pl.lit("bench"),
    )


def polars_all(table: pl.DataFrame) -> None:
    """Every public analysis function once."""
    analysis.pair_matrix(table, "pretrain")
    analysis.pair_matrix(table, "transfer")
    analysis.ood_spread(table)
    analysis.transfer_asymmetry(table)
    analysis.asymmetry_summary(table, "0")
    analysis.baseline_comparison(table, "0", "10")
    analysis.hyperparameter_effects(table, "n_transfer")
    analysis.hyperparameter_effects(table, "freeze", freeze=["none", "encoder"])
    analysis.hyperparameter_effects(table, ("pretrain_lr", "transfer_lr"))
    analysis.generalization_gap(table, "pretrain")
    analysis.generalization_gap(table, "transfer")
    analysis.training_time(table)
    analysis.transfer_mixture_models(table)


def polars_pair_ood(table: pl.DataFrame) -> None:
    """The functions the pandas reference implements."""
    analysis.pair_matrix(table, "pretrain")
    analysis.pair_matrix(table, "transfer")
    analysis.ood_spread(table)


def pandas_pair_ood(df: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """Straightforward pandas pair_matrix (both phases) and ood_spread, median reduce."""
    pre = df[df["phase"] == "pretrain"]
    pretrain = (
        pre.groupby(["pretrain_domain", "eval_domain"])["loss"]
        .agg(["median", "size"])
        .reset_index()
        .rename(columns={"eval_domain": "target_domain", "median": "loss", "size": "n_models"})
    )
    tr = df[(df["phase"] == "transfer") & (df["eval_domain"] == df["transfer_domain"])]
    transfer = (
        tr.groupby(["pretrain_domain", "transfer_domain"])["loss"]
        .agg(["median", "size"])
        .reset_index()
        .rename(columns={"transfer_domain": "target_domain", "median": "t_loss", "size": "t_n"})
    )
    merged = pretrain.merge(transfer, on=["pretrain_domain", "target_domain"], how="outer")
    merged["from_pretrain"] = merged["t_loss"].isna()
    merged["loss"] = merged["t_loss"].fillna(merged["loss"])
    merged["n_models"] = merged["t_n"].fillna(merged["n_models"])

    kept = df[df["eval_domain"] != "0"]
    p = (
        kept[kept["phase"] == "pretrain"]
        .groupby(["pretrain_domain", "eval_domain"])["loss"]
        .median()
    )
    std_pre = p.groupby(level=0).std(ddof=0).rename("std_pretrain").reset_index()
    t = (
        kept[kept["phase"] == "transfer"]
        .groupby(["pretrain_domain", "transfer_domain", "eval_domain"])["loss"]
        .median()
    )
    std_tr = (
        t.groupby(level=[0, 1]).std(ddof=0).rename("std_transfer").reset_index()
        .rename(columns={"transfer_domain": "target_domain"})
    )  # fmt: skip
    grid = merged[["pretrain_domain", "target_domain"]]
    ood = grid.merge(std_pre, on="pretrain_domain", how="left").merge(
        std_tr, on=["pretrain_domain", "target_domain"], how="left"
    )
    ood["std_transfer"] = ood["std_transfer"].fillna(ood["std_pretrain"])
    ood["shift"] = ood["std_transfer"] - ood["std_pretrain"]
    return merged, ood


CI = {"ci": 0.95, "n_boot": 1000}


def polars_ci_all(table: pl.DataFrame) -> None:
    """Every public analysis function once, with bootstrap intervals."""
    analysis.pair_matrix(table, "pretrain", **CI)
    analysis.pair_matrix(table, "transfer", **CI)
    analysis.ood_spread(table, **CI)
    analysis.transfer_asymmetry(table, **CI)
    analysis.asymmetry_summary(table, "0", **CI)
    analysis.baseline_comparison(table, "0", "10", **CI)
    analysis.hyperparameter_effects(table, "n_transfer", **CI)
    analysis.hyperparameter_effects(table, "freeze", freeze=["none", "encoder"], **CI)
    analysis.hyperparameter_effects(table, ("pretrain_lr", "transfer_lr"), **CI)
    analysis.generalization_gap(table, "pretrain", **CI)
    analysis.generalization_gap(table, "transfer", **CI)
    analysis.training_time(table, **CI)


def polars_ci_subset(table: pl.DataFrame) -> None:
    """The functions with intervals that the pandas reference implements."""
    analysis.pair_matrix(table, "pretrain", **CI)
    analysis.pair_matrix(table, "transfer", **CI)
    analysis.ood_spread(table, **CI)
    analysis.transfer_asymmetry(table, **CI)


def _matrices(frame: pd.DataFrame, groups: list[str]) -> dict[Any, pd.DataFrame]:
    """Per group, its model x eval-domain loss matrix (a model's duplicate rows averaged)."""
    pivot = frame.pivot_table(
        index=[*groups, "model_id"], columns="eval_domain", values="loss", aggfunc="mean"
    )
    levels = list(range(len(groups)))
    return {
        key[0] if len(groups) == 1 else key: group.droplevel(levels)
        for key, group in pivot.groupby(level=levels)
    }


def _boot_medians(matrix: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Medians of ``n_boot`` resamples of the models (rows): ``(n_boot, n_columns)``."""
    draws = rng.integers(0, len(matrix), (n_boot, len(matrix)))
    return np.median(matrix[draws], axis=1)


def _bounds(replicates: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval, null (NaN) for a single model."""
    tail = 100 * (1 - ci) / 2
    return tuple(np.percentile(replicates, [tail, 100 - tail]))


def pandas_ci(df: pd.DataFrame, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """Straightforward pandas/numpy bootstrap (over models) of the intervals of
    pair_matrix (both phases), ood_spread and transfer_asymmetry, median reduce."""
    rng = np.random.default_rng(seed)
    out = {}
    pre = _matrices(df[df["phase"] == "pretrain"], ["pretrain_domain"])
    own = df[(df["phase"] == "transfer") & (df["eval_domain"] == df["transfer_domain"])]
    tr_own = _matrices(own, ["pretrain_domain", "transfer_domain"])

    def pretrain_reps() -> dict:
        return {a: pd.DataFrame(_boot_medians(m.to_numpy(), rng, n_boot), columns=m.columns)
                for a, m in pre.items()}  # fmt: skip

    def transfer_reps() -> dict:
        return {(a, b): _boot_medians(m[[b]].to_numpy(), rng, n_boot)[:, 0]
                for (a, b), m in tr_own.items()}  # fmt: skip

    # pair_matrix, pretrain and transfer (fallback: the pretrain cell's interval)
    p_reps = pretrain_reps()
    out["pretrain"] = {(a, e): _bounds(r[e], ci) for a, r in p_reps.items() for e in r.columns}
    p_reps, t_reps = pretrain_reps(), transfer_reps()
    cells = {(a, e): _bounds(r[e], ci) for a, r in p_reps.items() for e in r.columns}
    cells.update({pair: _bounds(r, ci) for pair, r in t_reps.items()})
    out["transfer"] = cells

    # ood_spread: each group resampled jointly over the eval domains kept
    kept = df[df["eval_domain"] != "0"]
    p_kept = _matrices(kept[kept["phase"] == "pretrain"], ["pretrain_domain"])
    t_kept = _matrices(kept[kept["phase"] == "transfer"], ["pretrain_domain", "transfer_domain"])
    std_pre = {a: _boot_medians(m.to_numpy(), rng, n_boot).std(axis=1) for a, m in p_kept.items()}
    ood = {}
    for (a, b), m in t_kept.items():
        std_tr = _boot_medians(m.to_numpy(), rng, n_boot).std(axis=1)
        ood[a, b] = [_bounds(x, ci) for x in (std_pre[a], std_tr, std_tr - std_pre[a])]
    out["ood"] = ood

    # transfer_asymmetry: T(a,b) - P(b,b) - (T(b,a) - P(a,a)), groups resampled independently
    p_reps, t_reps = pretrain_reps(), transfer_reps()
    domains = list(p_reps)

    def t_or_p(a: str, b: str) -> np.ndarray:
        return t_reps[a, b] if (a, b) in t_reps else p_reps[a][b].to_numpy()

    asym = {}
    for a in domains:
        for b in domains:
            if a != b:
                gap_ab = t_or_p(a, b) - p_reps[b][b].to_numpy()
                gap_ba = t_or_p(b, a) - p_reps[a][a].to_numpy()
                asym[a, b] = [_bounds(x, ci) for x in (gap_ab, gap_ba, gap_ab - gap_ba)]
    out["asymmetry"] = asym
    return out


def published_table() -> pl.DataFrame:
    """The reference study's published defocus and baseline tables, concatenated."""
    files = ("published_defocus_results.parquet", "published_baseline_results.parquet")
    return pl.concat([pl.read_parquet(PUBLISHED / name) for name in files])


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls, and the last call's return value."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.parser(__doc__, "one repeat instead of --repeat (< 1 minute)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rows, repeat = args.rows, 1 if args.quick else args.repeat

    start = time.perf_counter()
    table = make_table(rows)
    generate = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        table.write_parquet(f"{tmp}/results.parquet")
        load_polars, loaded = best_time(lambda: analysis.load_results(tmp), repeat)
        strings = analysis.load_results(tmp, categorical=False)
        load_pandas, frame = best_time(lambda: pd.read_parquet(tmp), repeat)
    polars_all(loaded)  # warm-up
    all_functions, _ = best_time(lambda: polars_all(loaded), repeat)
    polars_subset, _ = best_time(lambda: polars_pair_ood(loaded), repeat)
    polars_strings, _ = best_time(lambda: polars_pair_ood(strings), repeat)
    pandas_subset, _ = best_time(lambda: pandas_pair_ood(frame), repeat)
    polars_ci_all(loaded)  # warm-up
    ci_all, _ = best_time(lambda: polars_ci_all(loaded), repeat)
    cpu_start = time.process_time()
    polars_ci_all(loaded)
    ci_cpu = time.process_time() - cpu_start
    ci_subset, _ = best_time(lambda: polars_ci_subset(loaded), repeat)
    pandas_ci_subset, _ = best_time(lambda: pandas_ci(frame), 1)
    published = published_table()
    findings_time, _ = best_time(lambda: analysis.findings(published), repeat)
    cpu_start = time.process_time()
    analysis.findings(published)
    findings_cpu = time.process_time() - cpu_start
    result = {
        "rows": table.height,
        "quick": args.quick,
        "repeat": repeat,
        "seconds_generate_table": round(generate, 3),
        "seconds_load_polars": round(load_polars, 4),
        "seconds_load_pandas": round(load_pandas, 4),
        "seconds_all_functions_1m_rows": round(all_functions * 1_000_000 / table.height, 4),
        "seconds_all_functions": round(all_functions, 4),
        "seconds_polars_pair_matrix_ood_spread": round(polars_subset, 4),
        "seconds_polars_pair_matrix_ood_spread_string_labels": round(polars_strings, 4),
        "seconds_pandas_pair_matrix_ood_spread": round(pandas_subset, 4),
        "speedup_vs_pandas": round(pandas_subset / polars_subset, 2),
        "speedup_vs_pandas_with_load": round(
            (load_pandas + pandas_subset) / (load_polars + polars_subset), 2
        ),
        "speedup_vs_pandas_string_labels": round(pandas_subset / polars_strings, 2),
        "seconds_ci_all_functions_1m_rows": round(ci_all * 1_000_000 / table.height, 3),
        "seconds_ci_all_functions": round(ci_all, 3),
        "cpu_seconds_ci_all_functions_1m_rows": round(ci_cpu * 1_000_000 / table.height, 3),
        "seconds_polars_ci_pair_ood_asymmetry": round(ci_subset, 3),
        "seconds_pandas_ci_pair_ood_asymmetry": round(pandas_ci_subset, 3),
        "ci_speedup_vs_pandas": round(pandas_ci_subset / ci_subset, 2),
        "seconds_findings_published_table": round(findings_time, 3),
        "cpu_seconds_findings_published_table": round(findings_cpu, 3),
        "polars_version": pl.__version__,
        "pandas_version": pd.__version__,
    }
    common.emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
