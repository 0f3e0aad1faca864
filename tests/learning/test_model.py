"""Tests of the U-Net layout, parameter counts and freezing (no simulation needed)."""

from __future__ import annotations

import pydantic
import pytest
import torch

from hrtem_ray.learning.model import UNet, build_model, count_parameters, freeze
from hrtem_ray.spec.types import ModelSpec

FULL_PARAMS = 14_322_082
FULL_ENCODER_FROZEN = 3_151_842
FULL_DECODER_FROZEN = 11_170_530


@pytest.fixture(scope="module")
def full_model() -> UNet:
    return build_model(ModelSpec(size="full"), seed=0)


def test_full_model_parameter_counts(full_model: UNet) -> None:
    assert count_parameters(full_model) == FULL_PARAMS
    assert freeze(full_model, "encoder") == FULL_ENCODER_FROZEN
    assert count_parameters(full_model, trainable_only=True) == FULL_ENCODER_FROZEN
    assert freeze(full_model, "decoder") == FULL_DECODER_FROZEN
    assert freeze(full_model, "none") == FULL_PARAMS
    # the study: freezing the encoder cuts trainable parameters by ~78%
    assert FULL_ENCODER_FROZEN / FULL_PARAMS == pytest.approx(0.22, abs=0.005)


def test_full_model_state_dict_layout_matches_smp_resnet18_unet(full_model: UNet) -> None:
    shapes = {k: tuple(v.shape) for k, v in full_model.state_dict().items()}
    assert len(shapes) == 182
    assert shapes["encoder.conv1.weight"] == (64, 1, 7, 7)
    assert shapes["encoder.layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["encoder.layer4.1.bn2.running_var"] == (512,)
    assert shapes["decoder.blocks.0.conv1.0.weight"] == (256, 768, 3, 3)
    assert shapes["decoder.blocks.4.conv2.1.weight"] == (16,)
    assert shapes["segmentation_head.0.weight"] == (2, 16, 3, 3)
    assert not any(k.startswith("encoder.fc") for k in shapes)


@pytest.mark.parametrize("size", ["full", "small"])
def test_output_shape(size: str) -> None:
    model = build_model(ModelSpec(size=size), seed=0).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 64, 32))
    assert out.shape == (2, 2, 64, 32)


def test_small_model_is_small_with_same_split() -> None:
    model = build_model(ModelSpec(size="small"))
    total = count_parameters(model)
    assert total < 500_000
    assert freeze(model, "encoder") / total == pytest.approx(0.22, abs=0.01)
    assert set(dict(model.named_children())) == {"encoder", "decoder", "segmentation_head"}
    assert len(model.decoder.blocks) == 5


def test_width_overrides() -> None:
    spec = ModelSpec(size="small", stem_channels=8, encoder_channels=(8, 8, 16, 16))
    model = build_model(spec)
    assert model.encoder.conv1.out_channels == 8
    assert model.encoder.layer4[0].conv2.out_channels == 16
    with pytest.raises(pydantic.ValidationError):
        ModelSpec(size="tiny")
    with pytest.raises(pydantic.ValidationError):
        ModelSpec(width=3)
    with pytest.raises(pydantic.ValidationError):
        spec.size = "full"  # frozen


def test_freeze_sets_requires_grad_and_eval_mode() -> None:
    model = build_model()
    freeze(model, "encoder")
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert all(p.requires_grad for p in model.segmentation_head.parameters())
    model.train()
    assert not model.encoder.training and model.decoder.training
    assert all(not m.training for m in model.encoder.modules())
    freeze(model, "decoder")
    model.train()
    assert model.encoder.training and not model.decoder.training
    freeze(model, "none")
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="freeze part"):
        freeze(model, "head")


def test_build_model_seed_is_reproducible_and_leaves_global_rng() -> None:
    state = torch.random.get_rng_state()
    a = build_model(seed=3).state_dict()
    b = build_model(seed=3).state_dict()
    c = build_model(seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.conv1.weight"], c["encoder.conv1.weight"])
