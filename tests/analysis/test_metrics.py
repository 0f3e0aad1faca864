"""Tests of the metrics of hrtem_ray.analysis, through the public functions that evaluate them.

The table is the small hand-made one of conftest.py (its docstring lists the models
and their losses); the expected numbers are worked out by hand in the comments next
to each assertion.
"""

from __future__ import annotations

import itertools

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from hrtem_ray import analysis as an


def _column(frame: pl.DataFrame, name: str) -> list:
    return frame.get_column(name).to_list()


def _lookup(frame: pl.DataFrame, a: str, b: str, column: str):
    row = frame.filter((pl.col("pretrain_domain") == a) & (pl.col("target_domain") == b))
    assert row.height == 1, (a, b, row)
    return row.item(0, column)


# ----------------------------------------------------------------------------- pair_matrix
def test_pair_matrix_pretrain_median(table):
    m = an.pair_matrix(table, "pretrain")
    assert list(m.columns) == list(an.PAIR_COLUMNS)
    # numeric order of both domain columns ("10" after "5", not alphabetical)
    assert _column(m, "pretrain_domain") == ["0"] * 3 + ["5"] * 3 + ["10"] * 3
    assert _column(m, "target_domain") == ["0", "5", "10"] * 3
    # domain 0: medians of (0.30, 0.40, 2.00), (0.50, 0.70, 2.00), (0.90, 1.10, 2.00)
    # domain 5: medians of two models = their means
    expected = [0.40, 0.70, 1.10, 0.90, 0.25, 0.70, 1.20, 0.60, 0.10]
    assert _column(m, "loss") == pytest.approx(expected)
    assert _column(m, "n_models") == [3] * 3 + [2] * 3 + [1] * 3
    assert all(_column(m, "from_pretrain"))


@pytest.mark.parametrize(
    ("reduce", "expected"),
    [
        ("mean", [2.70 / 3, 3.20 / 3, 4.00 / 3]),  # (0.3+0.4+2)/3, (0.5+0.7+2)/3, (0.9+1.1+2)/3
        ("min", [0.30, 0.50, 0.90]),
        ("max", [2.00, 2.00, 2.00]),
        ("median", [0.40, 0.70, 1.10]),
    ],
)
def test_pair_matrix_reduce_modes(table, reduce, expected):
    m = an.pair_matrix(table, "pretrain", reduce=reduce).filter(pl.col("pretrain_domain") == "0")
    assert _column(m, "loss") == pytest.approx(expected)


def test_pair_matrix_pretrain_filters(table):
    # pretrain_lr 1e-3 drops P0c: domain 0 becomes the mean of P0a and P0b
    m = an.pair_matrix(table, "pretrain", pretrain_lr=1e-3).filter(pl.col("pretrain_domain") == "0")
    assert _column(m, "loss") == pytest.approx([0.35, 0.60, 1.00])
    # seed 1 keeps P0b and P5b only
    m = an.pair_matrix(table, "pretrain", seed=[1])
    assert _column(m, "pretrain_domain") == ["0"] * 3 + ["5"] * 3
    assert _column(m, "loss") == pytest.approx([0.40, 0.70, 1.10, 1.00, 0.30, 0.80])


def test_pair_matrix_transfer_with_pretrain_fallback(table):
    m = an.pair_matrix(table, "transfer")
    assert _column(m, "target_domain") == ["0", "5", "10"] * 3
    # transfer a -> b evaluated on b; everything else falls back to P(a, b)
    expected = {
        ("0", "0"): (0.40, 3, True),  # P(0,0): median(0.30, 0.40, 2.00)
        ("0", "5"): (0.20, 2, False),  # median(T05a 0.15, T05b 0.25)
        ("0", "10"): (0.30, 1, False),  # T010 on 10
        ("5", "0"): (0.32, 1, False),  # T50 on 0
        ("5", "5"): (0.25, 2, True),  # P(5,5)
        ("5", "10"): (0.70, 2, True),  # P(5,10): no transfer 5 -> 10
        ("10", "0"): (1.20, 1, True),
        ("10", "5"): (0.60, 1, True),
        ("10", "10"): (0.10, 1, True),
    }
    for (a, b), (loss, n, fallback) in expected.items():
        assert _lookup(m, a, b, "loss") == pytest.approx(loss)
        assert _lookup(m, a, b, "n_models") == n
        assert _lookup(m, a, b, "from_pretrain") is fallback


def test_pair_matrix_transfer_filters_only_restrict_transfer_models(table):
    m = an.pair_matrix(table, "transfer", freeze="encoder")
    assert _lookup(m, "0", "5", "loss") == pytest.approx(0.25)  # T05b only
    assert _lookup(m, "5", "0", "loss") == pytest.approx(0.90)  # fallback P(5,0) = (0.8+1.0)/2
    assert _lookup(m, "5", "0", "from_pretrain") is True
    assert _lookup(m, "0", "10", "loss") == pytest.approx(1.10)  # fallback P(0,10)
    m = an.pair_matrix(table, "transfer", n_transfer=64, transfer_lr=[1e-4])
    assert _lookup(m, "0", "5", "loss") == pytest.approx(0.15)  # T05a only
    m = an.pair_matrix(table, "transfer", reduce="max")
    assert _lookup(m, "0", "5", "loss") == pytest.approx(0.25)
    assert _lookup(m, "0", "0", "loss") == pytest.approx(2.00)  # fallback max of P0*


# ----------------------------------------------------------------------------- ood_spread
def test_ood_spread_excludes_in_focus_and_uses_ddof_0(table):
    o = an.ood_spread(table)
    assert list(o.columns) == list(an.OOD_COLUMNS)
    # eval domains 5 and 10 only; population std of two values is |x - y| / 2
    std_pre = {"0": (1.10 - 0.70) / 2, "5": (0.70 - 0.25) / 2, "10": (0.60 - 0.10) / 2}
    std_tr = {
        ("0", "5"): (0.70 - 0.20) / 2,  # medians on 5: 0.20, on 10: median(0.5, 0.9) = 0.7
        ("0", "10"): (0.90 - 0.30) / 2,  # T010: 0.90 on 5, 0.30 on 10
        ("5", "0"): (0.80 - 0.40) / 2,  # T50: 0.40 on 5, 0.80 on 10
    }
    assert o.height == 9
    for a, b in itertools.product(("0", "5", "10"), repeat=2):
        assert _lookup(o, a, b, "std_pretrain") == pytest.approx(std_pre[a])
        # without transfer models (the diagonal, 5 -> 10, 10 -> *) std_transfer = std_pretrain
        expected = std_tr.get((a, b), std_pre[a])
        assert _lookup(o, a, b, "std_transfer") == pytest.approx(expected)
        assert _lookup(o, a, b, "shift") == pytest.approx(expected - std_pre[a])
    assert _lookup(o, "0", "10", "shift") == pytest.approx(0.30 - 0.20)
    assert _lookup(o, "5", "0", "shift") == pytest.approx(0.20 - 0.225)


def test_ood_spread_without_exclusion_and_filters(table):
    o = an.ood_spread(table, exclude_eval_domains=(), reduce="min", pretrain_lr=1e-3)
    # domain 5, all three eval domains, min over P5a/P5b: 0.8, 0.2, 0.6
    mean = (0.8 + 0.2 + 0.6) / 3
    pstd = (((0.8 - mean) ** 2 + (0.2 - mean) ** 2 + (0.6 - mean) ** 2) / 3) ** 0.5
    assert _lookup(o, "5", "5", "std_pretrain") == pytest.approx(pstd)
    # T50 on 0 / 5 / 10: 0.32, 0.40, 0.80
    mean = (0.32 + 0.40 + 0.80) / 3
    pstd_t = (((0.32 - mean) ** 2 + (0.40 - mean) ** 2 + (0.80 - mean) ** 2) / 3) ** 0.5
    assert _lookup(o, "5", "0", "std_transfer") == pytest.approx(pstd_t)
    assert _lookup(o, "5", "0", "shift") == pytest.approx(pstd_t - pstd)


# ----------------------------------------------------------------------------- asymmetry
def test_transfer_asymmetry(table):
    t = an.transfer_asymmetry(table)
    assert list(t.columns) == list(an.ASYMMETRY_COLUMNS)
    # pretraining domains 0, 5, 10; gap_ab = T(a, b) - P(b, b)
    gap = {
        ("0", "5"): 0.20 - 0.25,
        ("5", "0"): 0.32 - 0.40,
        ("0", "10"): 0.30 - 0.10,
        ("10", "0"): 1.20 - 0.40,  # T(10, 0) falls back to P(10, 0)
        ("5", "10"): 0.70 - 0.10,  # T(5, 10) falls back to P(5, 10)
        ("10", "5"): 0.60 - 0.25,
    }
    assert t.height == 6
    assert _column(t, "pretrain_domain") == ["0", "0", "5", "5", "10", "10"]
    for (a, b), g in gap.items():
        assert _lookup(t, a, b, "gap_ab") == pytest.approx(g)
        assert _lookup(t, a, b, "gap_ba") == pytest.approx(gap[(b, a)])
        assert _lookup(t, a, b, "asymmetry") == pytest.approx(g - gap[(b, a)])
    assert _lookup(t, "0", "5", "asymmetry") == pytest.approx(0.03)
    assert _lookup(t, "0", "10", "asymmetry") == pytest.approx(-0.60)


def test_asymmetry_summary(table):
    s = an.asymmetry_summary(table, "0")
    assert list(s.columns) == list(an.SUMMARY_COLUMNS)
    assert s.height == 1
    assert s.item(0, "domain") == "0"
    assert s.item(0, "transfer_asymmetry") == pytest.approx((0.03 - 0.60) / 2)
    assert s.item(0, "ood_from_domain") == pytest.approx((0.70 + 1.10) / 2)  # P(0,5), P(0,10)
    assert s.item(0, "ood_to_domain") == pytest.approx((0.90 + 1.20) / 2)  # P(5,0), P(10,0)
    empty = an.asymmetry_summary(table, "25")
    assert empty.height == 0 and list(empty.columns) == list(an.SUMMARY_COLUMNS)


# ----------------------------------------------------------------------------- baselines
def test_baseline_comparison(table):
    c = an.baseline_comparison(table, "0", "5")
    assert list(c.columns) == list(an.BASELINE_COLUMNS)
    rows = {(r["method"], r["n_target_images"]): r for r in c.iter_rows(named=True)}
    expected = {
        # pure source: pretrain models of 0, mean over P0a/b/c on 5 and on 0
        ("mixture", 0): (3.20 / 3, 2.70 / 3, 3),
        ("mixture", 128): (0.22, 0.33, 1),  # B1: 128 target images
        ("mixture", 256): (0.21, 0.36, 1),  # B2 stored the other way round: n_pretrain of 5
        ("mixture", 512): (0.25, 0.90, 2),  # pure target: pretrain models of 5
        ("transfer", 64): (0.15, 0.50, 1),
        ("transfer", 128): (0.25, 0.60, 1),
    }
    assert list(rows) == list(expected)
    for key, (on_target, on_source, n) in expected.items():
        assert rows[key]["loss_on_target"] == pytest.approx(on_target)
        assert rows[key]["loss_on_source"] == pytest.approx(on_source)
        assert rows[key]["n_models"] == n


def test_baseline_comparison_filters_and_reduce(table):
    c = an.baseline_comparison(table, "0", "5", reduce="median", pretrain_lr=1e-3)
    pure = c.filter(pl.col("n_target_images") == 0)
    assert pure.item(0, "loss_on_target") == pytest.approx(0.60)  # median(0.5, 0.7)
    c = an.baseline_comparison(table, "0", "5", freeze="encoder")
    assert c.filter(pl.col("method") == "transfer").get_column("n_target_images").to_list() == [128]


# ----------------------------------------------------------------------------- hyperparameters
def test_hyperparameter_effects_quantiles(table):
    h = an.hyperparameter_effects(table, "n_transfer")
    assert list(h.columns) == ["n_transfer", *an.HYPER_STATS]
    # target 0 excluded: n=64 -> T05a 0.15, T010 0.30; n=128 -> T05b 0.25
    assert _column(h, "n_transfer") == [64, 128]
    assert _column(h, "count") == [2, 1]
    lo, hi = 0.15, 0.30
    for name, q in zip(("q05", "q25", "q50", "q75", "q95"), an.QUANTILES, strict=True):
        assert h.item(0, name) == pytest.approx(lo + q * (hi - lo))  # linear interpolation
        assert h.item(1, name) == pytest.approx(0.25)
    assert _column(h, "mean") == pytest.approx([0.225, 0.25])


def test_hyperparameter_effects_grouping_and_exclusion(table):
    h = an.hyperparameter_effects(table, "freeze", exclude_target_domains=())
    assert _column(h, "freeze") == ["encoder", "none"]
    assert _column(h, "count") == [1, 3]  # none: T05a, T50, T010
    assert h.item(1, "mean") == pytest.approx((0.15 + 0.32 + 0.30) / 3)
    h = an.hyperparameter_effects(table, ("pretrain_lr", "transfer_lr"))
    assert h.select("pretrain_lr", "transfer_lr", "count").rows() == [(1e-3, 1e-4, 3)]
    h = an.hyperparameter_effects(table, "n_transfer", freeze=["encoder"])
    assert _column(h, "n_transfer") == [128]


# ----------------------------------------------------------------------------- inputs


def test_bad_arguments(table):
    with pytest.raises(ValueError, match="reduce"):
        an.pair_matrix(table, "pretrain", reduce="mode")
    with pytest.raises(ValueError, match="phase"):
        an.pair_matrix(table, "baseline")
    with pytest.raises(TypeError, match="lr"):
        an.pair_matrix(table, "pretrain", lr=1e-3)


def test_empty_selections_give_empty_frames(table):
    cases = [
        (an.pair_matrix(table, "pretrain", pretrain_lr=0.5), an.PAIR_COLUMNS),
        (an.pair_matrix(table, "transfer", seed=7), an.PAIR_COLUMNS),
        (an.ood_spread(table, seed=7), an.OOD_COLUMNS),
        (an.transfer_asymmetry(table, seed=7), an.ASYMMETRY_COLUMNS),
        (an.asymmetry_summary(table, "0", seed=7), an.SUMMARY_COLUMNS),
        (an.baseline_comparison(table, "5", "10"), an.BASELINE_COLUMNS),
        (an.hyperparameter_effects(table, "freeze", freeze="decoder"), ("freeze", *an.HYPER_STATS)),
    ]
    for frame, columns in cases:
        assert frame.height == 0
        assert list(frame.columns) == list(columns)
    assert an.pair_matrix(table.clear(), "transfer").height == 0


# ----------------------------------------------------------------------------- G_OOD
def _gap(frame: pl.DataFrame, x: str, x_prime: str, column: str = "gap"):
    row = frame.filter((pl.col("train_domain") == x) & (pl.col("eval_domain") == x_prime))
    assert row.height == 1, (x, x_prime, row)
    return row.item(0, column)


def test_generalization_gap_of_pretrain_models(table):
    g = an.generalization_gap(table, "pretrain")
    assert list(g.columns) == list(an.GAP_COLUMNS)
    # per model, L_X' - L_X with X the pretraining domain; no row for X' == X
    assert g.filter(pl.col("train_domain") == pl.col("eval_domain")).height == 0
    # X = 0: P0a 0.2 / 0.6, P0b 0.3 / 0.7, P0c 0 / 0 -> medians 0.2, 0.6 of 3 models
    assert _gap(g, "0", "5") == pytest.approx(0.2)
    assert _gap(g, "0", "10") == pytest.approx(0.6)
    assert _gap(g, "0", "5", "n_models") == 3
    # X = 5: P5a 0.6 / 0.4, P5b 0.7 / 0.5 -> 0.65, 0.45; X = 10: P10 alone, 1.1 and 0.5
    assert _gap(g, "5", "0") == pytest.approx(0.65)
    assert _gap(g, "5", "10") == pytest.approx(0.45)
    assert (_gap(g, "10", "0"), _gap(g, "10", "5")) == pytest.approx((1.1, 0.5))
    assert _column(g, "train_domain") == ["0", "0", "5", "5", "10", "10"]  # domain order
    # a median of per-model gaps, not a gap of medians: P(0, 5) - P(0, 0) = 0.5 - 0.3
    mean = an.generalization_gap(table, "pretrain", reduce="mean")
    assert _gap(mean, "0", "5") == pytest.approx((0.2 + 0.3 + 0.0) / 3)
    # filters apply before reducing: without P0c (lr 1e-4), X = 0 has 0.2, 0.3 -> 0.25
    assert _gap(an.generalization_gap(table, "pretrain", pretrain_lr=1e-3), "0", "5") == (
        pytest.approx(0.25)
    )


def test_generalization_gap_of_transfer_models_uses_their_transfer_domain(table):
    g = an.generalization_gap(table, "transfer")
    # X is the transfer domain: T05a (own 0.15) 0.35 / 0.35, T05b (own 0.25) 0.35 / 0.65
    assert _gap(g, "5", "0") == pytest.approx(0.35)
    assert _gap(g, "5", "10") == pytest.approx((0.35 + 0.65) / 2)
    assert _gap(g, "5", "10", "n_models") == 2
    # T50 (X = 0, own 0.32) and T010 (X = 10, own 0.30)
    assert (_gap(g, "0", "5"), _gap(g, "0", "10")) == pytest.approx((0.08, 0.48))
    assert (_gap(g, "10", "0"), _gap(g, "10", "5")) == pytest.approx((0.30, 0.60))
    # transfer filters: freeze none keeps T05a only
    assert _gap(an.generalization_gap(table, "transfer", freeze="none"), "5", "10") == (
        pytest.approx(0.35)
    )
    # a model without a row on its own domain has no gap
    no_home = table.filter(~((pl.col("model_id") == "T010") & (pl.col("eval_domain") == "10")))
    assert "10" not in _column(an.generalization_gap(no_home, "transfer"), "train_domain")


def test_generalization_gap_errors_and_empty_selection(table):
    with pytest.raises(ValueError, match="phase"):
        an.generalization_gap(table, "baseline")
    with pytest.raises(ValueError, match="reduce"):
        an.generalization_gap(table, "pretrain", reduce="mode")
    with pytest.raises(ValueError, match="model_id"):
        an.generalization_gap(table.drop("model_id"), "pretrain")
    with pytest.raises(TypeError, match="lr"):
        an.generalization_gap(table, "pretrain", lr=1e-3)
    empty = an.generalization_gap(table, "transfer", seed=7)
    assert empty.height == 0 and list(empty.columns) == list(an.GAP_COLUMNS)
    encoded = an.generalization_gap(an.encode_labels(table).lazy(), "transfer")
    assert_frame_equal(encoded, an.generalization_gap(table, "transfer"))


# ----------------------------------------------------------------------------- training time
SECONDS = {"T05a": 20.0, "T50": 30.0, "T010": 40.0, "T05b": 16.0, "T05c": 24.0}


def _timed(table: pl.DataFrame, model_rows) -> pl.DataFrame:
    """The table plus T05c (0 -> 5, 64 images, encoder frozen), with per-model train_seconds."""
    extra = pl.DataFrame(
        model_rows(
            "T05c", "transfer", "0", "5", (0.5, 0.2, 0.6), tlr=1e-4, n_tr=64, freeze="encoder"
        )
    )
    timed = pl.concat([table, extra])
    seconds = pl.col("model_id").replace_strict(SECONDS, default=pl.col("train_seconds"))
    return timed.with_columns(train_seconds=seconds)


def _time(frame: pl.DataFrame, phase: str, freeze: str, n: int, column: str):
    row = frame.filter(
        (pl.col("phase") == phase) & (pl.col("freeze") == freeze) & (pl.col("n_train_images") == n)
    )
    assert row.height == 1, (phase, freeze, n, row)
    return row.item(0, column)


def test_training_time_per_epoch_and_saving(table, model_rows):
    t = an.training_time(_timed(table, model_rows))
    assert list(t.columns) == list(an.TIME_COLUMNS)
    # one value per model (not per eval row); every stage ran 10 epochs
    # transfer, 64 images, unfrozen: T05a 2.0, T50 3.0, T010 4.0 s/epoch -> median 3.0
    assert _time(t, "transfer", "none", 64, "seconds_per_epoch") == pytest.approx(3.0)
    assert _time(t, "transfer", "none", 64, "n_models") == 3
    # encoder frozen, 64 images: T05c 2.4 -> saving 1 - 2.4 / 3.0 = 0.2
    assert _time(t, "transfer", "encoder", 64, "seconds_per_epoch") == pytest.approx(2.4)
    assert _time(t, "transfer", "encoder", 64, "saving") == pytest.approx(0.2)
    # 128 images: T05b only, no unfrozen model of that size to compare with
    assert _time(t, "transfer", "encoder", 128, "saving") is None
    # pretrain: 6 models of 512 images, 1 s / 10 epochs; baselines: 384 + 128 and 256 + 256
    assert _time(t, "pretrain", "none", 512, "seconds_per_epoch") == pytest.approx(0.1)
    assert _time(t, "pretrain", "none", 512, "n_models") == 6
    assert _time(t, "baseline", "none", 512, "n_models") == 2
    assert _time(t, "pretrain", "none", 512, "saving") == 0.0
    # mean and filters
    mean = an.training_time(_timed(table, model_rows), reduce="mean", freeze="none")
    assert _time(mean, "transfer", "none", 64, "seconds_per_epoch") == pytest.approx(3.0)
    assert mean.filter(pl.col("freeze") == "encoder").height == 0


def test_training_time_prefers_the_median_epoch_where_recorded(table, model_rows):
    """``epoch_seconds`` (the median epoch) where a row has it, ``train_seconds / epochs``
    where not; findings 5c reads the same."""
    timed = _timed(table, model_rows)
    recorded = timed.with_columns(
        epoch_seconds=pl.when(pl.col("model_id") == "T05c").then(1.5).otherwise(None)
    )
    t = an.training_time(recorded)
    # T05c: 1.5 s recorded (2.4 from train_seconds / epochs) -> saving 1 - 1.5 / 3.0
    assert _time(t, "transfer", "encoder", 64, "seconds_per_epoch") == pytest.approx(1.5)
    assert _time(t, "transfer", "encoder", 64, "saving") == pytest.approx(0.5)
    assert _time(t, "transfer", "none", 64, "seconds_per_epoch") == pytest.approx(3.0)


def test_training_time_prefers_cpu_seconds_where_recorded(table, model_rows):
    """On a CPU the process CPU time per epoch (``epoch_cpu_seconds``) comes before the
    wall time: a model that waited for a busy core is not counted as slower."""
    timed = _timed(table, model_rows).with_columns(epoch_seconds=pl.lit(9.0))
    recorded = timed.with_columns(
        epoch_cpu_seconds=pl.when(pl.col("model_id") == "T05c").then(1.5).otherwise(None)
    )
    t = an.training_time(recorded)
    # T05c: 1.5 CPU seconds (9.0 s of wall time); the others have only wall time
    assert _time(t, "transfer", "encoder", 64, "seconds_per_epoch") == pytest.approx(1.5)
    assert _time(t, "transfer", "none", 64, "seconds_per_epoch") == pytest.approx(9.0)


def test_training_time_groups_by_the_device_columns_when_present(table, model_rows):
    timed = _timed(table, model_rows).with_columns(
        train_device=pl.lit("cuda:0"),
        trials_sharing_device=pl.when(pl.col("model_id") == "T05c").then(2).otherwise(1),
    )
    t = an.training_time(timed)
    assert list(t.columns) == [*an.TIME_COLUMNS[:3], *an.DEVICE_COLUMNS, *an.TIME_COLUMNS[3:]]
    encoder = t.filter((pl.col("freeze") == "encoder") & (pl.col("n_train_images") == 64))
    # T05c shared its GPU with another trial, the unfrozen models did not: not compared
    assert encoder.get_column("trials_sharing_device").to_list() == [2]
    assert encoder.get_column("saving").to_list() == [None]
    same = timed.with_columns(trials_sharing_device=pl.lit(1))
    shared = an.training_time(same)
    assert _time(shared, "transfer", "encoder", 64, "saving") == pytest.approx(0.2)
    with pytest.raises(ValueError, match="train_seconds"):
        an.training_time(table.drop("train_seconds"))


# ----------------------------------------------------------------------------- Figure 7.2
def test_transfer_mixture_models_keeps_both_arms_of_each_pair(table):
    f = an.transfer_mixture_models(table)
    assert list(f.columns) == list(an.FIGURE_7_2_COLUMNS)
    # pairs with both arms: 0 -> 5 (T05a, T05b / B1) and 5 -> 0 (T50 / B2); 0 -> 10 has no
    # mixture. Transfer arm: unfrozen models first, so T05b (encoder) is left out
    assert _column(f, "model_id") == ["B1", "T05a", "B2", "T50"]
    assert _column(f, "method") == ["mixture", "transfer"] * 2
    # x: target images; y: loss on the target (B1 on 5: 0.22, T05a on 5: 0.15, B2 on 0: 0.36)
    assert _column(f, "n_target_images") == [128, 64, 256, 64]
    assert _column(f, "loss") == pytest.approx([0.22, 0.15, 0.36, 0.32])


def test_transfer_mixture_models_prefers_the_papers_learning_rates(table, model_rows):
    paper = pl.DataFrame(
        model_rows("T05p", "transfer", "0", "5", (0.4, 0.1, 0.5), lr=1e-4, tlr=1e-5, n_tr=64)
        + model_rows("B1p", "baseline", "0", "5", (0.3, 0.12, 0.9), lr=1e-4, n_pre=384, n_tr=128)
    )
    f = an.transfer_mixture_models(pl.concat([table, paper]))
    pair = f.filter(pl.col("source") == "0")
    assert _column(pair, "model_id") == ["B1p", "T05p"]
    # without the paper's lrs the nearest is kept: lr 1e-3 / 1e-4 (T05a) is
    # |log10 10| + |log10 10| = 2 from the paper; 1e-3 / 3e-4 would be 1 + 1.48
    near = model_rows("T05n", "transfer", "0", "5", (0.4, 0.1, 0.5), tlr=3e-4, n_tr=32)
    f = an.transfer_mixture_models(pl.concat([table, pl.DataFrame(near)]))
    assert "T05n" not in _column(f, "model_id") and "T05a" in _column(f, "model_id")
    assert an.transfer_mixture_models(table, seed=7).height == 0


def test_transfer_mixture_models_draws_the_source_only_and_target_only_mixtures_at_the_ends(
    table, model_rows
):
    """Fractions 0 and 1 of a fair mixture (protocol issue, section 3) are the source-only
    and target-only models: Figure 7.2 puts them at x = 0 and x = all target images."""
    ends = pl.DataFrame(
        model_rows("B0", "baseline", "0", "5", (0.31, 0.6, 0.9), n_pre=512, n_tr=0)
        + model_rows("B512", "baseline", "0", "5", (0.9, 0.12, 0.9), n_pre=0, n_tr=512)
    )
    f = an.transfer_mixture_models(pl.concat([table, ends]))
    mixture = f.filter((pl.col("source") == "0") & (pl.col("method") == "mixture"))
    assert _column(mixture, "model_id") == ["B0", "B1", "B512"]
    assert _column(mixture, "n_target_images") == [0, 128, 512]
    assert _column(mixture, "loss") == pytest.approx([0.6, 0.22, 0.12])
