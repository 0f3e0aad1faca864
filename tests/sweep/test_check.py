"""Damaged storage heals: unreadable results and histories, missing checkpoints (issue 11 §3).

Every damage test starts from a copy of one undamaged tiny study, damages it,
reruns the sweep (or ``hrtem-ray check --repair`` then the sweep) and ends with
a results table equal to the undamaged one: the same model ids and the same
losses (training is seeded and deterministic on CPU). Models that were not
damaged must not be trained again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from helpers import TINY_DATASET, make_bucket, run_cli, s3_env

from hrtem_ray.spec.config import parse_study_spec
from hrtem_ray.store import storage
from hrtem_ray.study import Study
from hrtem_ray.sweep import results
from hrtem_ray.sweep.check import heal_before_sweep, inspect_study, repair
from hrtem_ray.sweep.trials import plan_trials

HEAL_STUDY = {
    "name": "heal",
    "dataset": TINY_DATASET,
    "domains": {"pretrain": ["-10", "0"], "transfer": ["10"]},
    "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
    "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["none", "encoder"]},
    "baseline": None,
    "training": {"epochs": 1, "batch_size": 4},
    "resources": {"cpu": 1, "max_failures": 1},
}
METRICS = ["loss", "cross_entropy", "iou"]


def heal_spec(dataset_root: Path):
    raw = {**HEAL_STUDY, "dataset": {**TINY_DATASET, "path": str(dataset_root)}}
    return parse_study_spec(raw, source="tests")


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING lines the ``hrtem_ray`` loggers emitted (the CLI prints them on stderr)."""
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def comparable(table: pl.DataFrame) -> pl.DataFrame:
    return table.sort("model_id", "eval_domain").select(
        "model_id", "eval_domain", "best_epoch", *METRICS
    )


def assert_same_table(table: pl.DataFrame, reference: pl.DataFrame) -> None:
    got, want = comparable(table), comparable(reference)
    assert got["model_id"].to_list() == want["model_id"].to_list()
    assert got["eval_domain"].to_list() == want["eval_domain"].to_list()
    assert got["best_epoch"].to_list() == want["best_epoch"].to_list()
    for column in METRICS:
        np.testing.assert_allclose(got[column].to_numpy(), want[column].to_numpy(), rtol=1e-6)


def finished_at(root: str) -> dict[str, float]:
    """When each model's result was written (a retrained model gets a new time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", results.DamagedFileWarning)  # damaged files: no time
        table = results.read_results(root)
    return dict(table.group_by("model_id").agg(pl.col("finished_at").first()).iter_rows())


@pytest.fixture(scope="module")
def reference(ray_cluster, tiny_dataset_root, tmp_path_factory):
    """The undamaged study: its root and its results table."""
    study = Study(heal_spec(tiny_dataset_root), out=tmp_path_factory.mktemp("heal-ref") / "study")
    report = study.sweep()
    assert report.failed == []
    table = study.results()
    assert table.height == 6 * 3  # 2 pretrain + 4 transfer models, 3 eval domains
    return study.study_root, table


def copy_of(reference, tmp_path: Path, tiny_dataset_root: Path) -> Study:
    """A copy of the reference study's storage (without Tune's folders)."""
    root, _ = reference
    target = tmp_path / "study"
    shutil.copytree(root, target, ignore=shutil.ignore_patterns("tune"))
    return Study(heal_spec(tiny_dataset_root), out=target)


def parent_and_children(spec) -> tuple[str, list[str]]:
    plan = plan_trials(spec)
    parent = plan.pretrain[0].model_id
    return parent, [t.model_id for t in plan.children()[parent]]


# ---------------------------------------------------------------------------------------------
# the three damage kinds, healed by the next sweep


@pytest.mark.slow
def test_garbage_result_file_is_quarantined_and_retrained(
    reference, tiny_dataset_root, tmp_path, caplog
):
    study = copy_of(reference, tmp_path, tiny_dataset_root)
    _, children = parent_and_children(study.spec)
    before = finished_at(study.study_root)
    damaged = Path(study.study_root) / "results" / "transfer" / f"{children[0]}.parquet"
    damaged.write_bytes(b"this is not a parquet file" * 10)
    assert children[0] not in results.finished_ids(study.study_root)

    report = study.sweep()

    warned = [line for line in warnings_logged(caplog) if line.startswith("warning:")]
    assert any(str(damaged) in line for line in warned), caplog.messages
    moved = Path(study.study_root) / "quarantine" / "results" / "transfer" / damaged.name
    assert moved.read_bytes().startswith(b"this is not a parquet file")
    note = json.loads(Path(f"{moved}.quarantine.json").read_text())
    assert note["path"] == str(damaged) and "unreadable Parquet" in note["reason"]
    assert report.failed == [] and report.completed == 1
    assert_same_table(study.results(), reference[1])
    after = finished_at(study.study_root)
    assert after[children[0]] > before[children[0]]  # trained again
    assert {m: t for m, t in after.items() if m != children[0]} == {
        m: t for m, t in before.items() if m != children[0]
    }


@pytest.mark.slow
def test_truncated_history_file_retrains_its_model(reference, tiny_dataset_root, tmp_path, caplog):
    study = copy_of(reference, tmp_path, tiny_dataset_root)
    parent, _ = parent_and_children(study.spec)
    before = finished_at(study.study_root)
    history = Path(study.study_root) / "history" / f"{parent}.parquet"
    original = pq.read_table(history)
    data = history.read_bytes()
    history.write_bytes(data[: len(data) // 2])

    report = study.sweep()

    warned = [line for line in warnings_logged(caplog) if line.startswith("warning:")]
    assert any(str(history) in line for line in warned), caplog.messages
    assert (Path(study.study_root) / "quarantine" / "history" / history.name).exists()
    assert (
        Path(study.study_root) / "quarantine" / "results" / "pretrain" / f"{parent}.parquet"
    ).exists()
    assert report.failed == [] and report.completed == 1
    assert_same_table(study.results(), reference[1])
    healed = pq.read_table(history)
    assert healed["val_loss"].to_pylist() == pytest.approx(original["val_loss"].to_pylist())
    after = finished_at(study.study_root)
    assert after[parent] > before[parent]
    assert all(after[m] == t for m, t in before.items() if m != parent)


@pytest.mark.slow
def test_deleted_parent_checkpoint_retrains_parent_then_children(
    reference, tiny_dataset_root, tmp_path, caplog
):
    """Parent done, checkpoint deleted, one child still to run (an interrupted sweep)."""
    study = copy_of(reference, tmp_path, tiny_dataset_root)
    parent, children = parent_and_children(study.spec)
    before = finished_at(study.study_root)
    shutil.rmtree(storage.local_path(results.checkpoint_path(study.study_root, parent)))
    (Path(study.study_root) / "results" / "transfer" / f"{children[0]}.parquet").unlink()

    report = study.sweep()

    checkpoint = results.checkpoint_path(study.study_root, parent)
    warned = [line for line in warnings_logged(caplog) if line.startswith("warning:")]
    assert any(parent in line and "missing" in line for line in warned), caplog.messages
    assert report.failed == [] and report.completed == 2  # the parent, then its child
    assert results.checkpoint_problem(study.study_root, parent, deep=True) is None
    assert_same_table(study.results(), reference[1])
    after = finished_at(study.study_root)
    assert before[parent] < after[parent] < after[children[0]]  # parent first, then the child
    untouched = set(before) - {parent, children[0]}
    assert {m: after[m] for m in untouched} == {m: before[m] for m in untouched}
    assert storage.exists(storage.join(checkpoint, "metadata.json"))


# ---------------------------------------------------------------------------------------------
# check / check --repair


def _old_temp_file(folder: Path) -> Path:
    stray = folder / ".x.parquet.tmp-0123abcd"
    stray.write_bytes(b"partial")
    old = time.time() - 3600
    os.utime(stray, (old, old))
    return stray


@pytest.mark.slow
def test_check_reports_then_repair_lets_the_sweep_redo_exactly_that(
    reference, tiny_dataset_root, tmp_path
):
    study = copy_of(reference, tmp_path, tiny_dataset_root)
    root = Path(study.study_root)
    parent, children = parent_and_children(study.spec)
    other = plan_trials(study.spec).pretrain[1].model_id
    garbage = root / "results" / "transfer" / f"{children[1]}.parquet"
    garbage.write_bytes(b"\0" * 100)
    empty = root / "results" / "pretrain" / f"{other}.parquet"
    pq.write_table(pq.read_table(empty).slice(0, 0), empty)
    (root / "results" / "transfer" / f"{children[0]}.parquet").unlink()
    (storage.local_path(results.checkpoint_path(study.study_root, parent)) / "model.pt").unlink()
    stray = _old_temp_file(root / "results" / "pretrain")
    fresh = root / "history" / ".y.parquet.tmp-fresh"  # a write in progress: left alone
    fresh.write_bytes(b"partial")
    before = finished_at(study.study_root)

    proc = run_cli("check", root)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    for needle in (str(garbage), str(empty), "has no rows", str(stray), "model.pt is missing"):
        assert needle in proc.stdout, (needle, proc.stdout)
    assert str(fresh) not in proc.stdout
    assert garbage.exists() and stray.exists()  # without --repair nothing changes

    proc = run_cli("check", root, "--repair")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not stray.exists() and fresh.exists()
    assert (root / "quarantine" / "results" / "transfer" / garbage.name).exists()
    assert (root / "quarantine" / "results" / "pretrain" / f"{parent}.parquet").exists()
    assert (root / "quarantine" / "checkpoints" / parent / "metadata.json").exists()
    assert results.finished_ids(study.study_root) == set(before) - {parent, other, *children}
    proc = run_cli("check", root)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    report = study.sweep()
    assert report.failed == [] and report.completed == 4
    assert_same_table(study.results(), reference[1])
    after = finished_at(study.study_root)
    untouched = set(before) - {parent, other, *children}
    assert untouched and {m: after[m] for m in untouched} == {m: before[m] for m in untouched}


@pytest.mark.slow
def test_check_without_spec_checks_every_pretrain_checkpoint(
    reference, tiny_dataset_root, tmp_path
):
    """No study.json: every finished pretrain model's checkpoint counts (children unknown)."""
    root = tmp_path / "study"
    shutil.copytree(reference[0], root, ignore=shutil.ignore_patterns("tune", "study.json"))
    parent = sorted(p.stem for p in (root / "results" / "pretrain").glob("*.parquet"))[0]
    assert inspect_study(str(root)).healthy
    shutil.rmtree(root / "checkpoints" / parent)
    report = inspect_study(str(root))
    assert [(p.kind, p.model_id) for p in report.problems] == [("checkpoint", parent)]
    assert any("no spec" in note for note in report.notes)
    # with the spec, the parent's children are all done: its checkpoint is not needed
    with_spec = inspect_study(str(root), heal_spec(tiny_dataset_root))
    assert with_spec.healthy, with_spec.format()


def test_check_exit_codes_for_a_wrong_directory(tmp_path):
    proc = run_cli("check", tmp_path / "nothing")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (tmp_path / "results").mkdir()  # a results folder, not the study directory above it
    proc = run_cli("check", tmp_path / "results")
    assert proc.returncode == 2 and "not a study directory" in proc.stderr


@pytest.mark.slow
def test_check_and_repair_on_s3(reference, moto_endpoint, monkeypatch, tmp_path):
    for key, value in s3_env(moto_endpoint, tmp_path).items():
        monkeypatch.setenv(key, value)
    bucket = make_bucket(moto_endpoint)
    root = f"s3://{bucket}/studies/heal"
    local = Path(reference[0])
    for path in sorted(local.rglob("*")):
        relative = path.relative_to(local).as_posix()
        if path.is_file() and not relative.startswith("tune/"):
            storage.write_bytes_atomic(storage.join(root, relative), path.read_bytes())
    spec = parse_study_spec(storage.read_json(storage.join(root, "study.json"))["spec"], "t")
    parent, children = parent_and_children(spec)
    garbage = storage.join(root, "results", "transfer", f"{children[1]}.parquet")
    storage.write_bytes_atomic(garbage, b"PAR1 garbage")
    storage.remove(storage.join(root, "results", "transfer", f"{children[0]}.parquet"))
    storage.remove(storage.join(results.checkpoint_path(root, parent), "metadata.json"))

    proc = run_cli("check", root)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert garbage in proc.stdout and "no metadata.json" in proc.stdout
    assert storage.exists(garbage)

    proc = run_cli("check", root, "--repair")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    quarantined = storage.join(root, "quarantine", "results", "transfer", f"{children[1]}.parquet")
    assert storage.read_bytes(quarantined) == b"PAR1 garbage"
    note = storage.read_json(quarantined + ".quarantine.json")
    assert note["path"] == garbage
    assert storage.exists(storage.join(root, "quarantine", "checkpoints", parent, "model.pt"))
    assert not storage.exists(results.checkpoint_path(root, parent))
    assert parent not in results.finished_ids(root) and not storage.exists(garbage)
    assert run_cli("check", root).returncode == 0


# ---------------------------------------------------------------------------------------------
# validity of single files (no Ray)


def _result_table(trial) -> pa.Table:
    class Metric:
        loss, cross_entropy, iou = 0.5, 0.6, 0.1

    return results.result_rows(
        trial,
        study="defocus",
        epochs=1,
        metrics={"-10": Metric(), "0": Metric()},
        best_epoch=1,
        train_seconds=1.0,
        node_id="n",
        started_at=0.0,
        finished_at=1.0,
    )


DAMAGE = {
    "truncated": "unreadable Parquet",
    "garbage": "unreadable Parquet",
    "empty": "it has no rows",
    "noloss": "missing column(s) loss",
    "textloss": "wrong column type(s): loss is string",
    "renamed": "it holds model_id",
}


def _write_damaged(root: str, trial, kind: str) -> Path:
    """A result file of ``trial`` with one kind of damage."""
    path = Path(results.result_path(root, trial))
    table = _result_table(trial)
    if kind == "truncated":
        results.write_result(root, trial, table)
        path.write_bytes(path.read_bytes()[:-20])
    elif kind == "garbage":
        path.write_bytes(b"garbage" * 50)
    elif kind == "empty":
        pq.write_table(table.slice(0, 0), path)
    elif kind == "noloss":
        pq.write_table(table.drop_columns(["loss"]), path)
    elif kind == "textloss":
        column = pa.array(["x"] * table.num_rows)
        pq.write_table(table.set_column(table.schema.get_field_index("loss"), "loss", column), path)
    elif kind == "renamed":  # another model's rows under this model's name
        pq.write_table(_result_table(replace(trial, model_id="transfer-other")), path)
    return path


def test_every_kind_of_damaged_result_is_not_done_and_is_named(tmp_path, tiny_dataset_root):
    spec = heal_spec(tiny_dataset_root)
    good = plan_trials(spec).transfer[0]
    root = str(tmp_path)
    results.write_result(root, good, _result_table(good))
    paths = {}
    for kind in DAMAGE:
        trial = replace(good, model_id=f"transfer-{kind}")
        paths[trial.model_id] = _write_damaged(root, trial, kind)

    assert results.finished_ids(root) == {good.model_id}
    _, damaged = results.scan_results(root)
    found = {d.model_id: d.reason for d in damaged}
    assert set(found) == set(paths)
    for kind, reason in DAMAGE.items():
        assert found[f"transfer-{kind}"].startswith(reason), (kind, found[f"transfer-{kind}"])

    with pytest.warns(results.DamagedFileWarning) as caught:
        table = results.read_results(root)
    assert set(table["model_id"]) == {good.model_id}
    messages = " ".join(str(w.message) for w in caught)
    assert all(str(path) in messages for path in paths.values())

    # repair moves them all aside; what is left reads cleanly
    report = inspect_study(root, spec)
    assert {p.model_id for p in report.problems if p.kind == "result"} == set(paths)
    repair(report)
    assert inspect_study(root, spec).healthy
    assert all(not path.exists() for path in paths.values())
    notes = results.read_quarantine_notes(root)
    assert {Path(n["path"]).stem for n in notes} == set(paths)
    assert all(n["reason"] and n["time"] for n in notes)


def test_heal_before_sweep_invalidates_a_parent_without_checkpoint_only_if_needed(
    tmp_path, tiny_dataset_root, caplog
):
    spec = heal_spec(tiny_dataset_root)
    plan = plan_trials(spec)
    root = str(tmp_path)
    for trial in plan.all():
        results.write_result(root, trial, _result_table(trial))
    # every child is done: the missing checkpoints are not needed, nothing happens
    assert heal_before_sweep(root, plan) == [] and warnings_logged(caplog) == []
    parent = plan.pretrain[0].model_id
    child = plan.children()[parent][0]
    Path(results.result_path(root, child)).unlink()
    actions = heal_before_sweep(root, plan)
    assert len(actions) == 1 and parent in actions[0] and "missing" in actions[0]
    assert warnings_logged(caplog) == [f"warning: damaged storage: {actions[0]}"]
    assert results.finished_ids(root) == {t.model_id for t in plan.all()} - {parent, child.model_id}


def test_corrupt_checkpoint_bytes_are_found_by_digest_and_invalidate_the_parent(
    tmp_path, tiny_dataset_root
):
    from hrtem_ray.learning.model import build_model
    from hrtem_ray.sweep.execute import ParentCheckpointError, _load_parent, _store_checkpoint

    spec = heal_spec(tiny_dataset_root)
    parent = plan_trials(spec).pretrain[0]
    root = str(tmp_path)
    model = build_model(spec.model, seed=0)
    _store_checkpoint(root, parent.model_id, model, None, {"model_id": parent.model_id})
    results.write_result(root, parent, _result_table(parent))
    assert results.checkpoint_problem(root, parent.model_id, deep=True) is None
    loaded, _ = _load_parent(root, parent.model_id, "child")
    assert loaded is not None

    weights = Path(results.checkpoint_path(root, parent.model_id)) / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # same size, other bytes
    weights.write_bytes(bytes(data))
    assert results.checkpoint_problem(root, parent.model_id) is None  # sizes still match
    assert "digest" in results.checkpoint_problem(root, parent.model_id, deep=True)

    weights.write_bytes(bytes(data[:100]))  # truncated: found from the listing alone
    assert "100 bytes" in results.checkpoint_problem(root, parent.model_id)
    with pytest.raises(ParentCheckpointError, match=parent.model_id):
        _load_parent(root, parent.model_id, "child")
    assert parent.model_id not in results.finished_ids(root)
    notes = results.read_quarantine_notes(root)
    assert len(notes) == 1 and "found by transfer trial child" in notes[0]["reason"]


def test_quarantine_of_a_folder_on_s3_moves_every_file(moto_endpoint, monkeypatch, tmp_path):
    for key, value in s3_env(moto_endpoint, tmp_path).items():
        monkeypatch.setenv(key, value)
    root = f"s3://{make_bucket(moto_endpoint)}/study"
    folder = storage.join(root, "checkpoints", "m")
    for name in ("a.pt", "sub/b.pt", "metadata.json"):
        storage.write_bytes_atomic(storage.join(folder, name), name.encode())
    target = results.quarantine(root, folder, "test")
    assert target == storage.join(root, "quarantine", "checkpoints", "m")
    loc = storage.resolve(target)
    names = sorted(
        info.path[len(loc.path) + 1 :]
        for info in loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
        if info.type == pafs.FileType.File
    )
    assert names == ["a.pt", "metadata.json", "sub/b.pt"]
    assert not storage.exists(folder)
    assert results.quarantine(root, folder, "again") is None  # gone already: no error


def test_check_finds_a_truncated_shard_and_repair_leaves_it_to_the_simulation(
    tiny_dataset_root, tmp_path
):
    from helpers import tiny_dataset_spec

    from hrtem_ray.dataset import manifest

    root = tmp_path / "study"
    shutil.copytree(tiny_dataset_root, root / "data")
    assert inspect_study(str(root)).healthy
    shard = sorted((root / "data").rglob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])

    proc = run_cli("check", root)
    assert proc.returncode == 4 and str(shard) in proc.stdout, proc.stdout + proc.stderr
    report = inspect_study(str(root))
    assert [(p.kind, p.path) for p in report.problems] == [("shard", str(shard))]
    key = report.problems[0].shard_key

    repair(report)
    assert inspect_study(str(root)).healthy
    assert (root / "quarantine" / shard.relative_to(root)).exists()
    assert (root / "quarantine" / "data" / "_manifest" / f"{key}.json").exists()
    _, todo = manifest.shards_to_simulate(tiny_dataset_spec(), str(root / "data"))
    assert [t.key for t in todo] == [key]


def test_load_results_names_the_file_it_cannot_read(tmp_path, tiny_dataset_root):
    from hrtem_ray import analysis

    trial = plan_trials(heal_spec(tiny_dataset_root)).transfer[0]
    results.write_result(str(tmp_path), trial, _result_table(trial))
    bad = tmp_path / "results" / "transfer" / "transfer-bad.parquet"
    bad.write_bytes(b"garbage" * 20)
    with pytest.raises(ValueError, match=f"cannot read {bad}"):
        analysis.load_results(tmp_path / "results")
