"""Tests of hrtem_ray.analysis.selections: every table for every filter selection at once.

The table is the hand-made one of conftest.py; each selection must give the table
of the public function called with the corresponding filters.
"""

from __future__ import annotations

import itertools

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from hrtem_ray import analysis as an


def _selected(frame: pl.DataFrame, selection: dict[str, str]) -> pl.DataFrame:
    mask = pl.lit(True)
    for column, label in selection.items():
        mask = mask & (pl.col(column) == label)
    return frame.filter(mask).drop(selection)


def test_selection_tables_match_the_filtered_functions(table):
    tables, choices = an.selection_tables(table)
    assert choices["freeze"] == ["all", "encoder", "none"]
    assert choices["n_transfer"] == ["all", "64", "128"]
    assert choices["pretrain_lr"] == ["all", "0.0001", "0.001"]
    assert choices["transfer_lr"] == ["all", "0.0001"]
    values = {"freeze": {"encoder": "encoder", "none": "none"}, "n_transfer": {"64": 64, "128": 128},
              "pretrain_lr": {"0.0001": 1e-4, "0.001": 1e-3}, "transfer_lr": {"0.0001": 1e-4}}  # fmt: skip
    dims = list(values)
    for reduce in ("median", "max"):
        for labels in itertools.product(*(choices[d] for d in dims)):
            selection = {"sel_reduce": reduce} | {
                f"sel_{d}": x for d, x in zip(dims, labels, strict=True)
            }
            filters = {d: values[d][x] for d, x in zip(dims, labels, strict=True) if x != "all"}
            for phase in ("pretrain", "transfer"):
                got = _selected(tables["pair_matrix"], selection).filter(pl.col("phase") == phase)
                want = an.pair_matrix(table, phase, reduce=reduce, **filters)
                assert_frame_equal(got.drop("phase", "iou"), want)
            got = _selected(tables["ood_spread"], selection)
            assert_frame_equal(got, an.ood_spread(table, reduce=reduce, **filters))
            got = _selected(tables["asymmetry_summary"], selection).filter(pl.col("domain") == "0")
            assert_frame_equal(got, an.asymmetry_summary(table, "0", reduce=reduce, **filters))
            got = _selected(tables["baseline_comparison"], selection).filter(
                (pl.col("source") == "0") & (pl.col("target") == "5")
            )
            want = an.baseline_comparison(table, "0", "5", reduce=reduce, **filters)
            assert_frame_equal(got.drop("source", "target"), want)
            del selection["sel_reduce"]
            got = _selected(tables["hyperparameters_n_transfer"], selection)
            assert_frame_equal(got, an.hyperparameter_effects(table, "n_transfer", **filters))


def test_pair_matrix_selection_table_carries_the_iou_of_the_same_models(table):
    """The report's pair matrices show IoU next to the loss: the reduced IoU of the models
    of each cell (a transfer cell without a model falls back like its loss)."""
    linked = table.with_columns(iou=1 - pl.col("loss") / 3)  # a decreasing map of the loss
    tables, _ = an.selection_tables(linked, reduce_modes=("median",))
    pairs = tables["pair_matrix"]
    filters = [c for c in pairs.columns if c.startswith("sel_") and c != "sel_reduce"]
    everything = pairs.filter(pl.all_horizontal([pl.col(c) == "all" for c in filters]))
    assert everything.height > 0
    # the median commutes with a decreasing linear map
    assert everything.get_column("iou").to_list() == pytest.approx(
        (1 - everything.get_column("loss") / 3).to_list()
    )
    # the public function keeps the contract's columns; a table without iou has none
    assert "iou" not in an.pair_matrix(linked, "transfer").columns
    bare, _ = an.selection_tables(table.drop("iou"), reduce_modes=("median",))
    assert "iou" not in bare["pair_matrix"].columns


def test_selection_tables_hold_the_generalization_gap(table):
    tables, choices = an.selection_tables(table)
    gaps = tables["generalization_gap"]
    for reduce, freeze in itertools.product(("median", "max"), choices["freeze"]):
        selection = {"sel_reduce": reduce, "sel_freeze": freeze, "sel_n_transfer": "all",
                     "sel_pretrain_lr": "all", "sel_transfer_lr": "all"}  # fmt: skip
        filters = {} if freeze == "all" else {"freeze": freeze}
        for phase in ("pretrain", "transfer"):
            got = _selected(gaps, selection).filter(pl.col("phase") == phase).drop("phase")
            assert_frame_equal(got, an.generalization_gap(table, phase, reduce, **filters))
