"""Binary layers and the binary/real parameter split.

A binary layer stores its weight as an ``nn.Parameter`` holding exactly +-1 (fp32) and uses it
directly in the forward pass: Bop and the cascaded-EMA filter flip these values in place, so
there is no latent weight and no sign on the weight path.

For the latent-weight baselines the same layer is switched to ``latent`` mode: the parameter
then holds real-valued latent weights and the forward pass uses ``ste_sign(weight)``.

Which parameters are binary is decided by layer type (``BinaryLayer`` subclasses), never by
tensor shape or parameter name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .binarize import ACTIVATION_QUANTIZERS, sign, ste_sign

__all__ = [
    "BinaryLayer",
    "BinaryConv2d",
    "BinaryLinear",
    "SignActivation",
    "binary_layers",
    "split_parameters",
    "use_latent_weights",
]


class BinaryLayer(nn.Module):
    """Marker base class: ``self.weight`` of a ``BinaryLayer`` is trained by a binary optimizer."""

    weight: nn.Parameter
    latent: bool = False

    def binary_weight(self) -> Tensor:
        """The +-1 weight used in the forward pass."""
        return ste_sign(self.weight) if self.latent else self.weight

    def reset_binary(self, generator: torch.Generator | None = None) -> None:
        """Random +-1 initialisation (the Bop paper's sign of a random init)."""
        with torch.no_grad():
            noise = torch.rand(self.weight.shape, generator=generator) - 0.5
            self.weight.copy_(sign(noise))


class BinaryConv2d(BinaryLayer):
    """2-D convolution with +-1 weights and no bias (BinaryNet uses ``use_bias=False``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | str = 0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        )
        self.reset_binary()

    def forward(self, x: Tensor) -> Tensor:
        weight = self.binary_weight().to(x.dtype)
        return F.conv2d(x, weight, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, latent={self.latent}"
        )


class BinaryLinear(BinaryLayer):
    """Fully connected layer with +-1 weights and no bias."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_binary()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.binary_weight().to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, latent={self.latent}"


class SignActivation(nn.Module):
    """Binarizes activations with a named quantizer (``ste_sign`` or ``approx_sign``)."""

    def __init__(self, quantizer: str = "ste_sign") -> None:
        super().__init__()
        if quantizer not in ACTIVATION_QUANTIZERS:
            raise ValueError(
                f"quantizer: unknown {quantizer!r}; choose one of {sorted(ACTIVATION_QUANTIZERS)}"
            )
        self.quantizer = quantizer
        self._fn = ACTIVATION_QUANTIZERS[quantizer]

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return self.quantizer


def binary_layers(model: nn.Module) -> Iterator[tuple[str, BinaryLayer]]:
    """Yield ``(name, layer)`` for every binary layer of ``model`` in definition order."""
    for name, module in model.named_modules():
        if isinstance(module, BinaryLayer):
            yield name, module


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split trainable parameters into ``(binary, real)`` by layer type.

    Binary = the ``weight`` of every ``BinaryLayer``. Real = every other parameter that
    requires grad (batch-norm shifts, real first/last layers, real shortcut convolutions).
    """
    binary = [layer.weight for _, layer in binary_layers(model)]
    binary_ids = {id(p) for p in binary}
    real = [p for p in model.parameters() if p.requires_grad and id(p) not in binary_ids]
    return binary, real


def use_latent_weights(model: nn.Module, init_scale: float | None = None) -> None:
    """Switch every binary layer to latent-weight mode (for the latent Adam/SGD baselines).

    The latent weights are Glorot-uniform initialised; ``init_scale`` (if given) replaces the
    Glorot bound, so that ``U(-init_scale, init_scale)`` is used (e.g. 1e-3 as in ReActNet).
    """
    for _, layer in binary_layers(model):
        layer.latent = True
        weight = layer.weight
        fan_out = weight.shape[0] * math.prod(weight.shape[2:])
        fan_in = math.prod(weight.shape[1:])
        bound = init_scale if init_scale is not None else math.sqrt(6.0 / (fan_in + fan_out))
        with torch.no_grad():
            weight.uniform_(-bound, bound)
