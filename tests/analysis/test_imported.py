"""Networks against the threshold on imported domains (hand-made tables: exact verdicts)."""

from __future__ import annotations

import polars as pl
import pytest

from hrtem_ray.analysis.imported import (
    GOAL_MARGIN_IOU,
    calibration,
    labelled_tiles_curve,
    network_vs_threshold,
)


def _row(model_id, phase, iou, *, n_pre=8, n_tr=None, target=None, pre="-10", seed=0,
         split="test", bins=None):  # fmt: skip
    """One row on the imported domain ``exp``."""
    return {
        "study": "defocus", "model_id": model_id, "phase": phase,
        "pretrain_domain": "exp" if phase == "threshold" else pre, "transfer_domain": target,
        "eval_domain": "exp", "pretrain_lr": None if phase == "threshold" else 1e-3,
        "transfer_lr": 1e-4 if phase == "transfer" else None, "n_pretrain": n_pre,
        "n_transfer": n_tr, "freeze": "none", "seed": seed, "iou": iou,
        "loss": None if phase == "threshold" else 0.1, "eval_split": split,
        "reliability_pixels": bins[0] if bins else None,
        "reliability_confidence": bins[1] if bins else None,
        "reliability_frequency": bins[2] if bins else None,
    }  # fmt: skip


def _table(threshold_iou: float) -> pl.DataFrame:
    """Transfer -10 -> exp on 8 tiles, 3 replicates (IoU 0.5, 0.6, 0.7); one from-scratch
    model; the threshold fitted on 8 tiles at ``threshold_iou``."""
    calibrated = ([100, 100], [0.2, 0.8], [0.2, 0.8])  # on the diagonal: ECE 0
    off = ([100, 100], [0.2, 0.8], [0.4, 0.6])  # 0.2 off: ECE 0.2
    rows = [
        _row("t0", "transfer", 0.5, n_pre=24, n_tr=8, target="exp", seed=0, bins=calibrated),
        _row("t1", "transfer", 0.6, n_pre=24, n_tr=8, target="exp", seed=1, bins=off),
        _row("t2", "transfer", 0.7, n_pre=24, n_tr=8, target="exp", seed=2, bins=calibrated),
        _row("s0", "baseline", 0.2, n_pre=0, n_tr=8, target="exp", pre="-10"),
        _row("th", "threshold", threshold_iou, n_pre=8),
    ]
    return pl.DataFrame(rows)


@pytest.mark.parametrize(
    ("threshold_iou", "verdict", "says"),
    [
        (0.30, "beats", "by at least the goal"),
        (0.45, "beats", "but by less than the goal"),
        (0.60, "undecidable", "does not clearly beat"),
        (0.90, "does not beat", "The network does not beat the threshold."),
    ],
)
def test_network_vs_threshold_verdicts(threshold_iou, verdict, says):
    versus = network_vs_threshold(_table(threshold_iou), ci=0.95, n_boot=200)
    row = versus.row(0, named=True)
    assert row["network_method"] == "transfer" and row["n_tiles"] == 8 and row["n_models"] == 3
    assert row["network_iou"] == pytest.approx(0.6)
    assert row["difference"] == pytest.approx(0.6 - threshold_iou)
    assert row["network_iou_ci_low"] >= 0.5 and row["network_iou_ci_high"] <= 0.7
    assert row["verdict"] == verdict and says in row["sentence"], row["sentence"]
    assert row["eval_split"] == "test"
    assert GOAL_MARGIN_IOU == 0.15


def test_labelled_tiles_curve_names_every_method():
    curve = labelled_tiles_curve(_table(0.3), ci=0.95, n_boot=200)
    methods = dict(zip(curve["method"], curve["iou"], strict=True))
    assert methods == pytest.approx({"transfer": 0.6, "from scratch": 0.2, "threshold": 0.3})
    scratch = curve.filter(pl.col("method") == "from scratch").row(0, named=True)
    assert scratch["iou_ci_low"] is None  # one model: no interval
    assert "8 target tiles only" in scratch["configuration"]


def test_calibration_pools_the_best_configuration_by_pixels():
    bins = calibration(_table(0.3))
    assert bins["n_models"].unique().to_list() == [3]
    # two calibrated models and one 0.2 off, equal pixels: ECE 0.2 / 3
    assert bins["ece"].unique().to_list() == pytest.approx([0.2 / 3])
    assert bins["pixels"].to_list() == [300, 300]


def test_without_threshold_rows_there_is_nothing_to_compare():
    table = _table(0.3).filter(pl.col("phase") != "threshold")
    assert network_vs_threshold(table).is_empty()
    assert labelled_tiles_curve(table).is_empty() and calibration(table).is_empty()


def test_a_single_model_gives_no_verdict_against_the_threshold():
    """One model of the best configuration: no interval, so neither beats nor does not."""
    table = pl.DataFrame(
        [
            _row("t0", "transfer", 0.9, n_pre=24, n_tr=8, target="exp"),
            _row("th", "threshold", 0.3, n_pre=8),
        ]
    )
    row = network_vs_threshold(table, ci=0.95, n_boot=200).row(0, named=True)
    assert row["n_models"] == 1 and row["difference_ci_low"] is None
    assert row["verdict"] == "undecidable" and "without replicates" in row["sentence"]


def test_intervals_do_not_depend_on_the_order_the_results_were_read_in():
    """The same models read in another order (another file listing) give the same
    bootstrap intervals, not only the same estimates."""
    extra = _row("t3", "transfer", 0.93, n_pre=24, n_tr=8, target="exp", seed=3)
    table = pl.concat([_table(0.3), pl.DataFrame([extra])], how="diagonal_relaxed")
    rotated = pl.concat([table[1:3], table[0:1], table[3:]])  # t1, t2, t0, ...
    for frame in (labelled_tiles_curve, network_vs_threshold):
        assert frame(table, ci=0.9, n_boot=200).equals(frame(rotated, ci=0.9, n_boot=200))
