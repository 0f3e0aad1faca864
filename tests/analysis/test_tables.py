"""Tests of hrtem_ray.analysis.tables: ordering, loading, label encoding, validation.

The table is the hand-made one of conftest.py.
"""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from hrtem_ray import analysis as an


def test_domain_order_numeric_then_alphabetical():
    labels = ["10", "-5", "0", "b", "a", "5", "2.5", "5"]
    assert an.domain_order(labels) == ["-5", "0", "2.5", "5", "10", "a", "b"]


def test_lazy_input_and_extra_columns_ignored(table):
    eager = an.pair_matrix(table, "transfer")
    assert_frame_equal(an.pair_matrix(table.lazy(), "transfer"), eager)
    # non-required columns may be missing
    slim = table.drop("iou", "cross_entropy", "extra_column", "config_hash")
    assert_frame_equal(an.pair_matrix(slim, "transfer"), eager)


def test_missing_column_is_named(table):
    with pytest.raises(ValueError, match="loss"):
        an.pair_matrix(table.drop("loss"), "pretrain")
    with pytest.raises(ValueError, match="transfer_domain"):
        an.ood_spread(table.drop("transfer_domain"))
    with pytest.raises(ValueError, match="n_transfer"):
        an.hyperparameter_effects(table.drop("n_transfer"), "n_transfer")
    with pytest.raises(ValueError, match="freeze"):
        an.pair_matrix(table.drop("freeze"), "pretrain", freeze="none")


def test_unknown_phase_values_are_named(table):
    bad = table.with_columns(
        phase=pl.when(pl.col("model_id") == "T50").then(pl.lit("finetune")).otherwise("phase")
    )
    with pytest.raises(ValueError, match="finetune"):
        an.pair_matrix(bad, "transfer")


def test_load_results_directory_glob_and_file(table, tmp_path):
    pretrain = table.filter(pl.col("phase") == "pretrain")
    # an all-null column is stored with Null type in one file: schemas differ
    pretrain = pretrain.with_columns(transfer_lr=None, transfer_domain=None)
    rest = table.filter(pl.col("phase") != "pretrain")
    (tmp_path / "results" / "a").mkdir(parents=True)
    pretrain.write_parquet(tmp_path / "results" / "a" / "part-0.parquet")
    rest.write_parquet(tmp_path / "results" / "part-1.parquet")
    loaded = an.load_results(tmp_path / "results")
    assert loaded.height == table.height
    assert_frame_equal(an.pair_matrix(loaded, "transfer"), an.pair_matrix(table, "transfer"))
    assert an.load_results(tmp_path / "results" / "part-1.parquet").height == rest.height
    assert an.load_results(str(tmp_path / "results" / "**" / "*.parquet")).height == table.height
    with pytest.raises(FileNotFoundError):
        an.load_results(tmp_path / "nothing")
    assert loaded.schema["eval_domain"] == pl.Categorical()
    assert loaded.schema["phase"] == pl.Categorical()
    plain = an.load_results(tmp_path / "results", categorical=False)
    assert plain.schema["eval_domain"] == pl.String


def _every_function(results) -> list[pl.DataFrame]:
    filters = {"freeze": ["none", "encoder"], "pretrain_lr": 1e-3}
    return [
        an.pair_matrix(results, "pretrain"),
        an.pair_matrix(results, "transfer", reduce="mean", **filters),
        an.ood_spread(results),
        an.ood_spread(results, reduce="max", exclude_eval_domains=(), seed=[0, 1]),
        an.transfer_asymmetry(results),
        an.asymmetry_summary(results, "0", n_transfer=64),
        an.baseline_comparison(results, "0", "5"),
        an.hyperparameter_effects(results, "freeze"),
        an.hyperparameter_effects(results, ("pretrain_lr", "transfer_lr"), **filters),
    ]


def test_categorical_labels_give_the_same_tables(table):
    encoded = an.encode_labels(table)
    assert all(encoded.schema[c] == pl.Categorical() for c in an.LABEL_COLUMNS)
    # one domain column categorical, the others strings: falls back to strings
    mixed = table.with_columns(pl.col("eval_domain").cast(pl.Categorical))
    want = _every_function(table)
    for results in (encoded, encoded.lazy(), mixed):
        for got, expected in zip(_every_function(results), want, strict=True):
            assert got.schema == expected.schema
            assert_frame_equal(got, expected)
    bad = encoded.with_columns(
        phase=pl.when(pl.col("model_id") == "T50").then(pl.lit("finetune")).otherwise("phase")
    ).with_columns(pl.col("phase").cast(pl.Categorical))
    with pytest.raises(ValueError, match="finetune"):
        an.ood_spread(bad)
    tables, _ = an.selection_tables(table)
    encoded_tables, _ = an.selection_tables(encoded)
    for name, frame in tables.items():
        assert_frame_equal(encoded_tables[name], frame)
