"""Imported (real) domains: networks against the blur-and-Otsu threshold, and calibration.

Every imported domain with masks that a study evaluates on gets threshold rows
(``phase: threshold``, :mod:`hrtem_ray.learning.threshold`), one per number of labelled
tiles. The functions here put the networks next to them, on the IoU of the same scored
tiles (the domain's held-out micrographs when it has a test split):

* :func:`labelled_tiles_curve`: per imported domain, method and number of labelled tiles
  of that domain, the best configuration's mean IoU over its replicates, with a
  percentile-bootstrap interval over those replicates (models);
* :func:`network_vs_threshold`: per imported domain, the best network against the
  threshold fitted on as many tiles, their difference with its interval, and a verdict;
* :func:`calibration`: per imported domain, the reliability diagram and the expected
  calibration error of the best network configuration (pooled over its replicates).

Methods (the ``method`` column): ``threshold``; ``transfer`` (pretrained on a simulated
domain, transferred on the domain's tiles); ``from scratch`` (trained on the domain's
tiles only: a pretrain model of the domain, or a mixture baseline with no source
image); ``mixture`` (a baseline mixing source images with the domain's tiles);
``simulated only`` (a pretrain model of another domain, evaluated on this one: no
labelled tile, 0). A configuration is everything but the seed; the best configuration of
a method and tile count is the one with the highest mean IoU on the scored tiles, so it is
chosen on the tiles it is scored on: an upper bound for the networks, which makes "the
network does not beat the threshold" a safe statement.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from hrtem_ray.analysis.tables import CONFIGURATION_COLUMNS

__all__ = [
    "CURVE_COLUMNS",
    "GOAL_MARGIN_IOU",
    "VERSUS_COLUMNS",
    "calibration",
    "imported_domains_scored",
    "labelled_tiles_curve",
    "method_of",
    "network_vs_threshold",
]

#: The margin of IoU over the threshold that the real-data goal asks of a network.
GOAL_MARGIN_IOU = 0.15
#: Columns of :func:`labelled_tiles_curve`.
CURVE_COLUMNS = (
    "eval_domain",
    "method",
    "n_tiles",
    "iou",
    "iou_ci_low",
    "iou_ci_high",
    "n_models",
    "configuration",
)
#: Columns of :func:`network_vs_threshold`.
VERSUS_COLUMNS = (
    "eval_domain",
    "eval_split",
    "network_method",
    "network_configuration",
    "n_tiles",
    "network_iou",
    "network_iou_ci_low",
    "network_iou_ci_high",
    "n_models",
    "threshold_iou",
    "threshold_n_tiles",
    "difference",
    "difference_ci_low",
    "difference_ci_high",
    "verdict",
    "sentence",
)


def imported_domains_scored(results: pl.DataFrame) -> list[str]:
    """The eval domains that have threshold rows (the imported domains with masks), sorted."""
    if "phase" not in results.columns or results.is_empty():
        return []
    rows = results.filter(pl.col("phase").cast(pl.String) == "threshold")
    return sorted(set(rows.get_column("eval_domain").cast(pl.String).to_list()))


def method_of() -> pl.Expr:
    """The ``method`` of each row on its ``eval_domain`` (see the module docstring)."""
    phase = pl.col("phase").cast(pl.String)
    target = pl.col("transfer_domain").cast(pl.String)
    source = pl.col("pretrain_domain").cast(pl.String)
    here = pl.col("eval_domain").cast(pl.String)
    return (
        pl.when(phase == "threshold")
        .then(pl.lit("threshold"))
        .when((phase == "transfer") & (target == here))
        .then(pl.lit("transfer"))
        .when((phase == "pretrain") & (source == here))
        .then(pl.lit("from scratch"))
        .when((phase == "baseline") & (target == here) & (pl.col("n_pretrain") == 0))
        .then(pl.lit("from scratch"))
        .when((phase == "baseline") & (target == here))
        .then(pl.lit("mixture"))
        .when(phase == "pretrain")
        .then(pl.lit("simulated only"))
        .otherwise(pl.lit(None, pl.String))
    )


def _tiles_of() -> pl.Expr:
    """Labelled tiles of the eval domain a row's model saw (0 for ``simulated only``)."""
    method = pl.col("method")
    return (
        pl.when(method.is_in(["threshold"]) | (pl.col("phase").cast(pl.String) == "pretrain"))
        .then(pl.when(method == "simulated only").then(0).otherwise(pl.col("n_pretrain")))
        .otherwise(pl.col("n_transfer"))
        .cast(pl.Int64)
    )


def _describe(row: dict) -> str:
    """A configuration in words, e.g. ``transfer from -10 (lr 0.001 -> 0.0001, freeze none)``."""
    phase = row.get("phase")
    if phase == "threshold":
        return "blur + Otsu threshold"
    if phase == "transfer":
        extra = f", augment {row['augment']}" if row.get("augment") else ""
        return (
            f"transfer from {row['pretrain_domain']} (lr {row['pretrain_lr']:g} -> "
            f"{row['transfer_lr']:g}, freeze {row['freeze']}{extra})"
        )
    if phase == "baseline" and not row["n_pretrain"]:
        return f"trained on the {row['n_transfer']} target tiles only (lr {row['pretrain_lr']:g})"
    if phase == "baseline":
        return (
            f"mixture {row['n_pretrain']} x {row['pretrain_domain']} + {row['n_transfer']} "
            f"target (lr {row['pretrain_lr']:g})"
        )
    return f"trained on {row['pretrain_domain']} (lr {row['pretrain_lr']:g})"


def _interval(values: np.ndarray, ci: float | None, n_boot: int, seed: int) -> tuple:
    """Percentile-bootstrap interval of the mean of ``values``; ``(None, None)`` for one value."""
    if ci is None or len(values) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    tail = (1 - ci) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def _configurations(results: pl.DataFrame, domains: list[str]) -> pl.DataFrame:
    """One row per (eval domain, configuration): its models' IoUs, method and tile count."""
    config = [c for c in CONFIGURATION_COLUMNS if c in results.columns]
    rows = (
        results.filter(pl.col("eval_domain").cast(pl.String).is_in(domains))
        .with_columns(
            pl.col(c).cast(pl.String)
            for c in ("phase", "pretrain_domain", "transfer_domain", "eval_domain", "freeze")
        )  # fmt: skip
        .with_columns(method=method_of())
        .filter(pl.col("method").is_not_null() & pl.col("iou").is_not_null())
        .with_columns(n_tiles=_tiles_of())
    )
    if "eval_split" not in rows.columns:
        rows = rows.with_columns(eval_split=pl.lit("val"))
    return (  # models in id order: the bootstrap of a list is the same in every run
        rows.unique(["model_id", "eval_domain"])
        .sort("eval_domain", pl.col("model_id").cast(pl.String))
        .group_by("eval_domain", "method", "n_tiles", *config, maintain_order=True)
        .agg(pl.col("iou"), pl.col("model_id").cast(pl.String), pl.col("eval_split").first())
        .with_columns(mean_iou=pl.col("iou").list.mean(), n_models=pl.col("iou").list.len())
    )


def labelled_tiles_curve(
    results: pl.DataFrame, ci: float | None = 0.95, n_boot: int = 1000, boot_seed: int = 0
) -> pl.DataFrame:
    """Per imported domain, method and labelled-tile count: the best configuration's IoU.

    Parameters
    ----------
    results
        A results table (docs/results_schema.md) with threshold rows.
    ci, n_boot, boot_seed
        Interval level (None: no interval), bootstrap replicates and seed.

    Returns
    -------
    polars.DataFrame
        Columns :data:`CURVE_COLUMNS`, sorted by domain, method and tiles; empty without
        threshold rows.
    """
    domains = imported_domains_scored(results)
    schema = {
        "eval_domain": pl.String, "method": pl.String, "n_tiles": pl.Int64,
        "iou": pl.Float64, "iou_ci_low": pl.Float64, "iou_ci_high": pl.Float64,
        "n_models": pl.Int64, "configuration": pl.String,
    }  # fmt: skip
    if not domains:
        return pl.DataFrame(schema=schema)
    configs = _configurations(results, domains).sort(
        "eval_domain", "method", "n_tiles", "mean_iou", descending=[False, False, False, True]
    )
    best = configs.unique(["eval_domain", "method", "n_tiles"], keep="first", maintain_order=True)
    out = []
    for k, row in enumerate(best.iter_rows(named=True)):
        low, high = _interval(np.asarray(row["iou"], float), ci, n_boot, boot_seed + k)
        out.append(
            {
                "eval_domain": row["eval_domain"],
                "method": row["method"],
                "n_tiles": row["n_tiles"],
                "iou": row["mean_iou"],
                "iou_ci_low": low,
                "iou_ci_high": high,
                "n_models": row["n_models"],
                "configuration": _describe(row),
            }
        )
    return pl.DataFrame(out, schema=schema).sort("eval_domain", "method", "n_tiles")


def _verdict(difference: float, low: float | None, high: float | None) -> str:
    """``beats``, ``does not beat`` or ``undecidable`` (an interval that straddles 0, or no
    interval: one model, or ``ci=None``)."""
    if low is None or high is None:
        return "undecidable"
    if low > 0:
        return "beats"
    if high <= 0:
        return "does not beat"
    return "undecidable"


def network_vs_threshold(
    results: pl.DataFrame, ci: float | None = 0.95, n_boot: int = 1000, boot_seed: int = 0
) -> pl.DataFrame:
    """Per imported domain: the best network against the threshold, with intervals.

    The best network is the network configuration (any method but ``threshold``) with the
    highest mean IoU on the domain's scored tiles; the threshold is the one fitted on as
    many labelled tiles as that network saw of the domain (the most tiles fitted when
    none matches, e.g. for ``simulated only``). ``difference`` = network - threshold; its
    interval is the network's (the threshold is deterministic; under
    ``training.target_images: random`` there is one per seed's draw of tiles, and this is
    their mean). ``verdict``: ``beats``
    (interval above 0), ``does not beat`` (at or below 0), ``undecidable`` (straddles 0);
    without an interval (one model, or ``ci=None``) it is ``undecidable`` and the sentence
    says so. The sentence states it plainly, with the goal margin
    (:data:`GOAL_MARGIN_IOU`).

    Returns
    -------
    polars.DataFrame
        Columns :data:`VERSUS_COLUMNS`, one row per imported domain.
    """
    domains = imported_domains_scored(results)
    if not domains:
        return pl.DataFrame(schema={c: pl.String for c in VERSUS_COLUMNS})
    configs = _configurations(results, domains)
    out = []
    for k, domain in enumerate(domains):
        here = configs.filter(pl.col("eval_domain") == domain)
        nets = here.filter(pl.col("method") != "threshold").sort("mean_iou", descending=True)
        thresholds = here.filter(pl.col("method") == "threshold").sort("n_tiles")
        if nets.is_empty() or thresholds.is_empty():
            continue
        net = nets.row(0, named=True)
        same = thresholds.filter(pl.col("n_tiles") == net["n_tiles"])
        threshold = (same if not same.is_empty() else thresholds).row(-1, named=True)
        low, high = _interval(np.asarray(net["iou"], float), ci, n_boot, boot_seed + k)
        base = float(threshold["mean_iou"])
        difference = float(net["mean_iou"]) - base
        d_low = None if low is None else low - base
        d_high = None if high is None else high - base
        verdict = _verdict(difference, d_low, d_high)
        out.append(
            {
                "eval_domain": domain,
                "eval_split": net["eval_split"],
                "network_method": net["method"],
                "network_configuration": _describe(net),
                "n_tiles": net["n_tiles"],
                "network_iou": float(net["mean_iou"]),
                "network_iou_ci_low": low,
                "network_iou_ci_high": high,
                "n_models": net["n_models"],
                "threshold_iou": base,
                "threshold_n_tiles": threshold["n_tiles"],
                "difference": difference,
                "difference_ci_low": d_low,
                "difference_ci_high": d_high,
                "verdict": verdict,
                "sentence": _sentence(domain, net, threshold, difference, d_low, d_high, verdict),
            }
        )
    return pl.DataFrame(out)


def _sentence(domain, net, threshold, difference, low, high, verdict) -> str:
    """One plain sentence on the comparison of a domain (see :func:`network_vs_threshold`)."""
    interval = "" if low is None else f" [{low:+.3f}, {high:+.3f}]"
    replicates = (
        f"{net['n_models']} replicates"
        if net["n_models"] > 1
        else "one model: no interval, so no verdict"
    )
    head = (
        f"On {domain} ({net['eval_split']} tiles), the best network ({net['method']}, "
        f"{net['n_tiles']} labelled tiles, {replicates}) reaches IoU {net['mean_iou']:.3f}, "
        f"the blur + Otsu threshold ({threshold['n_tiles']} tiles) {threshold['mean_iou']:.3f}: "
        f"difference {difference:+.3f}{interval}. "
    )
    if verdict == "beats":
        goal = (
            f"It beats the threshold by at least the goal's {GOAL_MARGIN_IOU} IoU."
            if (low if low is not None else difference) >= GOAL_MARGIN_IOU
            else f"It beats the threshold, but by less than the goal's {GOAL_MARGIN_IOU} IoU."
        )
        return head + goal
    if verdict == "undecidable" and low is None:
        return head + "Undecidable without replicates (seeds) of the best configuration."
    if verdict == "undecidable":
        return head + "The network does not clearly beat the threshold (the interval spans 0)."
    return head + "The network does not beat the threshold."


def calibration(results: pl.DataFrame) -> pl.DataFrame:
    """Reliability diagrams and ECE of the best network configuration per imported domain.

    Uses the reliability columns of the rows (``reliability_pixels``,
    ``reliability_confidence``, ``reliability_frequency``: per bin of predicted particle
    probability, the pixels, their mean probability and the share that are particles;
    see docs/results_schema.md), pooled over the configuration's replicates by pixel
    count. ``ece`` is the expected calibration error of the pooled bins: the
    pixel-weighted mean of ``|frequency - confidence|``.

    Returns
    -------
    polars.DataFrame
        Columns ``eval_domain``, ``configuration``, ``n_models``, ``bin``, ``pixels``,
        ``confidence``, ``frequency``, ``ece``; empty without imported domains or
        reliability columns.
    """
    empty = pl.DataFrame(
        schema={
            "eval_domain": pl.String, "configuration": pl.String, "n_models": pl.Int64,
            "bin": pl.Int64, "pixels": pl.Int64, "confidence": pl.Float64,
            "frequency": pl.Float64, "ece": pl.Float64,
        }
    )  # fmt: skip
    needed = ("reliability_pixels", "reliability_confidence", "reliability_frequency")
    domains = imported_domains_scored(results)
    if not domains or any(c not in results.columns for c in needed):
        return empty
    versus = network_vs_threshold(results, ci=None)
    frames = []
    for row in versus.iter_rows(named=True):
        configs = _configurations(results, [row["eval_domain"]])
        best = configs.filter(pl.col("method") != "threshold").sort("mean_iou", descending=True)
        models = results.filter(
            (pl.col("eval_domain").cast(pl.String) == row["eval_domain"])
            & pl.col("model_id").cast(pl.String).is_in(best.row(0, named=True)["model_id"])
            & pl.col("reliability_pixels").is_not_null()
        )
        if models.is_empty():
            continue
        pixels = np.array(models.get_column("reliability_pixels").to_list(), float)
        conf = np.nan_to_num(np.array(models.get_column("reliability_confidence").to_list(), float))
        freq = np.nan_to_num(np.array(models.get_column("reliability_frequency").to_list(), float))
        total = pixels.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            confidence = np.where(total > 0, (pixels * conf).sum(0) / total, np.nan)
            frequency = np.where(total > 0, (pixels * freq).sum(0) / total, np.nan)
        ece = float(np.nansum(total * np.abs(frequency - confidence)) / total.sum())
        frames.append(
            pl.DataFrame(
                {
                    "eval_domain": row["eval_domain"],
                    "configuration": row["network_configuration"],
                    "n_models": models.height,
                    "bin": np.arange(len(total)),
                    "pixels": total.astype(np.int64),
                    "confidence": confidence,
                    "frequency": frequency,
                    "ece": ece,
                }
            ).cast(empty.schema)
        )
    return pl.concat(frames) if frames else empty
