"""Replicate means of configurations and their stratified bootstrap (used by the findings).

A *configuration* is everything that defines a model but its seed; its *replicates* are
its models. :func:`group_means` gives each configuration's mean over its replicates and
bootstrap replicates of that mean, drawn with replacement within the configuration at
its own size (stratified). :func:`config_means` does so for the loss of every model on a
set of eval domains, :class:`ConfigMeans` holds the result and selects from it.

With ``unbiased=True`` each configuration's replicates are first spread about their mean
by ``sqrt(n / (n - 1))`` (``n`` its replicates): the bootstrap variance of the mean is
then ``s^2 / n`` with the unbiased sample variance ``s^2``, where the plain bootstrap gives
``(n - 1) / n`` of it (half for two replicates). The point estimates do not change. The
sequential rule of adaptive studies (:mod:`hrtem_ray.analysis.sequential`) resamples this
way; :func:`hrtem_ray.analysis.findings` resamples plainly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

__all__ = [
    "ConfigMeans",
    "config_means",
    "group_means",
    "on_target",
    "percentile_interval",
    "resample_counts",
    "wide_losses",
]


def resample_counts(n_groups: int, size: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each replicate is drawn: shape ``(n_groups, n_boot, size)``, rows sum to ``size``."""
    draws = rng.integers(0, size, (n_groups, n_boot, size))
    draws += (np.arange(n_groups * n_boot) * size).reshape(n_groups, n_boot, 1)
    counts = np.bincount(draws.ravel(), minlength=n_groups * n_boot * size)
    return counts.reshape(n_groups, n_boot, size).astype(np.float64)


def group_means(
    values: np.ndarray,
    groups: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    unbiased: bool = False,
) -> np.ndarray:
    """Mean of each group's replicates, and its stratified bootstrap replicates.

    Parameters
    ----------
    values
        ``(n_models, k)`` values, sorted by ``groups``.
    groups
        ``(n_models,)`` group (configuration) codes.
    n_boot
        Bootstrap replicates (0: the point estimate only).
    rng
        Random generator.
    unbiased
        Spread each group's values about their mean by ``sqrt(n / (n - 1))`` before
        resampling (module docstring): the bootstrap variance of a group mean is then
        ``s^2 / n``. Row 0 is unchanged.

    Returns
    -------
    numpy.ndarray
        ``(n_boot + 1, n_groups, k)``: row 0 the plain means, rows 1.. the means of
        resamples drawn with replacement within each group at its own size; groups in
        sorted order of their codes.

    Examples
    --------
    >>> values = np.array([[1.0], [3.0]])
    >>> draws = group_means(values, np.array([0, 0]), 4000, np.random.default_rng(0), True)
    >>> float(draws[0, 0, 0]), round(float(draws[1:, 0, 0].var()), 1)  # s^2 / n = 2 / 2
    (2.0, 1.0)
    """
    _, starts, sizes = np.unique(groups, return_index=True, return_counts=True)
    out = np.empty((n_boot + 1, len(sizes), values.shape[1]))
    for size in np.unique(sizes):
        sel = np.flatnonzero(sizes == size)
        block = values[starts[sel, None] + np.arange(size)]  # (groups, size, k)
        out[0, sel] = block.mean(axis=1)
        if unbiased and size > 1:
            mean = out[0, sel][:, None, :]
            block = mean + (block - mean) * np.sqrt(size / (size - 1))
        if n_boot:
            counts = resample_counts(len(sel), int(size), n_boot, rng)  # (groups, boot, size)
            out[1:, sel] = np.matmul(counts, block).transpose(1, 0, 2) / size
    return out


@dataclass(frozen=True)
class ConfigMeans:
    """Replicate means of a set of configurations on some keys (eval domains).

    ``configs``: one row per configuration, with its code (``config``), ``index``
    (position in ``values``) and the configuration labels when given;
    ``values``: ``(n_boot + 1, n_configs, len(keys))``, replicate 0 the point estimate.
    """

    configs: pl.DataFrame
    values: np.ndarray
    keys: tuple[str, ...]

    def select(
        self, where: pl.Expr, keys: Sequence[str] | None = None
    ) -> tuple[np.ndarray, set[int]]:
        """``(n_boot + 1, n_selected, len(keys))`` means of the configurations ``where`` holds."""
        chosen = self.configs.filter(where)
        columns = [self.keys.index(k) for k in (keys or self.keys)]
        values = self.values[:, chosen.get_column("index").to_numpy()][:, :, columns]
        return values, set(chosen.get_column("config").to_list())

    def median(self, where: pl.Expr, key: str) -> tuple[np.ndarray | None, set[int]]:
        """``(n_boot + 1,)`` median over the selected configurations on ``key``, or None."""
        if key not in self.keys:
            return None, set()
        values, configs = self.select(where, [key])
        return (np.median(values[:, :, 0], axis=1) if configs else None), configs


def wide_losses(
    frame: pl.DataFrame, keys: Sequence[str], labels: Sequence[str] = ()
) -> pl.DataFrame | None:
    """One row per model (sorted by ``config``, ``model_id``), its ``loss`` on each of ``keys``.

    Models without a row on one of ``keys`` are left out; None without models.
    """
    if not frame.height:
        return None
    wide = frame.filter(pl.col("eval_domain").is_in(list(keys))).pivot(
        on="eval_domain", index=["config", "model_id", *labels], values="loss"
    )
    if not wide.height or any(k not in wide.columns for k in keys):
        return None
    wide = wide.drop_nulls(list(keys)).sort("config", "model_id")
    return wide if wide.height else None


def config_means(
    frame: pl.DataFrame,
    keys: Sequence[str],
    n_boot: int,
    rng: np.random.Generator,
    info: pl.DataFrame | None = None,
    unbiased: bool = False,
) -> ConfigMeans | None:
    """Replicate means of ``loss`` per ``config`` on each eval domain in ``keys`` (None: no models).

    ``unbiased``: resample as :func:`group_means` does with it.
    """
    wide = wide_losses(frame, keys)
    if wide is None:
        return None
    groups = wide.get_column("config").to_numpy()
    values = group_means(
        wide.select(list(keys)).to_numpy().astype(np.float64), groups, n_boot, rng, unbiased
    )
    configs = pl.DataFrame({"config": np.unique(groups)}).with_row_index("index")
    if info is not None:
        configs = configs.join(info, on="config", how="left")
    return ConfigMeans(configs, values, tuple(keys))


def on_target(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows on the model's own target (transfer / mixture) domain, as eval domain ``target``."""
    target = frame.filter(pl.col("eval_domain") == pl.col("transfer_domain"))
    return target.with_columns(eval_domain=pl.lit("target"))


def percentile_interval(
    stat: np.ndarray, ci: float | None
) -> tuple[float | None, float | None, float | None]:
    """Point estimate (replicate 0) and percentile interval of the bootstrap replicates."""
    estimate = float(stat[0]) if np.isfinite(stat[0]) else None
    reps = stat[1:][np.isfinite(stat[1:])]
    if ci is None or reps.size < 2:
        return estimate, None, None
    low, high = np.quantile(reps, [(1 - ci) / 2, (1 + ci) / 2])
    return estimate, float(low), float(high)
