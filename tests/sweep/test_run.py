"""The sweep engine on a real local Ray cluster, with a tiny real dataset."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml
from helpers import REPO, TINY_DATASET, TINY_STUDY, kill_cli_when, poison_domain, run_cli

from hrtem_ray.spec.config import load_study_spec, parse_study_spec
from hrtem_ray.store import storage
from hrtem_ray.study import Study
from hrtem_ray.sweep import results
from hrtem_ray.sweep.trials import plan_trials


def tiny_study(tmp_path: Path, dataset_root: Path | None = None, **overrides) -> Study:
    raw = {**TINY_STUDY, **overrides}
    if dataset_root is not None:
        raw["dataset"] = {**raw["dataset"], "path": str(dataset_root)}
    return Study(parse_study_spec(raw, source="tests"), out=tmp_path / "study")


@pytest.fixture(scope="module")
def finished_tiny(ray_cluster, tiny_dataset_root, tmp_path_factory):
    study = tiny_study(tmp_path_factory.mktemp("sweep"), tiny_dataset_root)
    report = study.sweep()
    return study, report


def test_tiny_study_gives_exactly_the_expected_rows(finished_tiny):
    study, report = finished_tiny
    plan = plan_trials(study.spec)
    assert plan.counts() == {"pretrain": 2, "transfer": 8, "baseline": 3}
    table = study.results()
    n_eval = 3
    assert table.height == 13 * n_eval
    assert table.select("model_id", "eval_domain").n_unique() == table.height
    assert set(table["model_id"]) == {t.model_id for t in plan.all()}
    assert report.failed == []
    expected_columns = {
        "study", "model_id", "phase", "parent_id", "pretrain_domain", "transfer_domain",
        "eval_domain", "pretrain_lr", "transfer_lr", "n_pretrain", "n_transfer", "freeze",
        "seed", "epochs", "loss", "cross_entropy", "iou", "best_epoch", "train_seconds",
        "config_hash", "hrtem_ray_version",
    }  # fmt: skip
    assert expected_columns <= set(table.columns)
    transfer = table.filter(pl.col("phase") == "transfer")
    assert set(transfer["parent_id"]) <= set(
        table.filter(pl.col("phase") == "pretrain")["model_id"]
    )
    assert table["loss"].is_finite().all() and (table["iou"].is_between(0, 1)).all()
    baseline = table.filter(pl.col("phase") == "baseline")
    assert set(baseline["freeze"]) == {"none"} and baseline["transfer_domain"].null_count() == 0


def test_transfer_starts_from_its_parents_best_weights(finished_tiny):
    study, _ = finished_tiny
    history = results.read_history(study.study_root)
    by_model = {row["model_id"]: row for row in history.unique("model_id").iter_rows(named=True)}
    transfers = [r for r in by_model.values() if r["model_id"].startswith("transfer")]
    assert len(transfers) == 8
    for child in transfers:
        parent = by_model[child["parent_id"]]
        assert child["initial_digest"] == parent["best_digest"]
        ckpt_meta = storage.read_json(
            storage.join(
                results.checkpoint_path(study.study_root, parent["model_id"]), "metadata.json"
            )
        )
        assert ckpt_meta["best_digest"] == parent["best_digest"]


@pytest.mark.slow
def test_a_child_starts_before_a_longer_parent_has_finished(
    ray_cluster, tiny_dataset_root, tmp_path
):
    """The child of a short pretrain model starts while a long pretrain model still trains.

    Two pretrain trials of clearly unequal length (1 vs 6 training images, x 8
    symmetries, 12 epochs: about 1 s vs 6 s of training steps on one core, plus about
    1.5 s of loading and evaluation each) share the 2 CPUs (1 CPU each, so 2 at a time),
    one child each. Longest-first, both parents start at once; the short one ends about
    5 s before the long one (the child starts about 0.1 s after its parent's end).

    - Pipelined (what the sweep does): the short parent's child is handed out as soon
      as the short parent is done and takes its freed CPU, so it starts while the long
      parent is still training: ``child.started_at < long.finished_at``.
    - Barrier (all pretraining first): no child is handed out before the long parent's
      trial has ended, which is after its ``finished_at`` (its checkpoint and results are
      written after that instant), so ``child.started_at > long.finished_at`` and the
      assertion fails. It fails whatever the concurrency: even with one trial at a time a
      barrier starts no child before the last parent ends.
    """
    study = tiny_study(
        tmp_path,
        tiny_dataset_root,
        domains={"pretrain": ["0"], "transfer": ["10"], "eval": ["10"]},
        pretrain={"lr": [1e-3], "n_images": [1, 6], "seeds": [0]},
        transfer={"lr": [1e-4], "n_images": [1], "freeze": ["none"]},
        baseline=None,
        training={"epochs": 12, "batch_size": 4},
        resources={"cpu": 1, "max_failures": 0, "max_concurrent_trials": 2},
    )
    report = study.sweep()
    assert report.finished, report
    table = study.results().unique("model_id")
    rows = {row["model_id"]: row for row in table.iter_rows(named=True)}
    short, long = sorted(
        (r for r in rows.values() if r["phase"] == "pretrain"), key=lambda r: r["n_pretrain"]
    )
    (child,) = [r for r in rows.values() if r["parent_id"] == short["model_id"]]
    timeline = (
        f"short parent {short['started_at']:.1f}-{short['finished_at']:.1f}, "
        f"long parent {long['started_at']:.1f}-{long['finished_at']:.1f}, "
        f"child of short starts {child['started_at']:.1f}"
    )
    assert short["finished_at"] <= child["started_at"], timeline
    assert child["started_at"] < long["finished_at"], timeline


def test_rerun_runs_nothing_and_duplicates_nothing(finished_tiny):
    study, _ = finished_tiny
    before = study.results().sort("model_id", "eval_domain")
    report = study.sweep()
    assert report.completed == 0 and report.already_done == 13
    assert study.results().sort("model_id", "eval_domain").equals(before)


@pytest.mark.slow
def test_failing_trial_is_retried_then_recorded(ray_cluster, tiny_dataset_root, tmp_path):
    # A damaged dataset: one training shard lost, so every domain has 3 of its 6
    # training images and the pretrain trials (4 images) fail with a DatasetError.
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_dataset_root, damaged)
    manifest = sorted((damaged / "_manifest").glob("*-train-00000-*.json"))
    assert manifest  # one entry per domain: drop that shard in every domain
    for entry in manifest:
        entry.unlink()
    study = tiny_study(
        tmp_path, damaged, baseline={"mixtures": [[1, 2]], "lr": [1e-3], "seeds": [0]}
    )
    report = study.sweep()
    failures = {f["model_id"]: f for f in report.failed}
    plan = plan_trials(study.spec)
    for trial in plan.pretrain:
        assert "DatasetError" in failures[trial.model_id]["error"]
        assert failures[trial.model_id]["attempts"] == study.spec.resources.max_failures + 1
    for trial in plan.transfer:
        assert failures[trial.model_id]["error"].startswith("not run: parent")
    table = study.results()
    assert set(table["phase"]) == {"baseline"} and table.height == 3 * 3


@pytest.mark.slow
def test_nan_loss_marks_the_trial_failed(ray_cluster, tiny_dataset_root, tmp_path):
    corrupt = poison_domain(tiny_dataset_root, tmp_path / "nan-data", "0")
    study = tiny_study(
        tmp_path,
        corrupt,
        domains={"pretrain": ["0"], "transfer": ["0", "10"]},
        transfer=None,
        baseline=None,
    )
    report = study.sweep()
    (failure,) = report.failed
    assert failure["error"].startswith("NonFiniteLossError")
    assert study.results().height == 0


@pytest.mark.parametrize(
    ("preset", "counts"),
    [
        ("defocus_paper", {"pretrain": 7200, "transfer": 7200, "baseline": 0}),
        ("dose_paper", {"pretrain": 180, "transfer": 180, "baseline": 0}),
        ("structure_paper", {"pretrain": 2754, "transfer": 2754, "baseline": 0}),
        ("baseline_paper", {"pretrain": 450, "transfer": 450, "baseline": 720}),
    ],
)
def test_dry_run_counts_of_the_paper_presets(preset, counts):
    spec_path = REPO / "sweeps" / f"{preset}.yaml"
    assert plan_trials(load_study_spec(spec_path)).counts() == counts
    proc = run_cli("sweep", spec_path, "--dry-run", timeout=120)
    assert proc.returncode == 0, proc.stderr
    for phase, n in counts.items():
        assert f"{n} {phase}" in proc.stdout


@pytest.mark.slow
def test_killed_driver_resumes_without_missing_or_duplicate_rows(tiny_dataset_root, tmp_path):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(
        yaml.safe_dump({**TINY_STUDY, "dataset": {**TINY_DATASET, "path": str(tiny_dataset_root)}})
    )
    out = tmp_path / "study"
    args = ["sweep", spec_file, "--out", out, "--num-cpus", 2]
    kill_cli_when(args, lambda: len(results.finished_ids(str(out))) >= 3)
    done_at_kill = results.finished_ids(str(out))
    assert 3 <= len(done_at_kill) < 13, "the driver should be killed in the middle of the study"

    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"({len(done_at_kill)} already done)" in resumed.stderr
    study = Study(load_study_spec(spec_file), out=out)
    table = study.results()
    plan = plan_trials(study.spec)
    assert table.height == len(plan.all()) * 3
    assert table.select("model_id", "eval_domain").n_unique() == table.height
    assert set(table["model_id"]) == {t.model_id for t in plan.all()}


@pytest.mark.slow
def test_gpu_request_without_gpus_falls_back_to_cpu(
    ray_cluster, tiny_dataset_root, tmp_path, caplog, capsys
):
    study = tiny_study(
        tmp_path,
        tiny_dataset_root,
        domains={"pretrain": ["0"], "transfer": ["0"]},
        transfer=None,
        baseline=None,
        resources={"cpu": 1, "gpu": 0.25},
    )
    caplog.set_level(logging.INFO, logger="hrtem_ray")
    report = study.sweep()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no GPU" in line and "on CPU" in line for line in warned), caplog.messages
    # progress is logged, not printed: a library user sees it only by configuring logging
    assert any(line.startswith("[1/1] done") for line in caplog.messages), caplog.messages
    assert "[1/1]" not in capsys.readouterr().err
    assert report.completed == 1 and study.results().height == 3


@pytest.mark.slow
def test_fractional_gpus_pack_trials(tiny_dataset_root, tmp_path):
    """Two trials at 0.5 GPU share one (logical) GPU of a fresh cluster and overlap in time."""
    spec_file = tmp_path / "gpu.yaml"
    raw = {
        **TINY_STUDY,
        "dataset": {**TINY_DATASET, "path": str(tiny_dataset_root)},
        "domains": {"pretrain": ["-10", "0"]},
        "transfer": None,
        "baseline": None,
        "training": {"epochs": 3, "batch_size": 4},
        "resources": {"cpu": 0.5, "gpu": 0.5},
    }
    spec_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "study"
    proc = run_cli("sweep", spec_file, "--out", out, "--num-cpus", 1, "--num-gpus", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 at a time, 0.5 CPU / 0.5 GPU each" in proc.stderr
    table = results.read_results(str(out)).unique("model_id").sort("started_at")
    assert table.height == 2
    first, second = table.iter_rows(named=True)
    assert second["started_at"] < first["finished_at"], "the two 0.5-GPU trials should run together"


def test_lost_trials_are_run_again_but_failed_ones_and_their_children_are_not():
    from ray.tune.search import Searcher

    from hrtem_ray.sweep.run import _final_failures
    from hrtem_ray.sweep.tune_adapter import DependentTrialSearcher

    plan = plan_trials(parse_study_spec(TINY_STUDY))
    broken, lost = plan.pretrain
    children = plan.children()
    failures = [
        {"model_id": broken.model_id, "kind": "trial", "parent_id": None},
        {"model_id": lost.model_id, "kind": "infrastructure", "parent_id": None},
        *(
            {"model_id": c.model_id, "kind": "skipped", "parent_id": c.parent_id}
            for c in plan.transfer
        ),
    ]
    excluded = _final_failures(failures)
    assert excluded == {broken.model_id} | {c.model_id for c in children[broken.model_id]}

    searcher = DependentTrialSearcher(plan, done=set(), excluded=excluded)
    first = searcher.suggest("t0")["trial"]
    assert first["model_id"] == lost.model_id  # the lost pretrain model runs again
    handed = [searcher.suggest(f"b{i}")["trial"]["model_id"] for i in range(len(plan.baseline))]
    assert set(handed) == {b.model_id for b in plan.baseline}
    assert searcher.suggest("wait") is None  # its children wait for it
    searcher.on_trial_complete("t0", {"finished": True, "failed": False})
    for i in range(len(plan.baseline)):
        searcher.on_trial_complete(f"b{i}", {"finished": True, "failed": False})
    kids = [
        searcher.suggest(f"k{i}")["trial"]["model_id"] for i in range(len(children[lost.model_id]))
    ]
    assert set(kids) == {c.model_id for c in children[lost.model_id]}
    for i in range(len(kids)):
        searcher.on_trial_complete(f"k{i}", {"finished": True, "failed": False})
    assert searcher.suggest("end") == Searcher.FINISHED
    assert searcher.skipped == []


def test_searcher_skips_the_children_of_a_trial_that_reported_failure(tmp_path):
    from hrtem_ray.sweep.tune_adapter import DependentTrialSearcher

    plan = plan_trials(parse_study_spec(TINY_STUDY))
    searcher = DependentTrialSearcher(plan)
    first = searcher.suggest("p0")["trial"]["model_id"]
    searcher.suggest("p1")
    searcher.on_trial_complete("p0", {"finished": True, "failed": True})  # e.g. a NaN loss
    assert {t.model_id for t, _ in searcher.skipped} == {c.model_id for c in plan.children()[first]}
    # Tune's experiment state: save and restore carry the queues over
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = DependentTrialSearcher(plan)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.pending == searcher.pending and len(restored.skipped) == 4


@pytest.mark.slow
def test_per_model_parents_are_trained_used_and_deleted(ray_cluster, tiny_dataset_root, tmp_path):
    """``transfer.parents: per_model`` through the real sweep, with the study's loss.

    Every transfer model has a parent of its own, whose checkpoint is gone once the child
    is stored; a rerun treats those deleted checkpoints as no damage; a child made not done
    again has its parent trained again first.
    """
    transfer = {"lr": [1e-4], "n_images": [2], "freeze": ["none"], "parents": "per_model"}
    study = tiny_study(
        tmp_path,
        tiny_dataset_root,
        domains={"pretrain": ["0"], "transfer": ["-10", "10"], "eval": ["0", "10"]},
        transfer=transfer,
        baseline=None,
        training={"epochs": 1, "batch_size": 4, "loss": "softmax_cross_entropy"},
    )
    report = study.sweep()
    assert report.finished and report.failed == []
    table = study.results()
    rows = table.unique("model_id")
    transfers = rows.filter(pl.col("phase") == "transfer")
    parents = rows.filter(pl.col("phase") == "pretrain")
    assert transfers.height == parents.height == 2
    assert sorted(transfers["parent_id"]) == sorted(parents["model_id"])  # one distinct parent each
    assert transfers["seed"].n_unique() == 2
    for parent in parents["model_id"]:
        assert results.checkpoint_files(str(study.study_root), parent) == {}
    assert set(table["loss_function"]) == {"softmax_cross_entropy"}
    assert set(table["train_device"]) == {"cpu"}
    assert set(table["trials_sharing_device"]) == {len(os.sched_getaffinity(0))}
    again = study.sweep()  # deleted checkpoints of parents whose child is done
    assert again.finished and again.completed == 0
    assert results.read_quarantine_notes(str(study.study_root)) == []  # not treated as damage
    # a child no longer done: its parent (done, checkpoint deleted) must train again first
    child = plan_trials(study.spec).transfer[0]
    storage.remove(results.result_path(str(study.study_root), child))
    third = study.sweep()
    assert third.finished and third.completed == 2
    (note,) = results.read_quarantine_notes(str(study.study_root))
    assert f"{child.parent_id}.parquet" in note["path"] and "missing" in note["reason"]
    assert results.checkpoint_files(str(study.study_root), str(child.parent_id)) == {}


def test_a_shared_parent_checkpoint_goes_only_after_its_last_child(tmp_path):
    """``delete_parent_checkpoints`` with shared parents: kept while any child still needs it."""
    from hrtem_ray.sweep.execute import release_parent_checkpoint

    transfer = {**TINY_STUDY["transfer"], "delete_parent_checkpoints": True}
    spec = parse_study_spec({**TINY_STUDY, "transfer": transfer}, source="tests")
    plan = plan_trials(spec)
    parent = plan.pretrain[0]
    children = plan.children()[parent.model_id]
    root = str(tmp_path)
    checkpoint = Path(results.checkpoint_path(root, parent.model_id))
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.pt").write_bytes(b"weights")
    assert not release_parent_checkpoint(spec, parent, root)  # a pretrain trial: nothing
    for child in children[:-1]:
        storage.write_bytes_atomic(results.result_path(root, child), b"rows")
        assert not release_parent_checkpoint(spec, child, root)
        assert checkpoint.exists()
    storage.write_bytes_atomic(results.result_path(root, children[-1]), b"rows")
    default = parse_study_spec(TINY_STUDY, source="tests")  # shared: kept by default
    assert not release_parent_checkpoint(default, children[-1], root) and checkpoint.exists()
    assert release_parent_checkpoint(spec, children[-1], root)
    assert not checkpoint.exists()
