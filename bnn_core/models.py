"""Binary network architectures.

* ``binarynet``: the Bop paper's CIFAR-10 BinaryNet (Courbariaux et al. VGG-style).
* ``resnet``: a small Bi-Real-style binary ResNet for CIFAR-sized inputs. It matches no
  paper's model (the papers' ResNets are ImageNet Bi-Real Net-18 and ReActNet): 3 stages of
  16/32/64 channels, 2 units each, a real stem and classifier. Use it for quick residual
  experiments, not to reproduce a published number.
* ``mlp``: a three-layer binary perceptron (digits, MNIST-sized inputs).
* ``conv-small``: a small binary conv net for 8x8 and 28x28 inputs.

Every binary layer has +-1 weights and no bias. The BatchNorms of the sequential models follow
BinaryNet's Keras defaults (``eps=1e-3``, PyTorch ``momentum=0.01``) with the scale frozen at 1
(Keras ``scale=False``), so only the shift beta is a real trainable parameter. The ``resnet``
follows Bi-Real Net's Keras BatchNorm instead: ``momentum=0.8`` (PyTorch ``0.2``), ``eps=1e-3``
and a trainable scale. The sequential models are a plain
``nn.Sequential`` of BinaryConv2d/BinaryLinear/BatchNorm/MaxPool2d/Flatten/SignActivation so
that ``bnn_core.stacked`` can fuse several copies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .config import ConfigError
from .layers import BinaryConv2d, BinaryLinear, SignActivation

__all__ = ["MODEL_NAMES", "build_model", "binarynet", "resnet", "mlp", "conv_small", "batch_norm"]

InputShape = tuple[int, int, int]

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
# Bi-Real Net's Keras BatchNormalization(momentum=0.8): PyTorch momentum = 1 - 0.8.
BIREAL_BN_MOMENTUM = 0.2


def batch_norm(channels: int, dims: int = 2) -> nn.Module:
    """Keras-default BatchNorm without a trainable scale (weight fixed at 1)."""
    cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    bn = cls(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    bn.weight.requires_grad_(False)
    return bn


def birealnet_batch_norm(channels: int) -> nn.BatchNorm2d:
    """Bi-Real Net's Keras BatchNorm (momentum 0.8, eps 1e-3, trainable scale) in PyTorch."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BIREAL_BN_MOMENTUM)


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _check_spatial(name: str, size: int, input_shape: InputShape) -> None:
    if size < 1:
        raise ConfigError(
            "model", f"{name} needs larger inputs than {input_shape} (spatial size reaches 0)"
        )


def binarynet(
    input_shape: InputShape, num_classes: int, width: float = 1.0, dense_units: int = 1024
) -> nn.Sequential:
    """The Bop paper's CIFAR-10 BinaryNet; 32x32 -> 30 (valid conv) -> 15 -> 7 -> 3."""
    in_ch, height, width_px = input_shape
    f1, f2, f3 = (_scaled(c, width) for c in (128, 256, 512))
    dense = _scaled(dense_units, width)
    layers: list[nn.Module] = [
        BinaryConv2d(in_ch, f1, 3, padding=0),
        batch_norm(f1),
        SignActivation(),
        BinaryConv2d(f1, f1, 3, padding=1),
        nn.MaxPool2d(2),
        batch_norm(f1),
        SignActivation(),
    ]
    for c_in, c_out in ((f1, f2), (f2, f3)):
        layers += [
            BinaryConv2d(c_in, c_out, 3, padding=1),
            batch_norm(c_out),
            SignActivation(),
            BinaryConv2d(c_out, c_out, 3, padding=1),
            nn.MaxPool2d(2),
            batch_norm(c_out),
            SignActivation(),
        ]
    h, w = height - 2, width_px - 2
    for _ in range(3):
        h, w = h // 2, w // 2
    _check_spatial("binarynet", min(h, w), input_shape)
    layers += [
        nn.Flatten(),
        BinaryLinear(f3 * h * w, dense),
        batch_norm(dense, 1),
        SignActivation(),
        BinaryLinear(dense, dense),
        batch_norm(dense, 1),
        SignActivation(),
        BinaryLinear(dense, num_classes),
        batch_norm(num_classes, 1),
    ]
    return nn.Sequential(*layers)


def mlp(input_shape: InputShape, num_classes: int, hidden: int = 256) -> nn.Sequential:
    """Flatten -> 2 binary hidden layers (BN + sign) -> binary output layer + BN."""
    in_features = input_shape[0] * input_shape[1] * input_shape[2]
    return nn.Sequential(
        nn.Flatten(),
        BinaryLinear(in_features, hidden),
        batch_norm(hidden, 1),
        SignActivation(),
        BinaryLinear(hidden, hidden),
        batch_norm(hidden, 1),
        SignActivation(),
        BinaryLinear(hidden, num_classes),
        batch_norm(num_classes, 1),
    )


def conv_small(input_shape: InputShape, num_classes: int, width: float = 1.0) -> nn.Sequential:
    """Three binary 3x3 convs (same padding, two 2x2 max-pools) and a binary classifier.

    8x8 -> 4 -> 2; 28x28 -> 14 -> 7; 32x32 -> 16 -> 8.
    """
    in_ch, height, width_px = input_shape
    c1, c2 = _scaled(32, width), _scaled(64, width)
    h, w = height // 4, width_px // 4
    _check_spatial("conv-small", min(h, w), input_shape)
    return nn.Sequential(
        BinaryConv2d(in_ch, c1, 3, padding=1),
        batch_norm(c1),
        SignActivation(),
        BinaryConv2d(c1, c2, 3, padding=1),
        nn.MaxPool2d(2),
        batch_norm(c2),
        SignActivation(),
        BinaryConv2d(c2, c2, 3, padding=1),
        nn.MaxPool2d(2),
        batch_norm(c2),
        SignActivation(),
        nn.Flatten(),
        BinaryLinear(c2 * h * w, num_classes),
        batch_norm(num_classes, 1),
    )


class BiRealBlock(nn.Module):
    """``BN(BinaryConv3x3(approx_sign(x))) + shortcut(x)`` (Bi-Real Net unit, no activation).

    When the block downsamples or changes width the shortcut is AvgPool2 -> real 1x1 conv -> BN.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.sign = SignActivation("approx_sign")
        self.conv = BinaryConv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn = birealnet_batch_norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            pool: nn.Module = nn.AvgPool2d(stride) if stride != 1 else nn.Identity()
            self.shortcut = nn.Sequential(
                pool,
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                birealnet_batch_norm(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(self.sign(x))) + self.shortcut(x)


class BinaryResNet(nn.Module):
    """Bi-Real-style binary ResNet: real 3x3 stem, binary residual units, GAP, real classifier."""

    def __init__(
        self,
        input_shape: InputShape,
        num_classes: int,
        width: float = 1.0,
        blocks_per_stage: int = 2,
        stages: tuple[int, ...] = (16, 32, 64),
    ) -> None:
        super().__init__()
        widths = [_scaled(c, width) for c in stages]
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False),
            birealnet_batch_norm(widths[0]),
        )
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, out_channels in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BiRealBlock(channels, out_channels, stride))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet(input_shape: InputShape, num_classes: int, width: float = 1.0) -> BinaryResNet:
    """Bi-Real-style binary ResNet (stages 16/32/64 times ``width``, two units per stage).

    Not a paper model: it borrows Bi-Real Net's unit (binary 3x3 conv on ``approx_sign``,
    BatchNorm, identity or AvgPool + real 1x1 conv shortcut) at a CIFAR-10-sized depth and
    width; no published number belongs to it.
    """
    return BinaryResNet(input_shape, num_classes, width=width)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "binarynet": binarynet,
    "resnet": resnet,
    "mlp": mlp,
    "conv-small": conv_small,
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(
    name: str, input_shape: tuple[int, int, int], num_classes: int, **kwargs: Any
) -> nn.Module:
    """Build the model ``name`` for ``input_shape`` = (channels, height, width).

    Extra keyword arguments go to the builder (``width`` for binarynet/resnet/conv-small,
    ``hidden`` for mlp). Raises ``ConfigError('model', ...)`` for an unknown name.
    """
    if name not in _BUILDERS:
        raise ConfigError("model", f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError("model", f"input_shape must be (C, H, W), got {input_shape!r}")
    if num_classes < 2:
        raise ConfigError("model", f"num_classes must be >= 2, got {num_classes!r}")
    return _BUILDERS[name](tuple(int(v) for v in input_shape), int(num_classes), **kwargs)
