"""U-Net with a ResNet encoder, in plain PyTorch.

The ``"full"`` model reproduces the layout of segmentation-models-pytorch's
``Unet("resnet18", in_channels=1, classes=2)`` used by the reference study: the same module
names, state-dict keys and shapes, and 14,322,082 parameters, without depending on smp or
torchvision.

Layout
------
``encoder``
    The stem (7x7 stride-2 convolution, batch norm, ReLU, 3x3 stride-2 max pool) plus four
    stages of residual basic blocks (``layer1`` .. ``layer4``); stages 2-4 halve the resolution.
``decoder``
    Five upsampling blocks (nearest x2, concatenate the skip feature, two conv-BN-ReLU).
``segmentation_head``
    One 3x3 convolution to the class logits. It belongs to neither part and is never frozen.

The ``"small"`` model (the laptop option, 395,330 parameters) keeps exactly this structure
with a quarter of the encoder widths, one residual block per stage and a narrower decoder
(32, 16, 16, 8, 8), so freezing means the same thing for both sizes. The decoder width is
chosen so that freezing the encoder leaves 22% of the parameters trainable, as in the full
model (3,151,842 of 14,322,082). One thread at 128 px trains it at about 90 images/s against
about 10 for the full model.

Freezing and batch norm
-----------------------
:func:`freeze` sets ``requires_grad=False`` on every parameter of the frozen part and records
the part on the model. :meth:`UNet.train` then keeps the frozen part in eval mode, so its
batch-norm layers normalise with the running statistics learned in pretraining and do not
update them: a frozen part is bit-for-bit unchanged by a transfer stage (parameters and
buffers), and its output does not depend on the batch composition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hrtem_ray.spec.types import Freeze, ModelSpec


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 projection shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """Stem plus four residual stages; returns the features at every scale.

    ``forward`` returns ``[x, stem (1/2), layer1 (1/4), layer2 (1/8), layer3 (1/16),
    layer4 (1/32)]`` like smp's encoders.
    """

    def __init__(
        self, in_channels: int, stem: int, channels: tuple[int, ...], depths: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        prev = stem
        for i, (ch, depth) in enumerate(zip(channels, depths, strict=True)):
            blocks = [
                BasicBlock(prev if j == 0 else ch, ch, 2 if (i > 0 and j == 0) else 1)
                for j in range(depth)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            prev = ch
        self.out_channels = (in_channels, stem, *channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [x]
        x = self.relu(self.bn1(self.conv1(x)))
        feats.append(x)
        x = self.layer1(self.maxpool(x))
        feats.append(x)
        for name in ("layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            feats.append(x)
        return feats


def _conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class DecoderBlock(nn.Module):
    """Upsample x2 (nearest), concatenate the skip feature if any, two conv-BN-ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(in_ch + skip_ch, out_ch)
        self.conv2 = _conv_bn_relu(out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """Five :class:`DecoderBlock` s from the deepest feature back to full resolution."""

    def __init__(self, encoder_channels: tuple[int, ...], channels: tuple[int, ...]) -> None:
        super().__init__()
        enc = list(encoder_channels[1:])[::-1]  # deepest first, drop the input
        ins = [enc[0], *channels[:-1]]
        skips = [*enc[1:], 0]
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, channels, strict=True)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        feats = features[1:][::-1]
        x, skips = feats[0], feats[1:]
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x


class UNet(nn.Module):
    """U-Net with a ResNet encoder; see the module docstring for the layout.

    Input height and width must be multiples of 32.
    """

    def __init__(self, spec: ModelSpec, in_channels: int = 1, classes: int = 2) -> None:
        super().__init__()
        cfg = spec.resolved()
        self.spec = spec
        self.encoder = ResNetEncoder(
            in_channels, cfg["stem_channels"], cfg["encoder_channels"], cfg["encoder_depths"]
        )
        self.decoder = UNetDecoder(self.encoder.out_channels, cfg["decoder_channels"])
        self.segmentation_head = nn.Sequential(
            nn.Conv2d(cfg["decoder_channels"][-1], classes, 3, padding=1)
        )
        self.frozen: Freeze = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, C, H, W)`` to class logits ``(N, classes, H, W)``."""
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"image height and width must be multiples of 32, got {x.shape}")
        return self.segmentation_head(self.decoder(self.encoder(x)))

    def train(self, mode: bool = True) -> UNet:
        """Set training mode, keeping a frozen part (see :func:`freeze`) in eval mode."""
        super().train(mode)
        if mode and self.frozen != "none":
            getattr(self, self.frozen).eval()
        return self


def build_model(
    spec: ModelSpec | None = None,
    in_channels: int = 1,
    classes: int = 2,
    *,
    seed: int | None = None,
) -> UNet:
    """Build a freshly initialised :class:`UNet`.

    Parameters
    ----------
    spec
        Architecture; default ``ModelSpec()`` (the small model).
    in_channels, classes
        Input channels and output classes.
    seed
        If given, the weights are initialised from this seed without touching torch's global
        random state, so the same seed always gives the same initial model.
    """
    spec = spec or ModelSpec()
    if seed is None:
        return UNet(spec, in_channels=in_channels, classes=classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(spec, in_channels=in_channels, classes=classes)


def freeze(model: UNet, part: Freeze) -> int:
    """Freeze the encoder or the decoder of ``model`` in place (``"none"`` unfreezes all).

    The frozen part's parameters get ``requires_grad=False``; the segmentation head always
    stays trainable. While frozen, the part is kept in eval mode by :meth:`UNet.train`, so
    its batch-norm running statistics are not updated (see the module docstring).

    Parameters
    ----------
    model
        The model to modify.
    part
        ``"none"``, ``"encoder"`` or ``"decoder"``.

    Returns
    -------
    int
        The number of trainable parameters after freezing.
    """
    if part not in ("none", "encoder", "decoder"):
        raise ValueError(f"freeze part must be 'none', 'encoder' or 'decoder', got {part!r}")
    for p in model.parameters():
        p.requires_grad_(True)
    if part != "none":
        for p in getattr(model, part).parameters():
            p.requires_grad_(False)
    model.frozen = part
    model.train(model.training)
    return count_parameters(model, trainable_only=True)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
