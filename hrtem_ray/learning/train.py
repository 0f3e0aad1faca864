"""Training stages, evaluation and checkpoints (plain PyTorch, no Ray).

One function, :func:`train_stage`, runs every kind of stage of the reference study:

- pretraining: a fresh model (``build_model(spec, seed=seed)``) on one domain;
- transfer: a model loaded from the parent checkpoint (:func:`load_checkpoint`), with
  ``freeze="encoder"`` or ``"decoder"`` or ``"none"``;
- mixture baseline: a fresh model on ``np.concatenate`` of source and target images.

Losses
------
Two loss functions (``loss``, the spec's ``training.loss``), both against the two-class soft
labels ``(1 - mask, mask)``:

``cross_entropy`` (default)
    Cross-entropy of the logits. Its floor on a set is the mean entropy of the soft labels
    (:func:`label_entropy_floor`).
``softmax_cross_entropy``
    The reference study's: the network's softmax outputs fed to cross-entropy (which applies
    a softmax again, "double softmax"). With two classes the inner softmax leaves a logit
    difference ``z = p1 - p0`` in [-1, 1], and the per-pixel loss is
    ``-y log s(z) - (1 - y) log s(-z)`` (``s`` the logistic function), whose floor is reached
    at ``z* = clip(logit(y), -1, 1)``: ln(1 + e^-1) = 0.3133 for hard labels, the constant the
    study subtracted (:func:`softmax_cross_entropy_floor`).

Reported losses (``train_loss``, ``val_loss``, :class:`EvalMetrics` ``loss``) are *excess*
losses: the loss in use minus its floor on the same set (:func:`loss_floor`), so 0 is perfect.

Devices
-------
CUDA when available: training steps under bf16 autocast, channels_last, cuDNN deterministic
(no autotuning); evaluation (validation loss, :func:`evaluate`, :func:`predict`) in fp32 so
that the reported metrics do not carry bf16 rounding. Otherwise CPU: fp32 and channels_last
(bf16 autocast is slower on CPU). ``num_threads`` sets ``torch.set_num_threads`` for the
stage (the trial's cores; more threads than free cores is much slower) and the previous
count is restored afterwards. On CPU the same seed and thread count give bit-identical
results. On CUDA the backward of nearest-neighbour upsampling uses atomic additions, so
repeated runs agree only to rounding.

Epochs, early stopping and convergence
--------------------------------------
A stage trains ``epochs`` epochs, or fewer: with ``patience`` it stops once ``patience``
epochs in a row have not improved the validation loss by more than ``min_delta`` on the
best loss so far (:func:`epochs_without_improvement`), and with ``max_steps`` it stops
after that many optimizer steps (the last epoch then partial). The epoch with the lowest
validation loss is kept either way. :func:`has_converged` says whether a finished stage
converged. The history always holds every epoch trained.

Batch norm and freezing
-----------------------
A frozen part stays in eval mode during training (see :mod:`hrtem_ray.learning.model`): its batch-norm
layers use and keep the parent's running statistics.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hrtem_ray._version import __version__
from hrtem_ray.learning.augment import (
    augment,
    dihedral,
    epoch_order,
    inverse_symmetry,
    label_entropy_floor,
    realistic_augment,
    soft_labels,
    standardize,
)
from hrtem_ray.learning.calibration import (
    RELIABILITY_BINS,
    Reliability,
    reliability,
    reliability_from_sums,
    reliability_sums,
)
from hrtem_ray.learning.model import build_model, count_parameters
from hrtem_ray.learning.model import freeze as freeze_part
from hrtem_ray.spec.study import LOSS_FUNCTIONS, AugmentSpec, LossFunction
from hrtem_ray.spec.types import N_SYMMETRIES, Freeze, ModelSpec
from hrtem_ray.store import storage

__all__ = [
    "EvalMetrics",
    "NonFiniteLossError",
    "RELIABILITY_BINS",
    "Reliability",
    "StageResult",
    "early_stopping_epoch",
    "epochs_without_improvement",
    "evaluate",
    "forward",
    "has_converged",
    "label_entropy_floor",
    "load_checkpoint",
    "loss_floor",
    "predict",
    "prepare_model",
    "reliability",
    "save_checkpoint",
    "select_device",
    "softmax_cross_entropy_floor",
    "standardize",
    "train_epoch",
    "train_stage",
    "train_step",
    "torch_threads",
]

_CHECK_EVERY = 16  # steps between host syncs that check the loss for NaN/inf


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the stage stopped and produced no result."""


@dataclass
class StageResult:
    """Outcome of :func:`train_stage`.

    Attributes
    ----------
    history
        One dict per epoch: ``epoch`` (1-based), ``train_loss`` (mean excess loss of the
        epoch's steps, train mode, augmented), ``val_loss`` (excess loss on the validation
        set, eval mode), ``val_cross_entropy`` (the raw loss in use on the validation set),
        ``val_iou``, ``lr``, ``steps`` (optimizer steps of the epoch), ``seconds`` (wall
        time of the epoch including validation) and ``cpu_seconds`` (the process's CPU time
        over the same span: on a CPU the work done, whatever else shares the cores).
        Excess losses are the loss in use minus its floor on the same set
        (:func:`loss_floor`). Every epoch trained is there.
    best_epoch
        Epoch with the lowest ``val_loss`` (the earliest on ties).
    best_state
        ``state_dict`` of the model after ``best_epoch``, contiguous CPU tensors.
    train_seconds
        Wall time of the whole stage.
    trainable_parameters
        Trainable parameter count after freezing.
    optimizer
        The optimizer after the last epoch (for :func:`save_checkpoint`).
    stopped_on_patience
        Whether the patience criterion ended training (also when it was met at the last
        allowed epoch).
    """

    history: list[dict]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    train_seconds: float
    trainable_parameters: int = 0
    optimizer: torch.optim.Optimizer | None = None
    stopped_on_patience: bool = False

    @property
    def epochs_trained(self) -> int:
        """Epochs the stage trained (the last one possibly partial under ``max_steps``)."""
        return len(self.history)

    @property
    def steps(self) -> int:
        """Optimizer steps of the whole stage."""
        return sum(int(h["steps"]) for h in self.history)

    @property
    def best_val_loss(self) -> float:
        """``val_loss`` of the best epoch."""
        return self.history[self.best_epoch - 1]["val_loss"]


@dataclass
class EvalMetrics:
    """Metrics of a model on one validation set.

    ``cross_entropy`` is the mean loss of the loss function in use (``loss_function``, see
    the module docstring) on the set; ``floor`` is that loss's floor on the set
    (:func:`loss_floor`); ``loss`` = ``cross_entropy`` - ``floor`` (excess loss, 0 is
    perfect); ``iou`` is the intersection over union of (predicted particle probability >
    0.5) and (mask > 0.5) over all pixels of the set, 1.0 when both are empty.
    """

    loss: float
    cross_entropy: float
    floor: float
    iou: float
    loss_function: LossFunction = "cross_entropy"
    reliability: Reliability | None = None


def select_device(prefer: str | torch.device | None = None) -> torch.device:
    """Return ``prefer`` as a device if given, else CUDA when available, else CPU."""
    if prefer is not None:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``num_threads`` (at least 1) while inside; ``None``:
    unchanged.

    On a machine whose cores are busy with other work, one thread is much faster than
    two (measured on the 2-core development machine under load: 2.2 s against 12.4 s per
    training step of the small U-Net).
    """
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA for training steps, nothing elsewhere (slower on CPU)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` in channels_last layout (in place; cuDNN deterministic)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return model.to(device=device, memory_format=torch.channels_last)


def _tensors(
    images: np.ndarray, masks: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised images and masks as ``(N, 1, H, W)`` float32 tensors on ``device``."""
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 3 or images.shape != masks.shape:
        raise ValueError(
            f"images and masks must both be (N, H, W), got {images.shape} and {masks.shape}"
        )
    x = torch.from_numpy(standardize(images)).unsqueeze(1)
    m = torch.from_numpy(np.array(masks, dtype=np.float32)).unsqueeze(1)
    return x.to(device), m.to(device)


def _check_loss(loss: str) -> None:
    """Raise ValueError unless ``loss`` is one of :data:`~hrtem_ray.spec.study.LOSS_FUNCTIONS`."""
    if loss not in LOSS_FUNCTIONS:
        raise ValueError(f"loss must be one of {', '.join(LOSS_FUNCTIONS)}, got {loss!r}")


def _loss_value(
    logits: torch.Tensor, masks: torch.Tensor, loss: LossFunction = "cross_entropy"
) -> torch.Tensor:
    """Mean soft-label loss of ``logits (N, 2, H, W)`` against ``masks (N, 1, H, W)``.

    ``cross_entropy`` on the logits, or ``softmax_cross_entropy`` on their softmax (see
    the module docstring).
    """
    scores = logits.float()
    if loss == "softmax_cross_entropy":
        scores = torch.softmax(scores, dim=1)
    return F.cross_entropy(scores, soft_labels(masks))


def softmax_cross_entropy_floor(masks: np.ndarray | torch.Tensor) -> float:
    """The lowest mean ``softmax_cross_entropy`` reachable on ``masks`` (nats).

    Per pixel with soft label ``y`` the loss is ``-y log s(z) - (1 - y) log s(-z)`` with
    ``z = p1 - p0`` in [-1, 1] (``s`` the logistic function; see the module docstring); it
    is convex in ``z`` with its minimum at ``z* = clip(logit(y), -1, 1)``. Hard labels give
    ln(1 + e^-1) = 0.31326 per pixel.

    Parameters
    ----------
    masks
        Particle probabilities in [0, 1], any shape (clipped to [0, 1]).

    Returns
    -------
    float
        The mean of the per-pixel floor over all pixels.
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    y = np.clip(np.asarray(masks, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        z = np.clip(np.log(y) - np.log1p(-y), -1.0, 1.0)
    # -log s(z) = log(1 + e^-z) = logaddexp(0, -z)
    per_pixel = y * np.logaddexp(0.0, -z) + (1.0 - y) * np.logaddexp(0.0, z)
    return float(per_pixel.mean())


def loss_floor(masks: np.ndarray | torch.Tensor, loss: LossFunction = "cross_entropy") -> float:
    """The floor of the mean ``loss`` on ``masks``: what an excess loss is measured from.

    ``cross_entropy``: :func:`label_entropy_floor` (the mean soft-label entropy);
    ``softmax_cross_entropy``: :func:`softmax_cross_entropy_floor`.

    Raises
    ------
    ValueError
        For another ``loss``.
    """
    _check_loss(loss)
    if loss == "softmax_cross_entropy":
        return softmax_cross_entropy_floor(masks)
    return label_entropy_floor(masks)


def forward(model: nn.Module, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """The logits of ``model`` for square images ``x`` ``(N, C, H, H)``.

    With ``tta`` (test-time augmentation): the mean of the logits of the 8 rotated and
    mirrored copies of each image (:func:`~hrtem_ray.learning.augment.dihedral`), each
    mapped back onto the image, so that the prediction of a rotated or mirrored image is
    the rotated or mirrored prediction (the model trains with the same symmetries as
    augmentations). Costs 8 forward passes.
    """
    if not tta:
        return model(x)
    total = None
    for k in range(N_SYMMETRIES):
        view = dihedral(x, k).contiguous(memory_format=torch.channels_last)
        logits = dihedral(model(view), inverse_symmetry(k)).float()
        total = logits if total is None else total + logits
    return total / N_SYMMETRIES


@torch.no_grad()
def _evaluate_tensors(
    model: nn.Module,
    x: torch.Tensor,
    m: torch.Tensor,
    batch_size: int,
    device: torch.device,
    loss: LossFunction = "cross_entropy",
    sums: np.ndarray | None = None,
    tta: bool = False,
) -> tuple[float, float]:
    """Mean ``loss`` and IoU of ``model`` (in eval mode) on prepared tensors.

    ``sums``: a ``(3, RELIABILITY_BINS)`` array to which the per-bin pixels, probability
    sums and mask pixels of the predictions are added (:func:`reliability`). ``tta``: as
    :func:`forward`.
    """
    ce_sum, inter, union = 0.0, 0, 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].contiguous(memory_format=torch.channels_last)
        mb = m[i : i + batch_size]
        logits = forward(model, xb, tta)
        ce_sum += _loss_value(logits, mb, loss).item() * len(xb)
        pred = logits[:, 1] > logits[:, 0]
        true = mb[:, 0] > 0.5
        inter += int((pred & true).sum())
        union += int((pred | true).sum())
        if sums is not None:
            sums += reliability_sums(torch.softmax(logits.float(), dim=1)[:, 1], mb[:, 0])
    return ce_sum / len(x), (inter / union if union else 1.0)


def evaluate(
    model: nn.Module,
    val_sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    loss: LossFunction = "cross_entropy",
    tta: bool = False,
) -> dict[str, EvalMetrics]:
    """Evaluate ``model`` on every validation set (one per domain).

    Parameters
    ----------
    model
        The model; moved to ``device`` and put in eval mode, its previous mode is restored.
    val_sets
        Domain label -> (images, masks), float32 arrays ``(N, H, W)``; images are raw (they
        are standardised here).
    batch_size
        Evaluation batch size.
    device
        Device; default :func:`select_device`.
    loss
        The loss function measured (``cross_entropy`` or ``softmax_cross_entropy``); the
        excess ``loss`` is taken over that function's floor (:func:`loss_floor`).
    tta
        Score the mean logits over the 8 symmetries of each image (:func:`forward`).

    Returns
    -------
    dict
        Domain label -> :class:`EvalMetrics`, in the order of ``val_sets``.
    """
    _check_loss(loss)
    device = select_device(device)
    prepare_model(model, device)
    was_training = model.training
    model.eval()
    try:
        out = {}
        for domain, (images, masks) in val_sets.items():
            x, m = _tensors(images, masks, device)
            sums = np.zeros((3, RELIABILITY_BINS))
            ce, iou = _evaluate_tensors(model, x, m, batch_size, device, loss, sums, tta)
            floor = loss_floor(masks, loss)
            out[domain] = EvalMetrics(
                loss=ce - floor,
                cross_entropy=ce,
                floor=floor,
                iou=iou,
                loss_function=loss,
                reliability=reliability_from_sums(sums),
            )
        return out
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Particle probability maps ``(N, H, W)`` (float32) of ``model`` for raw ``images``.

    Images are standardised per image; the model runs in eval mode on ``device`` (default
    :func:`select_device`) exactly as in :func:`evaluate`; its previous mode is restored.
    ``tta``: the mean logits over the 8 symmetries of each image (:func:`forward`).
    """
    device = select_device(device)
    prepare_model(model, device)
    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(standardize(np.asarray(images))).unsqueeze(1).to(device)
        out = []
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].contiguous(memory_format=torch.channels_last)
            logits = forward(model, xb, tta)
            out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
        return torch.cat(out).numpy()
    finally:
        model.train(was_training)


def _check_finite(pending: list[torch.Tensor], first_step: int, epoch: int) -> float:
    """Sum of the pending step losses; raise :class:`NonFiniteLossError` on NaN/inf."""
    values = torch.stack(pending).double().cpu()
    bad = torch.nonzero(~torch.isfinite(values))
    if len(bad):
        step = first_step + int(bad[0, 0])
        raise NonFiniteLossError(
            f"training loss is {values[bad[0, 0]].item()} at epoch {epoch}, step {step} "
            "(check the learning rate and the inputs for NaN/inf); the stage was stopped"
        )
    return float(values.sum())


def epochs_without_improvement(val_losses: Sequence[float], min_delta: float = 0.0) -> int:
    """Epochs at the end of ``val_losses`` since the last improvement larger than ``min_delta``.

    An epoch improves when its loss is below the reference by more than ``min_delta``; the
    reference is the loss of the last improving epoch (infinite before the first, so the
    first epoch always improves). Small gains do not move the reference, so a slow steady
    decline still counts once it adds up to more than ``min_delta``.

    Examples
    --------
    >>> epochs_without_improvement([1.0, 0.5, 0.6, 0.55])
    2
    >>> epochs_without_improvement([1.0, 0.95, 0.9], min_delta=0.08)
    0
    """
    reference, since = math.inf, 0
    for value in val_losses:
        if value < reference - min_delta:
            reference, since = value, 0
        else:
            since += 1
    return since


def early_stopping_epoch(
    val_losses: Sequence[float], patience: int, min_delta: float = 0.0
) -> int | None:
    """The epoch after which early stopping ends a run with these validation losses.

    The first epoch at which :func:`epochs_without_improvement` reaches ``patience``;
    ``None`` when it never does (the run trains every epoch). :func:`train_stage` stops
    exactly there.

    Examples
    --------
    >>> early_stopping_epoch([1.0, 0.8, 0.9, 0.85, 0.7], patience=2)
    4
    >>> early_stopping_epoch([1.0, 0.8, 0.9, 0.7], patience=2) is None
    True
    """
    for epoch in range(1, len(val_losses) + 1):
        if epochs_without_improvement(val_losses[:epoch], min_delta) >= patience:
            return epoch
    return None


def has_converged(
    best_epoch: int, epochs_trained: int, patience: int | None, stopped_on_patience: bool
) -> bool | None:
    """Whether a stage converged: it stopped on patience, or its best epoch is ``patience`` before its last.

    Parameters
    ----------
    best_epoch
        The kept (lowest validation loss) epoch, 1-based.
    epochs_trained
        Epochs the stage trained.
    patience
        ``training.patience``; ``None``: convergence is not judged.
    stopped_on_patience
        Whether training stopped on patience.

    Returns
    -------
    bool or None
        ``None`` without a patience.

    Examples
    --------
    >>> has_converged(7, 10, 3, False), has_converged(8, 10, 3, False)
    (True, False)
    >>> has_converged(8, 10, None, False) is None
    True
    """
    if patience is None:
        return None
    return stopped_on_patience or epochs_trained - best_epoch >= patience


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached contiguous CPU copy of ``model.state_dict()``."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: torch.Tensor,
    loss: LossFunction = "cross_entropy",
) -> torch.Tensor:
    """One optimisation step on a batch; returns the detached loss (no host sync).

    ``images`` and ``masks`` are ``(B, 1, H, W)`` tensors on the model's device (standardised
    images, masks in [0, 1]); bf16 autocast on CUDA, channels_last input; ``loss`` is the
    loss function (see the module docstring).
    """
    xb = images.contiguous(memory_format=torch.channels_last)
    with _autocast(images.device):
        logits = model(xb)
    value = _loss_value(logits, masks, loss)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    return value.detach()


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    batch_size: int,
    rng: np.random.Generator,
    augment_data: bool = True,
    epoch: int = 1,
    loss: LossFunction = "cross_entropy",
    max_steps: int | None = None,
    augmentation: AugmentSpec | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """One epoch of training steps over every image (and symmetry); the mean loss.

    The model is put in train mode. The visiting order (and each visit's dihedral symmetry)
    comes from :func:`~hrtem_ray.learning.augment.epoch_order` with ``rng``; batches of ``batch_size``
    go through :func:`train_step`. The loss is checked for NaN/inf every ``_CHECK_EVERY``
    steps and after the last one (one host sync each).

    Parameters
    ----------
    model, optimizer
        The model on the device of ``images``, and its optimizer (learning rate already set).
    images, masks
        Standardised images and masks, ``(N, 1, H, W)`` tensors on the model's device.
    batch_size
        Samples per step.
    rng
        Generator of the data order; advanced by one :func:`epoch_order` call.
    augment_data
        If False, one identity pass over the images instead of all symmetries.
    epoch
        1-based epoch number, for error messages.
    loss
        The loss function (see the module docstring).
    max_steps
        Stop after this many steps (a partial epoch); ``None``: the whole epoch.
    augmentation, generator
        Realistic augmentations applied after the symmetry
        (:func:`~hrtem_ray.learning.augment.realistic_augment`), drawn from ``generator``.

    Returns
    -------
    float
        Mean soft-label ``loss`` over the samples visited (train mode, augmented).

    Raises
    ------
    NonFiniteLossError
        When a step's loss is NaN or infinite (names the epoch and the step).
    """
    model.train()
    idx, ks = epoch_order(len(images), rng, augment=augment_data)
    if max_steps is not None:
        idx, ks = idx[: max_steps * batch_size], ks[: max_steps * batch_size]
    loss_sum, pending, n_steps = 0.0, [], 0
    for start in range(0, len(idx), batch_size):
        sel = torch.as_tensor(idx[start : start + batch_size], device=images.device)
        xb, mb = augment(images[sel], masks[sel], ks[start : start + batch_size])
        if augmentation is not None:
            xb, mb = realistic_augment(xb, mb, augmentation, generator or torch.Generator())
        value = train_step(model, optimizer, xb, mb, loss)
        pending.append(value * len(xb))
        n_steps += 1
        if len(pending) == _CHECK_EVERY or start + batch_size >= len(idx):
            loss_sum += _check_finite(pending, n_steps - len(pending) + 1, epoch)
            pending = []
    return loss_sum / len(idx)


def train_stage(
    model: nn.Module,
    train_images: np.ndarray,
    train_masks: np.ndarray,
    val_images: np.ndarray,
    val_masks: np.ndarray,
    *,
    lr: float,
    epochs: int = 10,
    batch_size: int = 16,
    lr_decay: float = 0.99,
    seed: int = 0,
    freeze: Freeze = "none",
    augment_data: bool = True,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    loss: LossFunction = "cross_entropy",
    patience: int | None = None,
    min_delta: float = 0.0,
    max_steps: int | None = None,
    augmentation: AugmentSpec | None = None,
    min_steps: int | None = None,
) -> StageResult:
    """Train ``model`` for one stage and keep the epoch with the lowest validation loss.

    Every epoch visits each training image under all 8 dihedral symmetries (same symmetry
    for image and mask) in an order shuffled by ``np.random.default_rng(seed)``; images are
    standardised per image; Adam over the trainable parameters with learning rate
    ``lr * lr_decay ** (epoch - 1)``. After each epoch the model is evaluated on the
    validation set; at the end the best epoch's state is loaded into ``model`` (which stays
    on ``device``).

    Parameters
    ----------
    model
        A :class:`~hrtem_ray.learning.model.UNet` (fresh, or loaded from a parent checkpoint).
    train_images, train_masks, val_images, val_masks
        float32 arrays ``(N, H, W)``; masks in [0, 1]; square images, sides multiples of 32.
    lr, epochs, batch_size, lr_decay
        Optimisation settings (the study: 10 epochs, batch 16, decay 0.99 per epoch);
        ``epochs`` is the most epochs trained.
    seed
        Seed of the data order and augmentation. Initialise the model with
        ``build_model(spec, seed=seed)``.
    freeze
        Part to freeze (see :func:`hrtem_ray.learning.model.freeze`); ``"none"`` unfreezes all.
    augment_data
        If False, one identity pass over the images per epoch instead of 8 symmetries.
    device
        Default :func:`select_device`.
    num_threads
        CPU threads for torch during the stage (the trial's cores).
    on_epoch
        Called with each epoch's history dict (e.g. to report to Ray Tune).
    loss
        The loss function trained and validated with: ``cross_entropy`` (default) or
        ``softmax_cross_entropy``; ``train_loss`` and ``val_loss`` are taken over its floor.
    patience, min_delta
        Early stopping: stop once :func:`epochs_without_improvement` of the validation losses
        (with ``min_delta``) reaches ``patience``; ``None`` (default): train every epoch.
    min_steps
        Early stopping ends no stage before it has trained this many optimizer steps (on a
        few images an epoch is one or two steps, and ``patience`` epochs can end a stage
        that has not started to learn); ``None``: from the first epoch.
    max_steps
        Stop after this many optimizer steps in all (the last epoch partial, then
        validated like any other); ``None``: whole epochs only.
    augmentation
        Realistic augmentations of the training samples (an
        :class:`~hrtem_ray.spec.study.AugmentSpec`), seeded by ``seed``; ``None``: none.

    Returns
    -------
    StageResult

    Raises
    ------
    NonFiniteLossError
        When a training or validation loss is NaN or infinite (names epoch and step). The
        model's parameters are then undefined.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be at least 1, got {patience}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if min_steps is not None and min_steps < 1:
        raise ValueError(f"min_steps must be at least 1, got {min_steps}")
    _check_loss(loss)
    t_start = time.perf_counter()
    device = select_device(device)
    rng = np.random.default_rng(seed)
    if augment_data and np.shape(train_images)[-1] != np.shape(train_images)[-2]:
        raise ValueError("dihedral augmentation needs square images")
    trainable = freeze_part(model, freeze)
    prepare_model(model, device)
    with torch_threads(num_threads):
        x_train, m_train = _tensors(train_images, train_masks, device)
        x_val, m_val = _tensors(val_images, val_masks, device)
        train_floor = loss_floor(train_masks, loss)
        val_floor = loss_floor(val_masks, loss)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=lr)
        history: list[dict] = []
        best_epoch, best_loss, best_state = 0, math.inf, {}
        steps_per_epoch = math.ceil(
            len(x_train) * (N_SYMMETRIES if augment_data else 1) / batch_size
        )
        steps_left = max_steps
        stopped_on_patience = False
        generator = torch.Generator().manual_seed(int(seed) % 2**63)
        for epoch in range(1, epochs + 1):
            t_epoch, c_epoch = time.perf_counter(), time.process_time()
            epoch_lr = lr * lr_decay ** (epoch - 1)
            for group in optimizer.param_groups:
                group["lr"] = epoch_lr
            epoch_steps = (
                steps_per_epoch if steps_left is None else min(steps_left, steps_per_epoch)
            )
            train_ce = train_epoch(
                model,
                optimizer,
                x_train,
                m_train,
                batch_size=batch_size,
                rng=rng,
                augment_data=augment_data,
                epoch=epoch,
                loss=loss,
                max_steps=epoch_steps,
                augmentation=augmentation,
                generator=generator,
            )
            model.eval()
            val_ce, val_iou = _evaluate_tensors(model, x_val, m_val, batch_size, device, loss)
            if not math.isfinite(val_ce):
                raise NonFiniteLossError(f"validation loss is {val_ce} after epoch {epoch}")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            record = {
                "epoch": epoch,
                "train_loss": train_ce - train_floor,
                "val_loss": val_ce - val_floor,
                "val_cross_entropy": val_ce,
                "val_iou": val_iou,
                "lr": epoch_lr,
                "steps": epoch_steps,
                "seconds": time.perf_counter() - t_epoch,
                "cpu_seconds": time.process_time() - c_epoch,
            }
            history.append(record)
            if record["val_loss"] < best_loss:
                best_epoch, best_loss, best_state = epoch, record["val_loss"], _cpu_state(model)
            if on_epoch is not None:
                on_epoch(dict(record))
            if steps_left is not None:
                steps_left -= epoch_steps
                if steps_left <= 0:
                    break
            losses = [h["val_loss"] for h in history]
            trained = sum(int(h["steps"]) for h in history)
            if (
                patience is not None
                and epochs_without_improvement(losses, min_delta) >= patience
                and trained >= (min_steps or 0)
            ):
                stopped_on_patience = True
                break
        if best_state:
            model.load_state_dict(best_state)
        model.eval()
    return StageResult(
        history=history,
        best_epoch=best_epoch,
        best_state=best_state,
        train_seconds=time.perf_counter() - t_start,
        trainable_parameters=trainable,
        optimizer=optimizer,
        stopped_on_patience=stopped_on_patience,
    )


def _torch_bytes(obj) -> bytes:
    """``obj`` as :func:`torch.save` writes it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _to_cpu(obj):
    """``obj`` with every tensor inside dicts/lists/tuples copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    metadata: dict | None = None,
) -> None:
    """Save a checkpoint directory: ``model.pt``, ``optimizer.pt`` (if given), ``metadata.json``.

    ``metadata.json`` holds ``metadata`` plus ``model_spec``, ``in_channels``, ``classes``,
    ``frozen`` and ``hrtem_ray_version`` so that :func:`load_checkpoint` can rebuild the
    model. It is written last: a directory without it is incomplete.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    storage.write_bytes_atomic(path / "model.pt", _torch_bytes(_cpu_state(model)))
    if optimizer is not None:
        state = _to_cpu(optimizer.state_dict())
        storage.write_bytes_atomic(path / "optimizer.pt", _torch_bytes(state))
    meta = dict(metadata or {})
    spec = getattr(model, "spec", None)
    if isinstance(spec, ModelSpec):
        meta["model_spec"] = spec.model_dump(mode="json")
        meta["in_channels"] = model.encoder.conv1.in_channels
        meta["classes"] = model.segmentation_head[0].out_channels
        meta["frozen"] = getattr(model, "frozen", "none")
    meta["hrtem_ray_version"] = __version__
    meta["parameters"] = count_parameters(model)
    text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    storage.write_bytes_atomic(path / "metadata.json", text.encode())


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module | None = None, spec: ModelSpec | None = None
) -> tuple[nn.Module, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path
        The checkpoint directory.
    model
        Model to load the weights into; if None one is built from ``spec`` or, without
        ``spec``, from the ``model_spec`` stored in the metadata.
    spec
        Architecture for the new model.

    Returns
    -------
    (model, metadata)
        The model (on CPU when newly built, unfrozen) and the metadata dict. The optimizer
        state, if any, is at ``path / "optimizer.pt"``.
    """
    path = Path(path)
    meta_file = path / "metadata.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no metadata.json)")
    meta = json.loads(meta_file.read_text())
    if model is None:
        if spec is None:
            if "model_spec" not in meta:
                raise ValueError(f"checkpoint {path} has no model_spec; pass spec= or model=")
            spec = ModelSpec.model_validate(meta["model_spec"])
        model = build_model(spec, meta.get("in_channels", 1), meta.get("classes", 2))
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model, meta
