"""Realistic augmentations of a training stage (transfer.augment) on simulated images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrtem_ray.learning.augment import realistic_augment, standardize
from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.study import REAL_AUGMENT, AugmentSpec


def _batch(tiny_dataset):
    images, masks = tiny_dataset["0"]
    x = torch.from_numpy(standardize(images[:4])).unsqueeze(1)
    m = torch.from_numpy(np.array(masks[:4], np.float32)).unsqueeze(1)
    return x, m


def test_the_same_seed_gives_the_same_augmentation_and_images_stay_standardised(tiny_dataset):
    x, m = _batch(tiny_dataset)
    spec = AugmentSpec.model_validate("real")
    a, am = realistic_augment(x, m, spec, torch.Generator().manual_seed(3))
    b, bm = realistic_augment(x, m, spec, torch.Generator().manual_seed(3))
    c, _ = realistic_augment(x, m, spec, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and torch.equal(am, bm) and not torch.equal(a, c)
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert torch.allclose(a.mean(dim=(-2, -1)), torch.zeros(4, 1), atol=1e-4)
    assert torch.allclose(a.std(dim=(-2, -1), unbiased=False), torch.ones(4, 1), atol=1e-3)
    assert am.min() >= 0 and am.max() <= 1


@pytest.mark.parametrize("field", sorted(set(REAL_AUGMENT) - {"probability", "contrast"}))
def test_each_augmentation_changes_the_image(tiny_dataset, field):
    x, m = _batch(tiny_dataset)
    spec = AugmentSpec(**{field: REAL_AUGMENT[field], "probability": 1.0})
    a, am = realistic_augment(x, m, spec, torch.Generator().manual_seed(0))
    assert not torch.allclose(a, x, atol=1e-3), field
    if field != "scale_jitter":  # only the zoom moves the mask
        assert torch.equal(am, m)


def test_contrast_sets_the_signal_against_the_noise(tiny_dataset):
    """Alone, a contrast change within [0, 1] is undone by standardising; before Poisson
    noise, lower contrast means a noisier standardised image."""
    x, m = _batch(tiny_dataset)
    alone = AugmentSpec(contrast=(0.5, 0.5), probability=1.0)
    a, _ = realistic_augment(x, m, alone, torch.Generator().manual_seed(0))
    assert torch.allclose(a, standardize(x), atol=1e-3)
    errors = []
    for factor in (1.0, 0.3):
        spec = AugmentSpec(contrast=(factor, factor), poisson_counts=(50, 50), probability=1.0)
        b, _ = realistic_augment(x, m, spec, torch.Generator().manual_seed(0))
        errors.append(float(((b - standardize(x)) ** 2).mean()))
    assert errors[1] > errors[0]


def test_zoom_moves_image_and_mask_together(tiny_dataset):
    """An image that is its own mask stays its own mask under scale jitter."""
    _, m = _batch(tiny_dataset)
    spec = AugmentSpec(scale_jitter=0.3, probability=1.0)
    a, am = realistic_augment(standardize(m), m, spec, torch.Generator().manual_seed(1))
    assert not torch.allclose(am, m)
    for image, mask in zip(a, am, strict=True):
        r = np.corrcoef(image.flatten().numpy(), mask.flatten().numpy())[0, 1]
        assert r > 0.999


def test_augment_spec_is_checked_field_by_field():
    with pytest.raises(ValueError, match="gamma"):
        AugmentSpec(gamma=(1.5, 0.5))
    with pytest.raises(ValueError, match="unknown augmentation preset 'strong'"):
        AugmentSpec.model_validate("strong")
    assert AugmentSpec.model_validate("real").key() == AugmentSpec(**REAL_AUGMENT).key()


def test_transfer_augment_is_in_the_trial_id_and_the_results(tmp_path):
    """Without ``augment`` every model id stays as it was; with it the transfer trials
    (only) get new ids and record it."""
    from helpers import TINY_STUDY

    from hrtem_ray.spec.config import parse_study_spec
    from hrtem_ray.sweep.trials import plan_trials

    plain = plan_trials(parse_study_spec(TINY_STUDY, source="tests"))
    raw = {**TINY_STUDY, "transfer": {**TINY_STUDY["transfer"], "augment": "real"}}
    augmented = plan_trials(parse_study_spec(raw, source="tests"))
    assert [t.model_id for t in plain.pretrain] == [t.model_id for t in augmented.pretrain]
    assert not {t.model_id for t in plain.transfer} & {t.model_id for t in augmented.transfer}
    assert all(t.augment == AugmentSpec.model_validate("real").key() for t in augmented.transfer)
    assert all(t.augment is None for t in plain.all())
    with pytest.raises(SpecError, match="transfer.augment.gamma"):
        parse_study_spec(
            {**TINY_STUDY, "transfer": {**TINY_STUDY["transfer"], "augment": {"gamma": [2, 1]}}},
            source="tests",
        )


def test_train_stage_with_augmentation_trains_differently(tiny_dataset):
    from hrtem_ray.learning.model import build_model
    from hrtem_ray.learning.train import train_stage
    from hrtem_ray.spec.types import ModelSpec

    images, masks = tiny_dataset["0"]
    runs = []
    for augmentation in (None, AugmentSpec.model_validate("real")):
        model = build_model(ModelSpec(size="small"), seed=0)
        stage = train_stage(model, images[:2], masks[:2], images[2:4], masks[2:4], lr=1e-3,
                            epochs=1, batch_size=4, seed=0, device="cpu", num_threads=1,
                            augmentation=augmentation)  # fmt: skip
        runs.append(stage.history[0]["train_loss"])
    assert np.isfinite(runs).all() and runs[0] != runs[1]
