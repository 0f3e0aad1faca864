"""Running one trial of a study: plain functions, usable without a Ray session.

:func:`execute_trial` loads the trial's images from the dataset, builds the
model (or loads the parent's checkpoint for a transfer trial), trains the
stage, evaluates it on every eval domain and writes the checkpoint, history
and result rows to the study's storage. The sweep engine calls it inside a
Ray Tune trial; the benchmark calls it directly. The only Ray call is the node id
recorded with the result (:func:`hrtem_ray.cluster.runtime.node_id`: the host name outside Ray).

Parent checkpoints
------------------
When the spec deletes parent checkpoints (:attr:`hrtem_ray.spec.study.StudySpec.deletes_parent_checkpoints`,
on by default for ``transfer.parents: per_model``), a transfer trial deletes its parent's
checkpoint right after its own result rows are written, once every planned child of that
parent has its result (:func:`release_parent_checkpoint`). Until then the checkpoint stays,
so a retried child still finds it. A sweep that later finds a done parent without its
checkpoint treats it as damage only while a child of it is not done (the check of
:mod:`hrtem_ray.sweep.check` looks only at parents with children still to run): such a parent is
trained again, then its child.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from hrtem_ray.cluster.runtime import node_id
from hrtem_ray.dataset.readers import read_images
from hrtem_ray.learning.model import build_model
from hrtem_ray.learning.train import (
    evaluate,
    has_converged,
    load_checkpoint,
    save_checkpoint,
    select_device,
    train_stage,
)
from hrtem_ray.spec.study import AugmentSpec, StudySpec
from hrtem_ray.store import storage
from hrtem_ray.store.digest import sha256_file
from hrtem_ray.sweep import results
from hrtem_ray.sweep.trials import Trial, plan_trials, stage_steps


@dataclass(frozen=True)
class TrialOutcome:
    """What a finished trial reports."""

    model_id: str
    best_epoch: int
    best_val_loss: float
    train_seconds: float
    node_id: str
    converged: bool | None = None


@lru_cache(maxsize=64)
def _images(
    dataset_root: str, domain: str, split: str, n: int | None, draw_seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images of a selection (:func:`~hrtem_ray.dataset.readers.read_images`), cached per
    worker process (trials reuse their workers)."""
    selection = read_images(dataset_root, domain, split, n, draw_seed)
    return selection.images, selection.masks


def training_set(trial: Trial, dataset_root: str) -> tuple[np.ndarray, np.ndarray]:
    """The images a trial trains on: the first n of its domain(s) by structure id, except
    its target images (a transfer's, a baseline's target part, a threshold's tiles),
    drawn with its seed under ``training.target_images: random`` (:attr:`Trial.draw_seed`)."""
    if trial.phase == "pretrain":
        return _images(dataset_root, trial.pretrain_domain, "train", trial.n_pretrain)
    if trial.phase == "threshold":
        return _images(
            dataset_root, trial.pretrain_domain, "train", trial.n_pretrain, trial.draw_seed
        )
    if trial.phase == "transfer":
        return _images(
            dataset_root, str(trial.transfer_domain), "train", trial.n_transfer, trial.draw_seed
        )
    parts = [
        (trial.pretrain_domain, trial.n_pretrain, None),
        (str(trial.transfer_domain), trial.n_transfer, trial.draw_seed),
    ]
    sets = [_images(dataset_root, d, "train", n, seed) for d, n, seed in parts if n]
    return np.concatenate([s[0] for s in sets]), np.concatenate([s[1] for s in sets])


def selection_set(
    spec: StudySpec, trial: Trial, dataset_root: str
) -> tuple[np.ndarray, np.ndarray]:
    """The images a trial's best epoch is chosen on: ``val`` of its own training domain."""
    return _images(dataset_root, trial.train_domain, "val", spec.training.n_val)


def scoring_splits(spec: StudySpec, dataset_root: str) -> dict[str, str]:
    """The split every eval domain is scored on (:meth:`StudySpec.scoring_split`).

    An imported domain's test split exists when its import held micrographs out whole
    (read from the dataset's manifest).
    """
    imported_test = set()
    if spec.domains.imported:
        from hrtem_ray.dataset.micrographs import imported_domains

        found = imported_domains(dataset_root)
        imported_test = {n for n, d in found.items() if d.images.get("test", 0) > 0}
    return {
        domain: spec.scoring_split(domain, imported_test=domain in imported_test)
        for domain in spec.domains_for("eval")
    }


def scoring_sets(
    spec: StudySpec,
    dataset_root: str,
    domains: list[str] | None = None,
    splits: Mapping[str, str] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The images every eval domain's metrics are computed on (:func:`scoring_splits`).

    ``test`` images: all of them; ``val`` images: the first ``training.n_val`` (all when
    not set), as the model selection sees them. ``domains``: only these eval domains;
    ``splits``: :func:`scoring_splits` when the caller has read them already.
    """
    out = {}
    splits = scoring_splits(spec, dataset_root) if splits is None else splits
    for domain, split in splits.items():
        if domains is not None and domain not in domains:
            continue
        n = spec.training.n_val if split == "val" else None
        out[domain] = _images(dataset_root, domain, split, n)
    return out


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
            "sha256": sha256_file(path),
        }
    return listing


def _store_checkpoint(root: str, model_id: str, model, optimizer, metadata: dict) -> None:
    """Store a checkpoint so that readers never see it half written: metadata.json goes last.

    ``metadata.json`` lists every other file with its size and SHA-256 (``files``), so
    that a missing, truncated or altered file is found without loading the model
    (:func:`hrtem_ray.sweep.results.checkpoint_problem`).
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


def device_name(device: str | torch.device | None) -> str:
    """What a trial's time was measured on: ``"cpu"``, or ``"cuda:N <GPU name>"``.

    Parameters
    ----------
    device
        The trial's device; ``None``: :func:`hrtem_ray.learning.train.select_device`'s choice.
    """
    resolved = select_device(device)
    if resolved.type != "cuda":
        return resolved.type
    index = resolved.index if resolved.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def node_cpus() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` without one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def trials_sharing_device(spec: StudySpec, device: str | torch.device | None) -> int:
    """The most trials that the spec's resources let share the device a trial trains on.

    On a GPU ``floor(1 / resources.gpu)`` (1 with ``gpu: 0``: a trial given a GPU outside
    Ray's packing); on the CPU ``floor(node_cpus() / resources.cpu)``; at most
    ``resources.max_concurrent_trials`` when set; at least 1. Timings of trials with a
    value above 1 may be slowed by their neighbours.
    """
    resources = spec.resources
    if select_device(device).type == "cuda":
        most = math.floor(1 / resources.gpu + 1e-9) if resources.gpu > 0 else 1
    else:
        most = math.floor(node_cpus() / resources.cpu + 1e-9)
    if resources.max_concurrent_trials is not None:
        most = min(most, resources.max_concurrent_trials)
    return max(1, most)


def release_parent_checkpoint(spec: StudySpec, trial: Trial, study_root: str) -> bool:
    """Delete a transfer trial's parent checkpoint if no planned child needs it any more.

    Call only after ``trial``'s result rows are written. Does nothing unless the spec
    deletes parent checkpoints (:attr:`~hrtem_ray.spec.study.StudySpec.deletes_parent_checkpoints`).
    Under ``transfer.parents: per_model`` the trial is its parent's only child; with
    shared parents the checkpoint goes once every child of the parent in the current plan
    has its result file (two children finishing together may both keep it: harmless).

    Returns
    -------
    bool
        Whether the checkpoint was deleted.
    """
    if trial.phase != "transfer" or trial.parent_id is None or not spec.deletes_parent_checkpoints:
        return False
    if spec.transfer is not None and spec.transfer.parents == "shared":
        siblings = plan_trials(spec).children().get(trial.parent_id, [])
        pending = [
            s
            for s in siblings
            if s.model_id != trial.model_id
            and not storage.exists(results.result_path(study_root, s))
        ]
        if pending:
            return False
    storage.remove(results.checkpoint_path(study_root, trial.parent_id))
    return True


def _epoch_limit(spec: StudySpec, trial: Trial, n_train_images: int) -> int:
    """The most epochs a trial's stage trains: the spec's, or those its step budget spans."""
    if trial.max_steps is None:
        return spec.training.epoch_limit
    return math.ceil(trial.max_steps / stage_steps(n_train_images, 1, spec.training.batch_size))


def execute_threshold(
    spec: StudySpec, trial: Trial, *, dataset_root: str, study_root: str
) -> TrialOutcome:
    """Fit and score a blur-and-Otsu baseline (``phase: threshold``); nothing is trained.

    The blur and polarity are chosen on the first ``n_pretrain`` training tiles of the
    imported domain (the tiles a transfer model of that size trains on;
    :func:`hrtem_ray.learning.threshold.fit_threshold`); the row is scored on the
    domain's scoring split (:func:`scoring_splits`), like every network. Loss columns are
    null (a threshold gives no probabilities).
    """
    from hrtem_ray.learning.threshold import fit_threshold, pooled_iou, threshold_segment

    started_at = time.time()
    domain = trial.pretrain_domain
    images, masks = training_set(trial, dataset_root)
    fitted = fit_threshold(images, masks)
    splits = scoring_splits(spec, dataset_root)
    test_images, test_masks = scoring_sets(spec, dataset_root, [domain], splits)[domain]
    iou = pooled_iou(threshold_segment(test_images, fitted.sigma_px, fitted.polarity), test_masks)
    finished_at = time.time()
    node = node_id()
    rows = results.result_rows(
        trial,
        study=spec.dataset.axis,
        epochs=0,
        metrics={domain: results.ThresholdMetrics(iou, fitted.sigma_px, fitted.polarity)},
        best_epoch=0,
        train_seconds=finished_at - started_at,
        node_id=node,
        started_at=started_at,
        finished_at=finished_at,
        loss_function=spec.training.loss,
        train_device="cpu",
        eval_splits={domain: splits[domain]},
        train_steps=0,
    )
    results.write_result(study_root, trial, rows)
    return TrialOutcome(trial.model_id, 0, math.nan, finished_at - started_at, node, None)


def execute_trial(
    spec: StudySpec,
    trial: Trial,
    *,
    dataset_root: str,
    study_root: str,
    num_threads: int | None = None,
    device: str | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    sharing_device: int | None = None,
) -> TrialOutcome:
    """Train, evaluate and store one trial; the result rows are written last.

    The stage trains fixed epochs, stops early (``training.max_epochs`` with
    ``patience``), or spends a mixture's step budget (``baseline.match: steps``). The rows
    record the epochs and steps trained, whether the model converged
    (:func:`hrtem_ray.learning.train.has_converged`), the loss function (``training.loss``),
    the device (:func:`device_name`) and how many trials may share it (``sharing_device``,
    default :func:`trials_sharing_device`). A transfer trial then releases its parent's checkpoint
    (:func:`release_parent_checkpoint`).

    Raises
    ------
    hrtem_ray.learning.train.NonFiniteLossError
        If the loss becomes NaN or infinite (nothing is written).
    ParentCheckpointError
        If a transfer trial's parent checkpoint is unusable (the parent's result is
        then quarantined, so that the next sweep trains the parent again first).
    """
    if trial.phase == "threshold":
        return execute_threshold(spec, trial, dataset_root=dataset_root, study_root=study_root)
    started_at = time.time()
    train_images, train_masks = training_set(trial, dataset_root)
    val_images, val_masks = selection_set(spec, trial, dataset_root)
    splits = scoring_splits(spec, dataset_root)
    scoring = scoring_sets(spec, dataset_root, splits=splits)
    if trial.phase == "transfer":
        model, _ = _load_parent(study_root, str(trial.parent_id), trial.model_id)
    else:
        model = build_model(spec.model, seed=trial.seed)
    initial_digest = state_digest(model)
    training = spec.training
    stage = train_stage(
        model,
        train_images,
        train_masks,
        val_images,
        val_masks,
        lr=trial.lr,
        epochs=_epoch_limit(spec, trial, len(train_images)),
        batch_size=training.batch_size,
        lr_decay=training.lr_decay,
        seed=trial.seed,
        freeze=trial.freeze,
        device=device,
        num_threads=num_threads,
        on_epoch=on_epoch,
        loss=training.loss,
        patience=training.patience if training.stops_early else None,
        min_delta=training.min_delta,
        min_steps=training.min_steps,
        max_steps=trial.max_steps,
        augmentation=(
            None if trial.augment is None else AugmentSpec.model_validate_json(trial.augment)
        ),
    )
    converged = has_converged(
        stage.best_epoch, stage.epochs_trained, training.patience, stage.stopped_on_patience
    )
    metrics = evaluate(
        model,
        scoring,
        batch_size=spec.training.batch_size,
        device=device,
        loss=spec.training.loss,
        tta=spec.training.tta,
    )
    finished_at = time.time()
    node = node_id()
    metadata = {
        "model_id": trial.model_id,
        "parent_id": trial.parent_id,
        "initial_digest": initial_digest,
        "best_digest": state_digest(model),
        "best_epoch": stage.best_epoch,
        "epochs_trained": stage.epochs_trained,
        "stopped_on_patience": stage.stopped_on_patience,
        "converged": converged,
        "trainable_parameters": stage.trainable_parameters,
        "loss_function": spec.training.loss,
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
        epochs=stage.epochs_trained,
        metrics=metrics,
        best_epoch=stage.best_epoch,
        train_seconds=stage.train_seconds,
        node_id=node,
        started_at=started_at,
        finished_at=finished_at,
        loss_function=spec.training.loss,
        train_device=device_name(device),
        trials_sharing_device=(
            sharing_device if sharing_device is not None else trials_sharing_device(spec, device)
        ),
        converged=converged,
        patience=training.patience,
        max_epochs=training.max_epochs,
        min_delta=training.min_delta,
        min_steps=training.min_steps,
        train_steps=stage.steps,
        eval_splits=splits,
        tta=spec.training.tta,
        val_loss=stage.best_val_loss,
        epoch_seconds=statistics.median(h["seconds"] for h in stage.history),
        epoch_cpu_seconds=(
            statistics.median(h["cpu_seconds"] for h in stage.history)
            if select_device(device).type == "cpu"
            else None
        ),
    )
    results.write_result(study_root, trial, rows)
    release_parent_checkpoint(spec, trial, study_root)
    return TrialOutcome(
        trial.model_id, stage.best_epoch, stage.best_val_loss, stage.train_seconds, node, converged
    )


__all__ = [
    "ParentCheckpointError",
    "TrialOutcome",
    "device_name",
    "execute_threshold",
    "execute_trial",
    "node_cpus",
    "release_parent_checkpoint",
    "state_digest",
    "training_set",
    "scoring_sets",
    "scoring_splits",
    "selection_set",
    "trials_sharing_device",
]
