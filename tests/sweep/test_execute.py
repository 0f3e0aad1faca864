"""One trial at a time without Ray: the protocol's columns in the rows a trial writes.

Real training on the tiny simulated dataset (tests/conftest.py), a few optimizer steps each.
"""

from __future__ import annotations

import copy

import polars as pl
import pyarrow.parquet as pq
import pytest
from helpers import TINY_DATASET

from hrtem_ray.spec.config import parse_study_spec
from hrtem_ray.sweep import results
from hrtem_ray.sweep.execute import execute_trial, training_set
from hrtem_ray.sweep.results import RESULT_SCHEMA
from hrtem_ray.sweep.trials import mixture_steps, plan_trials, stage_steps

PROTOCOL_COLUMNS = [
    "converged", "patience", "max_epochs", "min_delta", "train_steps", "target_fraction",
    "parent_seed", "eval_split", "val_loss", "epoch_seconds", "epoch_cpu_seconds",
]  # fmt: skip


def study(dataset_root, **sections):
    """A one-domain-pair study on the tiny dataset (4 pretrain images, batch 4)."""
    raw = {
        "name": "protocol",
        "dataset": {**copy.deepcopy(TINY_DATASET), "path": str(dataset_root)},
        "domains": {"pretrain": ["0"], "transfer": ["10"], "eval": ["0", "10"]},
        "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
        "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["none"]},
        "model": {"size": "small"},
        **sections,
    }
    return parse_study_spec(raw, source="tests")


def run(spec, trial, root):
    """Execute ``trial`` on one CPU thread; its result rows as a polars frame."""
    execute_trial(
        spec, trial, dataset_root=spec.dataset.path, study_root=str(root), num_threads=1,
        device="cpu",
    )  # fmt: skip
    return pl.from_arrow(pq.read_table(results.result_path(str(root), trial)))


@pytest.fixture(scope="module")
def stopped(tiny_dataset_root, tmp_path_factory):
    """A parent stopped early (no epoch after the first gains 1e9) and a replicate child."""
    spec = study(
        tiny_dataset_root,
        transfer={"lr": [1e-4], "n_images": [2], "freeze": ["none"], "seeds": [3]},
        training={"max_epochs": 4, "patience": 1, "min_delta": 1e9, "batch_size": 4},
    )
    plan = plan_trials(spec)
    root = tmp_path_factory.mktemp("stopped")
    (parent,), (child,) = plan.pretrain, plan.transfer
    return spec, run(spec, parent, root), run(spec, child, root), root


def test_a_model_stopped_on_patience_records_that_it_converged(stopped):
    _, parent, _, _ = stopped
    row = parent.row(0, named=True)
    assert parent.height == 2  # one row per eval domain
    assert row["epochs"] == 2 and row["converged"] is True  # 1 epoch, then 1 without a gain
    assert (row["patience"], row["max_epochs"], row["min_delta"]) == (1, 4, 1e9)
    assert row["train_steps"] == stage_steps(4, 2, 4) == 16
    assert row["parent_seed"] is None and row["target_fraction"] is None


def test_a_replicate_child_records_its_parents_seed(stopped):
    _, parent, child, root = stopped
    row = child.row(0, named=True)
    assert (row["seed"], row["parent_seed"]) == (3, 0)
    assert row["parent_id"] == parent["model_id"][0]
    assert row["converged"] is True and row["epochs"] == 2
    history = results.read_history(str(root))
    assert set(history["model_id"]) == {parent["model_id"][0], row["model_id"]}
    assert history.group_by("model_id").len()["len"].to_list() == [2, 2]  # complete histories


def test_results_without_the_protocol_columns_still_load(stopped):
    spec, parent, child, root = stopped
    # the child's file as written before the protocol columns existed
    path = results.result_path(str(root), plan_trials(spec).transfer[0])
    pq.write_table(pq.read_table(path).drop_columns(PROTOCOL_COLUMNS), path)
    table = results.read_results(str(root))
    assert table.height == 4 and set(PROTOCOL_COLUMNS) <= set(table.columns)
    old = table.filter(pl.col("phase") == "transfer")
    assert old.select(PROTOCOL_COLUMNS).null_count().row(0) == (2,) * len(PROTOCOL_COLUMNS)
    assert table.filter(pl.col("phase") == "pretrain")["converged"].to_list() == [True, True]
    assert results.finished_ids(str(root)) == {parent["model_id"][0], child["model_id"][0]}
    assert set(RESULT_SCHEMA.names) <= set(table.columns)


def test_mixtures_with_matched_steps_train_their_counterparts_steps(tiny_dataset_root, tmp_path):
    baseline = {"fractions": [0, 0.5], "match": "steps", "lr": [1e-3], "seeds": [0]}
    spec = study(tiny_dataset_root, baseline=baseline, training={"epochs": 1, "batch_size": 4})
    source_only, half = plan_trials(spec).baseline
    assert (source_only.n_pretrain, source_only.n_transfer) == (4, 0)
    images, _ = training_set(source_only, spec.dataset.path)
    assert len(images) == 4  # the source's images alone
    rows = run(spec, source_only, tmp_path)
    assert rows["target_fraction"].to_list() == [0.0, 0.0]
    # pretraining alone: 1 epoch of 4 images x 8 / 4 = 8 steps
    assert rows["train_steps"][0] == mixture_steps(spec, 0) == 8 and rows["epochs"][0] == 1
    rows = run(spec, half, tmp_path)
    # 8 pretraining + 4 transfer steps (2 images x 8 / 4): an epoch and a half of the mixture
    assert rows["train_steps"][0] == mixture_steps(spec, 2) == half.max_steps == 12
    assert rows["epochs"][0] == 2 and rows["target_fraction"][0] == 0.5
    assert rows["converged"].null_count() == 2  # fixed epochs without patience: not judged
    assert rows["patience"].null_count() == 2 and rows["max_epochs"].null_count() == 2


def test_reported_metrics_are_computed_on_the_test_images(tiny_dataset_root, tmp_path):
    """With a test split every metric is of the held-out images, the best epoch is still
    chosen on val, and the two differ: scoring on val would fail here."""
    import shutil

    from hrtem_ray.dataset import readers
    from hrtem_ray.dataset.pipeline import simulate_dataset_serial
    from hrtem_ray.learning.train import evaluate, load_checkpoint

    root = tmp_path / "data"
    shutil.copytree(tiny_dataset_root, root)
    dataset = {**copy.deepcopy(TINY_DATASET), "path": str(root)}
    dataset["n_structures"] = {**dataset["n_structures"], "test": 3}
    spec = study(root, dataset=dataset, transfer=None, training={"epochs": 2, "batch_size": 4})
    simulate_dataset_serial(spec.dataset, root)  # only the 3 held-out structures are new
    (trial,) = plan_trials(spec).pretrain
    rows = run(spec, trial, tmp_path / "study").sort("eval_domain")
    assert rows["eval_split"].to_list() == ["test", "test"]
    history = results.read_history(str(tmp_path / "study"))
    best = history.filter(pl.col("epoch") == rows["best_epoch"][0])
    assert rows["val_loss"][0] == pytest.approx(best["val_loss"][0], rel=1e-9)
    # the median epoch's wall time: setup and scoring are not spread over the epochs
    assert rows["epoch_seconds"][0] == pytest.approx(history["seconds"].median(), rel=1e-9)
    assert rows["epoch_seconds"][0] < rows["train_seconds"][0] / rows["epochs"][0]
    # on a CPU: the median of the epochs' process CPU time (the work, not the waits)
    assert rows["epoch_cpu_seconds"][0] == pytest.approx(history["cpu_seconds"].median(), rel=1e-9)
    assert rows["epoch_cpu_seconds"][0] > 0
    model, _ = load_checkpoint(str(tmp_path / "study" / "checkpoints" / trial.model_id))
    for split in ("test", "val"):
        sets = {}
        for domain in ("0", "10"):
            selection = readers.read_images(root, domain, split)
            sets[domain] = (selection.images, selection.masks)
        metrics = evaluate(model, sets, batch_size=4, device="cpu")
        scored = [metrics[d].loss for d in ("0", "10")]
        if split == "test":
            assert rows["loss"].to_list() == pytest.approx(scored, rel=1e-5)
        else:  # the validation images give other numbers
            assert min(abs(a - b) for a, b in zip(rows["loss"], scored, strict=True)) > 1e-4


def test_without_a_test_split_models_are_scored_on_val_and_say_so(stopped):
    _, parent, _, _ = stopped
    assert parent["eval_split"].to_list() == ["val", "val"]
    assert parent["val_loss"].null_count() == 0


def test_asking_for_test_metrics_without_a_test_split_is_refused(tiny_dataset_root):
    from hrtem_ray.spec.base import SpecError

    with pytest.raises(SpecError, match="training.eval_split: test needs held-out structures"):
        study(tiny_dataset_root, training={"epochs": 1, "eval_split": "test"})


def test_training_tta_scores_with_test_time_augmentation_and_says_so(tiny_dataset_root, tmp_path):
    """``training.tta``: the rows are the stored model's scores with the 8-fold test-time
    augmentation (not its plain scores), the ``tta`` column says so, and the model id
    differs from the plain study's, whose ids stay as they were."""
    from hrtem_ray.dataset import readers
    from hrtem_ray.learning.train import evaluate, load_checkpoint

    plain = study(tiny_dataset_root, transfer=None, training={"epochs": 2, "batch_size": 4})
    spec = study(tiny_dataset_root, transfer=None,
                 training={"epochs": 2, "batch_size": 4, "tta": True})  # fmt: skip
    (trial,), (plain_trial,) = plan_trials(spec).pretrain, plan_trials(plain).pretrain
    assert trial.model_id != plain_trial.model_id
    assert plain_trial.model_id == plan_trials(study(tiny_dataset_root, transfer=None,
        training={"epochs": 2, "batch_size": 4, "tta": False})).pretrain[0].model_id  # fmt: skip
    rows = run(spec, trial, tmp_path).sort("eval_domain")
    assert rows["tta"].to_list() == [True, True]
    model, _ = load_checkpoint(str(tmp_path / "checkpoints" / trial.model_id))
    sets = {}
    for domain in ("0", "10"):
        selection = readers.read_images(tiny_dataset_root, domain, rows["eval_split"][0])
        sets[domain] = (selection.images, selection.masks)
    for tta in (True, False):
        scored = evaluate(model, sets, batch_size=4, device="cpu", tta=tta)
        losses = [scored[d].loss for d in ("0", "10")]
        if tta:
            assert rows["loss"].to_list() == pytest.approx(losses, rel=1e-5)
        else:
            assert min(abs(a - b) for a, b in zip(rows["loss"], losses, strict=True)) > 1e-6
