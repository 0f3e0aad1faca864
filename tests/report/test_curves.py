"""The learning-curve panel, on a study root trained for real (without Ray) on the tiny dataset.

Two pretrain models, their two transfer children and a mixture baseline, at most 3 epochs
with early stopping: the panel's data are checked against the history files the trials
wrote, never against how well they learned.
"""

from __future__ import annotations

import shutil

import polars as pl
import pytest
from helpers import TINY_DATASET, train_study_root

from hrtem_ray import analysis
from hrtem_ray.report import curves
from hrtem_ray.report.build import write_report
from hrtem_ray.report.vega import chart_spec
from hrtem_ray.store.layout import CHECKPOINT_DIR, HISTORY_DIR, RESULTS_DIR


@pytest.fixture(scope="module")
def trained_root(tiny_dataset_root, tmp_path_factory):
    """A study root with results/, history/ and checkpoints/ of every phase."""
    raw = {
        "name": "curves",
        "dataset": TINY_DATASET,
        "domains": {"pretrain": ["0"], "transfer": ["10"], "eval": ["0", "10"]},
        "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0, 1]},
        "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["none"]},
        "baseline": {"fractions": [0.5], "lr": [1e-3], "seeds": [0]},
        "training": {"max_epochs": 3, "patience": 2, "min_delta": 0.0, "batch_size": 4},
        "model": {"size": "small"},
    }
    root = tmp_path_factory.mktemp("curves-study")
    train_study_root(raw, tiny_dataset_root, root, ("pretrain", "transfer", "baseline"))
    return root


@pytest.fixture(scope="module")
def history(trained_root):
    """Every history file of the study, read directly."""
    columns = ["model_id", "epoch", "train_loss", "val_loss", "best_epoch"]
    files = sorted((trained_root / HISTORY_DIR).glob("*.parquet"))
    return pl.concat([pl.read_parquet(f, columns=columns) for f in files])


@pytest.fixture(scope="module")
def results(trained_root):
    return analysis.load_results(trained_root / RESULTS_DIR)


def chart_rows(chart, layer):
    """The rows of one layer of the learning-curve chart's embedded data."""
    return [r for r in chart_spec(chart)["data"]["values"] if r["layer"] == layer]


def test_the_chart_shows_every_phase_and_epoch_of_the_histories(trained_root, history, results):
    chart, notes = curves.learning_curves(trained_root, results)
    assert notes == []
    phases = dict(curves.model_phases(results).iter_rows())
    assert set(phases.values()) == {"pretrain", "transfer", "baseline"}
    expected = history.with_columns(phase=pl.col("model_id").replace_strict(phases))
    rows = pl.DataFrame(chart_rows(chart, "curve"))
    for (phase, curve), group in rows.group_by("phase", "curve"):
        trained = expected.filter(pl.col("phase") == phase)
        assert sorted(group["epoch"]) == sorted(set(trained["epoch"])), (phase, curve)
        column = {"train": "train_loss", "validation": "val_loss"}[curve]
        medians = trained.group_by("epoch").agg(pl.col(column).median(), n=pl.len())
        merged = group.join(medians, on="epoch")
        assert merged["loss"].to_list() == pytest.approx(merged[column].to_list())
        assert merged["n_models"].to_list() == merged["n"].to_list()
        assert (group["loss_low"] <= group["loss"]).all() and (
            group["loss"] <= group["loss_high"]
        ).all()
    assert rows.select("phase", "curve").unique().height == 6  # 3 phases x train, validation


def test_the_kept_epoch_marked_is_each_models_best_epoch(trained_root, history, results):
    chart, _ = curves.learning_curves(trained_root, results)
    kept = {r["model_id"]: r for r in chart_rows(chart, "kept")}
    assert set(kept) == set(history["model_id"]) == set(results["model_id"].cast(pl.String))
    for model_id, group in history.group_by("model_id"):
        best = group["best_epoch"][0]
        assert kept[model_id[0]]["best_epoch"] == best
        at_best = group.filter(pl.col("epoch") == best)["val_loss"][0]
        assert kept[model_id[0]]["val_loss"] == pytest.approx(at_best)
    (rule,) = [r for r in chart_rows(chart, "median_kept") if r["phase"] == "pretrain"]
    pretrain = [r["best_epoch"] for r in kept.values() if r["phase"] == "pretrain"]
    assert rule["median_best_epoch"] == pytest.approx(sum(pretrain) / len(pretrain))  # 2 models


def test_the_loss_axis_names_its_unit(trained_root, results):
    chart, _ = curves.learning_curves(trained_root, results)
    titles = {
        layer["encoding"]["y"]["title"]
        for layer in chart_spec(chart)["spec"]["layer"]
        if "y" in layer["encoding"]
    }
    assert titles == {"excess cross-entropy (nats above the floor)"}


def test_a_study_root_is_found_from_its_results_folder(trained_root, tmp_path):
    assert curves.study_root_of(trained_root / RESULTS_DIR) == str(trained_root)
    assert curves.study_root_of(trained_root) == str(trained_root)
    loose = tmp_path / RESULTS_DIR
    loose.mkdir()
    assert curves.study_root_of(loose) is None  # a results/ folder outside any study
    assert curves.study_root_of(None) is None


def test_the_report_of_a_study_root_shows_curves_and_predictions(
    trained_root, tiny_dataset_root, tmp_path
):
    page = write_report(trained_root / RESULTS_DIR, tmp_path / "out", tiny_dataset_root)
    text = page.read_text()
    for name in ("learning_curves", "predictions"):
        assert f'id="chart-defocus_{name}"' in text
        assert (tmp_path / "out" / "figures" / f"defocus_{name}.png").stat().st_size > 0
    assert "Learning curves" in text and "Predictions next to the truth" in text


def test_a_damaged_history_and_a_missing_checkpoint_give_notes_not_an_error(
    trained_root, tiny_dataset_root, results, tmp_path
):
    root = tmp_path / "study"
    shutil.copytree(trained_root, root)
    damaged = sorted((root / HISTORY_DIR).glob("transfer-*.parquet"))[0]
    damaged.write_bytes(b"not parquet")
    shutil.rmtree(root / CHECKPOINT_DIR)
    page = write_report(results, tmp_path / "out", tiny_dataset_root, study_root=root).read_text()
    assert f"{damaged.name} left out (unreadable Parquet" in page
    assert "predictions not drawn: no checkpoint of pretrain-" in page
    assert 'id="chart-defocus_learning_curves"' in page  # from the other histories
    assert 'id="chart-defocus_predictions"' not in page
