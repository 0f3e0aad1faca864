"""Tests of the training core.

Tests that check learning use the real simulated ``tiny_dataset`` fixture (tests/conftest.py).
Tests that check bookkeeping only (parameter updates, shapes, NaN handling, checkpoints) use
small deterministic arrays built here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hrtem_ray.learning.augment import augment, dihedral, epoch_order, soft_labels
from hrtem_ray.learning.model import build_model
from hrtem_ray.learning.train import (
    EvalMetrics,
    NonFiniteLossError,
    early_stopping_epoch,
    epochs_without_improvement,
    evaluate,
    forward,
    has_converged,
    label_entropy_floor,
    load_checkpoint,
    loss_floor,
    predict,
    save_checkpoint,
    softmax_cross_entropy_floor,
    standardize,
    train_stage,
)
from hrtem_ray.spec.types import ModelSpec
from hrtem_ray.sweep.trials import stage_steps

TINY = ModelSpec(
    size="small",
    stem_channels=8,
    encoder_channels=(8, 8, 16, 16),
    decoder_channels=(16, 8, 8, 8, 8),
)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def disks(n: int, px: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic shape-only arrays: soft disks and a lattice-like image of them."""
    yy, xx = np.mgrid[:px, :px].astype(np.float32)
    masks, images = [], []
    for i in range(n):
        cx, cy, r = px * (0.3 + 0.05 * (i % 5)), px * (0.6 - 0.04 * (i % 7)), px * 0.2
        m = 1 / (1 + np.exp(np.hypot(xx - cx, yy - cy) - r))
        masks.append(m)
        images.append(m * np.cos(1.7 * xx + 0.3 * i) + 0.2 * np.sin(0.5 * yy))
    return np.array(images, np.float32), np.array(masks, np.float32)


# ---------------------------------------------------------------- data helpers


def test_standardize_per_image() -> None:
    x = np.stack([np.arange(64.0).reshape(8, 8), 5 + 3 * np.cos(np.arange(64.0)).reshape(8, 8)])
    for out in (standardize(x), standardize(torch.from_numpy(x)).numpy()):
        np.testing.assert_allclose(out.mean(axis=(1, 2)), 0, atol=1e-6)
        np.testing.assert_allclose(out.var(axis=(1, 2)), 1, atol=1e-5)
    assert standardize(x).dtype == np.float32
    assert np.all(standardize(np.ones((1, 4, 4))) == 0)


def test_dihedral_gives_eight_distinct_symmetries() -> None:
    x = np.arange(16).reshape(4, 4)
    outs = [dihedral(x, k) for k in range(8)]
    assert len({o.tobytes() for o in map(np.ascontiguousarray, outs)}) == 8
    t = torch.from_numpy(x)
    for k in range(8):
        np.testing.assert_array_equal(dihedral(t, k).numpy(), outs[k])
    with pytest.raises(ValueError):
        dihedral(x, 8)


def test_augmentation_keeps_image_and_mask_aligned() -> None:
    images, masks = disks(16)
    x = torch.from_numpy(images).unsqueeze(1)
    m = torch.from_numpy(masks).unsqueeze(1)
    ks = np.arange(16) % 8
    xa, ma = augment(x, m, ks)
    for i, k in enumerate(ks):
        np.testing.assert_array_equal(xa[i, 0].numpy(), dihedral(images[i], int(k)))
        np.testing.assert_array_equal(ma[i, 0].numpy(), dihedral(masks[i], int(k)))
    assert not torch.equal(xa[1:], x[1:])  # the inputs were not modified in place...
    assert torch.equal(x, torch.from_numpy(images).unsqueeze(1))  # ...and really moved


def test_epoch_order_visits_every_image_symmetry_pair_once() -> None:
    idx, ks = epoch_order(5, np.random.default_rng(0))
    assert sorted(zip(idx.tolist(), ks.tolist(), strict=True)) == [
        (i, k) for i in range(5) for k in range(8)
    ]
    idx, ks = epoch_order(5, np.random.default_rng(0), augment=False)
    assert sorted(idx.tolist()) == list(range(5)) and not ks.any()


def test_floor_is_label_entropy_and_perfect_prediction_has_zero_loss() -> None:
    assert label_entropy_floor(np.array([0.0, 1.0, 1.0, 0.0])) == 0.0
    assert label_entropy_floor(np.full((2, 3, 3), 0.5)) == pytest.approx(math.log(2))
    q = np.array([0.1, 0.3, 0.9, 1.0])
    entropy = -(q * np.log(q) + (1 - q) * np.log(np.clip(1 - q, 1e-300, None)))
    assert label_entropy_floor(q) == pytest.approx(entropy.mean())

    class Oracle(nn.Module):
        """Recovers the soft mask from the standardised image and predicts exactly it."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lo = x.amin(dim=(-2, -1), keepdim=True)
            hi = x.amax(dim=(-2, -1), keepdim=True)
            m = ((x - lo) / (hi - lo)).double().clamp(1e-15, 1 - 1e-15)
            return torch.cat([torch.log1p(-m), torch.log(m)], 1).float()

    _, masks = disks(6)
    masks = (masks - masks.min(axis=(1, 2), keepdims=True)) / np.ptp(
        masks, axis=(1, 2), keepdims=True
    )
    images = 3 * masks + 7  # a per-image affine map of the mask
    metrics = evaluate(Oracle(), {"a": (images, masks)}, device="cpu")["a"]
    assert metrics.floor == pytest.approx(label_entropy_floor(masks))
    assert metrics.cross_entropy == pytest.approx(metrics.floor, abs=1e-5)
    assert metrics.loss == pytest.approx(0.0, abs=1e-5)
    assert metrics.iou == 1.0
    soft = soft_labels(torch.from_numpy(masks).unsqueeze(1))
    assert soft.shape == (6, 2, 32, 32) and torch.allclose(soft.sum(1), torch.ones(1))


# ---------------------------------------------------------------- stages (bookkeeping)


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_frozen_part_unchanged_unfrozen_part_changes(part: str) -> None:
    images, masks = disks(4)
    model = build_model(TINY, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_stage(
        model, images, masks, images, masks, lr=1e-2, epochs=1, freeze=part, device="cpu"
    )
    after = model.state_dict()
    other = "decoder" if part == "encoder" else "encoder"
    for key, value in before.items():
        if key.startswith(part):  # parameters and batch-norm statistics stay as they were
            assert torch.equal(after[key], value), key
    changed = [k for k in before if k.endswith("weight") and not torch.equal(after[k], before[k])]
    assert any(k.startswith(other) for k in changed)
    assert any(k.startswith("segmentation_head") for k in changed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert result.trainable_parameters == trainable
    assert {id(p) for g in result.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad
    }


def test_stage_history_lr_decay_best_state_and_callback() -> None:
    images, masks = disks(4)
    model = build_model(TINY, seed=0)
    seen = []
    result = train_stage(
        model, images, masks, images[:2], masks[:2], lr=1e-3, epochs=3, on_epoch=seen.append
    )
    assert [h["epoch"] for h in result.history] == [1, 2, 3] == [s["epoch"] for s in seen]
    assert [h["lr"] for h in result.history] == pytest.approx([1e-3, 0.99e-3, 0.99**2 * 1e-3])
    assert set(result.history[0]) >= {"epoch", "train_loss", "val_loss", "seconds"}
    val = [h["val_loss"] for h in result.history]
    assert result.best_epoch == 1 + int(np.argmin(val))
    assert result.best_val_loss == min(val)
    assert all(torch.equal(v, model.state_dict()[k].cpu()) for k, v in result.best_state.items())
    assert result.train_seconds >= sum(h["seconds"] for h in result.history)
    # the kept model reproduces its recorded validation loss
    again = evaluate(model, {"own": (images[:2], masks[:2])})["own"]
    assert again.loss == pytest.approx(result.best_val_loss, rel=1e-5)


# A scripted validation curve: falls to 0.7 at epoch 3, wobbles, a new low at epoch 6, rises.
CURVE = [1.0, 0.8, 0.7, 0.72, 0.71, 0.69, 0.75, 0.8, 0.9]


@pytest.mark.parametrize(
    ("patience", "min_delta", "stop", "best", "converged"),
    [
        # epochs 4, 5 do not improve on 0.7: stops after epoch 5, best epoch 3
        (2, 0.0, 5, 3, True),
        # patience 3: epoch 6 improves (0.69 < 0.7), then 7, 8, 9 do not: stops after 9
        (3, 0.0, 9, 6, True),
        # min_delta 0.015: 0.69 is not 0.015 below 0.7, so 4, 5, 6 do not count: stops
        # after 6, whose loss is the lowest: converged because it stopped on patience
        (3, 0.015, 6, 6, True),
        # patience 4: never 4 epochs without improvement within 9; best epoch 6 is 3 before
        # the last: not converged
        (4, 0.0, None, 6, False),
    ],
)
def test_early_stopping_on_a_scripted_validation_curve(patience, min_delta, stop, best, converged):
    assert early_stopping_epoch(CURVE, patience, min_delta) == stop
    trained = CURVE[: stop or len(CURVE)]  # the history of the stage: every epoch it trained
    best_epoch = 1 + int(np.argmin(trained))
    assert best_epoch == best
    assert has_converged(best_epoch, len(trained), patience, stop is not None) is converged


def test_epochs_without_improvement_measures_from_the_last_real_improvement() -> None:
    assert [epochs_without_improvement(CURVE[:k]) for k in range(1, 10)] == [
        0, 0, 0, 1, 2, 0, 1, 2, 3
    ]  # fmt: skip
    # a slow decline of 0.01 an epoch improves by more than 0.015 every second epoch
    slow = [1.0, 0.99, 0.98, 0.97, 0.96]
    assert [epochs_without_improvement(slow[:k], 0.015) for k in range(1, 6)] == [0, 1, 0, 1, 0]
    # fixed epochs with a patience: converged once the best epoch is patience before the last
    assert has_converged(7, 10, 3, False) and not has_converged(8, 10, 3, False)
    assert has_converged(10, 10, None, False) is None


def test_train_stage_stops_on_patience_and_keeps_the_best_epoch() -> None:
    images, masks = disks(4)
    # no epoch after the first improves by more than 1e9: stops after 1 + patience epochs
    model = build_model(TINY, seed=0)
    result = train_stage(
        model, images, masks, images[:2], masks[:2], lr=1e-3, epochs=6, patience=2,
        min_delta=1e9, batch_size=4,
    )  # fmt: skip
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    # the kept epoch is still the lowest validation loss, improvement or not
    assert result.stopped_on_patience
    assert result.best_epoch == 1 + int(np.argmin([h["val_loss"] for h in result.history]))
    assert has_converged(result.best_epoch, result.epochs_trained, 2, True)
    assert all(torch.equal(v, model.state_dict()[k].cpu()) for k, v in result.best_state.items())
    # the same with the patience not reached within the epochs allowed: not converged
    result = train_stage(
        build_model(TINY, seed=0), images, masks, images[:2], masks[:2], lr=1e-3, epochs=2,
        patience=2, min_delta=1e9, batch_size=4,
    )  # fmt: skip
    assert result.epochs_trained == 2 and not result.stopped_on_patience
    assert has_converged(result.best_epoch, 2, 2, False) is False
    # a real curve: the stage stops where early_stopping_epoch says, or trains every epoch
    result = train_stage(
        build_model(TINY, seed=0), images, masks, images[:2], masks[:2], lr=3e-3, epochs=5,
        patience=1, batch_size=4,
    )  # fmt: skip
    losses = [h["val_loss"] for h in result.history]
    assert early_stopping_epoch(losses, 1) == (len(losses) if result.stopped_on_patience else None)


def test_min_steps_keeps_early_stopping_from_ending_a_stage_too_soon() -> None:
    """4 images, batch 4: 8 steps an epoch. Patience 2 would stop after 3 epochs (24
    steps); with ``min_steps=40`` it stops after epoch 5, the first with 40 steps, and it
    still stops there (the patience count goes on, it is not reset)."""
    images, masks = disks(4)
    kwargs = dict(lr=1e-3, epochs=8, patience=2, min_delta=1e9, batch_size=4)
    early = train_stage(build_model(TINY, seed=0), images, masks, images[:2], masks[:2], **kwargs)
    late = train_stage(
        build_model(TINY, seed=0), images, masks, images[:2], masks[:2], min_steps=40, **kwargs
    )
    assert (early.epochs_trained, early.steps) == (3, 24) and early.stopped_on_patience
    assert (late.epochs_trained, late.steps) == (5, 40) and late.stopped_on_patience
    with pytest.raises(ValueError, match="min_steps must be at least 1"):
        train_stage(build_model(TINY, seed=0), images, masks, images, masks, min_steps=0, **kwargs)


def _adam_steps(result) -> set[int]:
    """The step counts in the stage's Adam state (one per trained parameter)."""
    return {int(state["step"]) for state in result.optimizer.state.values()}


def test_steps_of_a_stage_and_of_a_step_budget() -> None:
    images, masks = disks(4)  # 4 images x 8 symmetries = 8 steps of 4 an epoch
    result = train_stage(
        build_model(TINY), images, masks, images, masks, lr=1e-3, epochs=2, batch_size=4
    )
    assert result.steps == stage_steps(4, 2, 4) == 16 == max(_adam_steps(result))
    assert [h["steps"] for h in result.history] == [8, 8]
    # a budget of 10 steps: one whole epoch and 2 steps of the second, which is validated too
    result = train_stage(
        build_model(TINY), images, masks, images, masks, lr=1e-3, epochs=2, batch_size=4,
        max_steps=10,
    )  # fmt: skip
    assert [h["steps"] for h in result.history] == [8, 2]
    assert result.steps == 10 and _adam_steps(result) == {10}
    assert result.epochs_trained == 2 and not result.stopped_on_patience


def test_same_seed_same_result_different_seed_differs() -> None:
    images, masks = disks(4)

    def run(seed: int) -> list[float]:
        model = build_model(TINY, seed=seed)
        res = train_stage(model, images, masks, images, masks, lr=1e-3, epochs=2, seed=seed)
        return [h["train_loss"] for h in res.history] + [h["val_loss"] for h in res.history]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_nan_loss_stops_the_stage() -> None:
    images, masks = disks(4)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2"):
        train_stage(build_model(TINY), images, masks, images, masks, lr=math.inf, epochs=2)
    bad = images.copy()
    bad[2, 3, 3] = np.nan
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        train_stage(build_model(TINY), bad, masks, images, masks, lr=1e-3, epochs=1)


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path) -> None:
    images, masks = disks(4)
    model = build_model(TINY, seed=0)
    result = train_stage(model, images, masks, images, masks, lr=1e-3, epochs=1)
    save_checkpoint(tmp_path / "ckpt", model, result.optimizer, {"model_id": "abc"})
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {
        "model.pt",
        "optimizer.pt",
        "metadata.json",
    }
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta["model_id"] == "abc" and ModelSpec(**meta["model_spec"]) == TINY
    np.testing.assert_array_equal(predict(loaded, images), predict(model, images))
    into, _ = load_checkpoint(tmp_path / "ckpt", model=build_model(TINY, seed=5))
    np.testing.assert_array_equal(predict(into, images), predict(model, images))
    opt_state = torch.load(tmp_path / "ckpt" / "optimizer.pt", weights_only=True)
    assert opt_state["param_groups"][0]["lr"] == pytest.approx(1e-3)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)


def test_rejects_bad_shapes() -> None:
    images, masks = disks(2, px=40)
    with pytest.raises(ValueError, match="multiples of 32"):
        train_stage(build_model(TINY), images, masks, images, masks, lr=1e-3, epochs=1)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        evaluate(build_model(TINY), {"a": (images, masks[:1])})


# ---------------------------------------------------------------- real simulated data


def _split(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, ...]:
    half = len(images) // 2
    return images[:half], masks[:half], images[half:], masks[half:]


def test_loss_falls_on_tiny_real_dataset(tiny_dataset) -> None:
    domain = next(iter(tiny_dataset))
    images, masks = tiny_dataset[domain]
    tr_x, tr_m, va_x, va_m = images[:4], masks[:4], images[4:], masks[4:]
    model = build_model(ModelSpec(size="small"), seed=1)
    untrained = evaluate(model, {domain: (va_x, va_m)})[domain].loss
    result = train_stage(model, tr_x, tr_m, va_x, va_m, lr=3e-3, epochs=10, seed=1)
    train = [h["train_loss"] for h in result.history]
    # Far from the thresholds on purpose (torch's CPU kernels differ across machines): measured
    # here, train loss 0.443 -> 0.027 and validation loss 0.544 -> 0.272 over the 10 epochs.
    assert train[-1] < 0.5 * train[0]
    assert result.best_val_loss < untrained
    assert evaluate(model, {domain: (va_x, va_m)})[domain].loss == pytest.approx(
        result.best_val_loss, rel=1e-5
    )


def test_pretrain_transfer_and_evaluation_on_every_domain(tiny_dataset, tmp_path) -> None:
    (a, data_a), (b, data_b) = list(tiny_dataset.items())[:2]
    tr_x, tr_m, va_x, va_m = _split(*data_a)
    model = build_model(ModelSpec(size="small"), seed=0)
    pre = train_stage(model, tr_x, tr_m, va_x, va_m, lr=3e-3, epochs=1)
    save_checkpoint(tmp_path / "pre", model, pre.optimizer, {"domain": a})

    child, _ = load_checkpoint(tmp_path / "pre")
    encoder_before = {k: v.clone() for k, v in child.encoder.state_dict().items()}
    tb_x, tb_m, vb_x, vb_m = _split(*data_b)
    train_stage(child, tb_x, tb_m, vb_x, vb_m, lr=1e-3, epochs=1, freeze="encoder")
    assert all(torch.equal(v, child.encoder.state_dict()[k]) for k, v in encoder_before.items())

    val_sets = {d: _split(*arrays)[2:] for d, arrays in tiny_dataset.items()}
    results = evaluate(child, val_sets)
    assert list(results) == list(tiny_dataset)
    for metrics in results.values():
        assert isinstance(metrics, EvalMetrics)
        assert metrics.loss == pytest.approx(metrics.cross_entropy - metrics.floor)
        assert metrics.floor >= 0 and 0 <= metrics.iou <= 1 and math.isfinite(metrics.loss)


# ---------------------------------------------------------------- loss functions


def test_softmax_cross_entropy_floor_for_hard_labels_is_ln_1_plus_e_minus_1() -> None:
    hard = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert softmax_cross_entropy_floor(hard) == pytest.approx(math.log1p(math.exp(-1)), abs=1e-15)
    assert loss_floor(hard, "softmax_cross_entropy") == pytest.approx(0.31326, abs=1e-5)
    assert loss_floor(hard) == label_entropy_floor(hard) == 0.0
    # soft labels: the minimum of -y log s(z) - (1 - y) log s(-z) over z in [-1, 1], by brute force
    z = np.linspace(-1.0, 1.0, 200_001)
    for y in (0.5, 0.6, 0.8, 0.95):
        brute = np.min(-y * np.log(1 / (1 + np.exp(-z))) - (1 - y) * np.log(1 / (1 + np.exp(z))))
        assert softmax_cross_entropy_floor(np.array([y])) == pytest.approx(brute, abs=1e-9)
    with pytest.raises(ValueError, match="softmax_cross_entropy"):
        loss_floor(hard, "mse")


def test_softmax_cross_entropy_of_a_perfect_model_is_its_floor() -> None:
    """A model certain of hard labels: double softmax leaves ln(1 + e^-1) per pixel, excess 0."""

    class Certain(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = (x > x.mean(dim=(-2, -1), keepdim=True)).float()
            return torch.cat([50 * (1 - m), 50 * m], 1)

    _, masks = disks(4)
    hard = (masks > 0.5).astype(np.float32)
    images = 2 * hard + 1
    plain = evaluate(Certain(), {"a": (images, hard)}, device="cpu")["a"]
    double = evaluate(Certain(), {"a": (images, hard)}, device="cpu", loss="softmax_cross_entropy")
    double = double["a"]
    assert plain.loss_function == "cross_entropy" and plain.cross_entropy < 1e-15
    assert double.loss_function == "softmax_cross_entropy"
    assert double.cross_entropy == pytest.approx(math.log1p(math.exp(-1)), abs=1e-6)
    assert double.floor == pytest.approx(math.log1p(math.exp(-1)), abs=1e-12)
    assert double.loss == pytest.approx(0.0, abs=1e-6) and double.iou == 1.0


def test_training_with_softmax_cross_entropy_learns_and_reports_excess_loss() -> None:
    images, masks = disks(8)
    model = build_model(TINY, seed=0)
    result = train_stage(
        model, images, masks, images, masks, lr=1e-2, epochs=3, loss="softmax_cross_entropy"
    )
    floor = softmax_cross_entropy_floor(masks)
    for record in result.history:
        assert record["val_loss"] == pytest.approx(record["val_cross_entropy"] - floor)
        assert record["val_loss"] >= -1e-6 and record["train_loss"] >= -1e-6
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    metrics = evaluate(model, {"a": (images, masks)}, device="cpu", loss="softmax_cross_entropy")
    assert metrics["a"].loss == pytest.approx(result.best_val_loss, abs=1e-5)
    with pytest.raises(ValueError, match="loss must be one of"):
        train_stage(model, images, masks, images, masks, lr=1e-3, epochs=1, loss="mse")


def test_test_time_augmentation_makes_predictions_follow_rotations_and_mirrors() -> None:
    """With ``tta`` the prediction of a rotated or mirrored image is the rotated or
    mirrored prediction (the mean over the 8 symmetries is equivariant); a plain U-Net
    with random weights is not. Scoring with it is scoring the symmetric prediction."""
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    images, masks = disks(4)
    x = torch.from_numpy(standardize(images)).unsqueeze(1)
    with torch.no_grad():
        for k in range(1, 8):
            turned = forward(model, dihedral(x, k), tta=True)
            assert torch.allclose(turned, dihedral(forward(model, x, tta=True), k), atol=1e-5)
        plain = forward(model, dihedral(x, 1))
        assert not torch.allclose(plain, dihedral(forward(model, x), 1), atol=1e-3)
    probs = predict(model, images, tta=True)
    turned = predict(model, np.rot90(images, 1, axes=(1, 2)).copy(), tta=True)
    np.testing.assert_allclose(turned, np.rot90(probs, 1, axes=(1, 2)), atol=1e-5)
    scored = evaluate(model, {"d": (images, masks)}, tta=True)["d"]
    assert scored.loss != pytest.approx(evaluate(model, {"d": (images, masks)})["d"].loss, abs=1e-6)
