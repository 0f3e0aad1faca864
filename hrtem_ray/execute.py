"""Running one trial of a study: plain functions, usable without a Ray session.

:func:`execute_trial` loads the trial's images from the dataset, builds the
model (or loads the parent's checkpoint for a transfer trial), trains the
stage, evaluates it on every eval domain and writes the checkpoint, history
and result rows to the study's storage. The sweep engine calls it inside a
Ray Tune trial; the benchmark calls it directly. The only Ray call is the node id
recorded with the result (:func:`hrtem_ray.runtime.node_id`: the host name outside Ray).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from hrtem_ray import data, results, storage
from hrtem_ray.config import StudySpec
from hrtem_ray.model import build_model
from hrtem_ray.runtime import node_id
from hrtem_ray.train import evaluate, load_checkpoint, save_checkpoint, train_stage
from hrtem_ray.trials import Trial


@dataclass(frozen=True)
class TrialOutcome:
    """What a finished trial reports."""

    model_id: str
    best_epoch: int
    best_val_loss: float
    train_seconds: float
    node_id: str


@lru_cache(maxsize=64)
def _images(
    dataset_root: str, domain: str, split: str, n: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Images of a selection, cached per worker process (trials reuse their workers)."""
    selection = data.read_images(dataset_root, domain, split, n)
    return selection.images, selection.masks


def training_set(trial: Trial, dataset_root: str) -> tuple[np.ndarray, np.ndarray]:
    """The images a trial trains on: the first n of its domain(s), by structure id."""
    if trial.phase == "pretrain":
        return _images(dataset_root, trial.pretrain_domain, "train", trial.n_pretrain)
    if trial.phase == "transfer":
        return _images(dataset_root, str(trial.transfer_domain), "train", trial.n_transfer)
    parts = [
        (trial.pretrain_domain, trial.n_pretrain),
        (str(trial.transfer_domain), trial.n_transfer),
    ]
    sets = [_images(dataset_root, d, "train", n) for d, n in parts if n]
    return np.concatenate([s[0] for s in sets]), np.concatenate([s[1] for s in sets])


def validation_sets(
    spec: StudySpec, trial: Trial, dataset_root: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Validation sets of every eval domain, plus the trial's own training domain."""
    domains = list(spec.domains_for("eval"))
    if trial.train_domain not in domains:
        domains.append(trial.train_domain)
    return {d: _images(dataset_root, d, "val", spec.training.n_val) for d in domains}


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names and raw bytes), to check weight handoffs."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class ParentCheckpointError(RuntimeError):
    """A transfer trial's parent checkpoint is missing, incomplete or cannot be loaded.

    The parent's result has been quarantined, so the next sweep trains the parent
    again and then this trial.
    """


def _invalid_parent(
    root: str, parent_id: str, problem: str, child_id: str
) -> ParentCheckpointError:
    """Invalidate a parent whose checkpoint is unusable; the error for the child to raise."""
    moved = results.invalidate_result(
        root, parent_id, f"{problem} (found by transfer trial {child_id})"
    )
    action = (
        "its result was quarantined: rerun the sweep to train it again, then its children"
        if moved
        else "rerun the sweep to train it again, then its children"
    )
    return ParentCheckpointError(f"{problem}; parent {parent_id}: {action}")


def _load_parent(root: str, parent_id: str, child_id: str = "?") -> tuple[torch.nn.Module, dict]:
    """Load a parent's checkpoint, or invalidate the parent if the checkpoint is unusable.

    Raises
    ------
    ParentCheckpointError
        If the checkpoint is missing or incomplete (:func:`results.checkpoint_problem`),
        or fails to load and a full check of its files confirms the damage.
    """
    problem = results.checkpoint_problem(root, parent_id)
    if problem is not None:
        raise _invalid_parent(root, parent_id, problem, child_id)
    location = results.checkpoint_path(root, parent_id)
    try:
        with tempfile.TemporaryDirectory(prefix="hrtem-ckpt-") as tmp:
            storage.download_dir(location, tmp)
            return load_checkpoint(tmp)
    except Exception as exc:
        # a transient read error is not damage: invalidate only what a full check confirms
        problem = results.checkpoint_problem(root, parent_id, deep=True)
        if problem is None:
            raise
        raise _invalid_parent(root, parent_id, problem, child_id) from exc


def _file_listing(folder: Path) -> dict[str, dict]:
    """Size and SHA-256 of every file below ``folder`` (relative POSIX path -> record)."""
    listing = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        listing[path.relative_to(folder).as_posix()] = {
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    return listing


def _store_checkpoint(root: str, model_id: str, model, optimizer, metadata: dict) -> None:
    """Store a checkpoint so that readers never see it half written: metadata.json goes last.

    ``metadata.json`` lists every other file with its size and SHA-256 (``files``), so
    that a missing, truncated or altered file is found without loading the model
    (:func:`hrtem_ray.results.checkpoint_problem`).
    """
    target = results.checkpoint_path(root, model_id)
    with tempfile.TemporaryDirectory(prefix="hrtem-ckpt-") as tmp:
        folder = Path(tmp) / "ckpt"
        save_checkpoint(folder, model, optimizer, metadata)
        meta = json.loads((folder / "metadata.json").read_text())
        (folder / "metadata.json").unlink()
        meta["files"] = _file_listing(folder)
        storage.remove(storage.join(target, "metadata.json"))
        storage.upload_dir(folder, target)
        text = json.dumps(meta, indent=2, sort_keys=True, default=str)
        storage.write_bytes_atomic(storage.join(target, "metadata.json"), text.encode())


def execute_trial(
    spec: StudySpec,
    trial: Trial,
    *,
    dataset_root: str,
    study_root: str,
    num_threads: int | None = None,
    device: str | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrialOutcome:
    """Train, evaluate and store one trial; the result rows are written last.

    Raises
    ------
    hrtem_ray.train.NonFiniteLossError
        If the loss becomes NaN or infinite (nothing is written).
    ParentCheckpointError
        If a transfer trial's parent checkpoint is unusable (the parent's result is
        then quarantined, so that the next sweep trains the parent again first).
    """
    started_at = time.time()
    train_images, train_masks = training_set(trial, dataset_root)
    val_sets = validation_sets(spec, trial, dataset_root)
    if trial.phase == "transfer":
        model, _ = _load_parent(study_root, str(trial.parent_id), trial.model_id)
    else:
        model = build_model(spec.model, seed=trial.seed)
    initial_digest = state_digest(model)
    val_images, val_masks = val_sets[trial.train_domain]
    stage = train_stage(
        model,
        train_images,
        train_masks,
        val_images,
        val_masks,
        lr=trial.lr,
        epochs=spec.training.epochs,
        batch_size=spec.training.batch_size,
        lr_decay=spec.training.lr_decay,
        seed=trial.seed,
        freeze=trial.freeze,
        device=device,
        num_threads=num_threads,
        on_epoch=on_epoch,
    )
    eval_domains = spec.domains_for("eval")
    metrics = evaluate(
        model,
        {d: val_sets[d] for d in eval_domains},
        batch_size=spec.training.batch_size,
        device=device,
    )
    finished_at = time.time()
    node = node_id()
    metadata = {
        "model_id": trial.model_id,
        "parent_id": trial.parent_id,
        "initial_digest": initial_digest,
        "best_digest": state_digest(model),
        "best_epoch": stage.best_epoch,
        "trainable_parameters": stage.trainable_parameters,
        "node_id": node,
        "started_at": started_at,
        "finished_at": finished_at,
    }
    if trial.phase == "pretrain" or spec.keep_checkpoints == "all":
        _store_checkpoint(study_root, trial.model_id, model, stage.optimizer, metadata)
    results.write_history(study_root, trial.model_id, stage.history, metadata)
    rows = results.result_rows(
        trial,
        study=spec.dataset.axis,
        epochs=spec.training.epochs,
        metrics=metrics,
        best_epoch=stage.best_epoch,
        train_seconds=stage.train_seconds,
        node_id=node,
        started_at=started_at,
        finished_at=finished_at,
    )
    results.write_result(study_root, trial, rows)
    return TrialOutcome(
        trial.model_id, stage.best_epoch, stage.best_val_loss, stage.train_seconds, node
    )


__all__ = [
    "ParentCheckpointError",
    "TrialOutcome",
    "execute_trial",
    "state_digest",
    "training_set",
    "validation_sets",
]
