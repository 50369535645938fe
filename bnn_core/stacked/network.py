"""Fuse N copies of one architecture into one grouped network (as HFTA fuses models).

Layout: trial ``n`` owns channels ``[n*C, (n+1)*C)`` of every activation, so a 4-D activation
is ``[B, N*C, H, W]`` and a flat one ``[B, N*F]``. With that layout

* a convolution becomes ``groups = N * groups`` over ``[B, N*C, H, W]`` (the weight is the
  single weights concatenated along dim 0; the first layer is grouped too, since every trial
  sees its own batch);
* a linear layer becomes a batched matmul over ``[N, B, F]``;
* a BatchNorm over ``N*C`` channels gives exactly per-trial, per-channel statistics and running
  statistics;
* channel-wise modules (max/avg pooling, sign, identity, ReLU, ...) and element-wise functional
  code (residual additions) need no change;
* ``nn.Flatten`` flattens ``[B, N*C, H, W]`` in logical order, which is ``[B, N, C*H*W]``:
  per trial in the same (C, H, W) order as the single model.

Every stacked parameter and buffer has dim 0 equal to ``N * (single dim 0)``, so
``t.unflatten(0, (N, -1))[n]`` is trial ``n``'s tensor (that is how ``unstack``, slot refill
and the per-trial optimizer address a trial).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..binarize import ste_sign
from ..layers import BinaryConv2d, BinaryLayer, BinaryLinear, SignActivation

__all__ = [
    "CONV_IMPLS",
    "StackedNetwork",
    "StackedBinaryConv2d",
    "StackedBinaryLinear",
    "StackedLinear",
    "stack_models",
    "unstack",
    "verify_stacking",
    "trial_view",
    "StackingError",
]

# Modules that act per channel (or per element): a copy works unchanged on [B, N*C, ...].
_CHANNELWISE = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Identity,
    nn.ReLU,
    nn.Hardtanh,
    nn.Tanh,
    nn.Dropout,
)


# Leaf modules whose output is still +-1 when their input is.
_KEEPS_SIGN = (nn.Flatten, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Identity)


class StackingError(TypeError):
    """The models cannot be fused (different structure, or a module we cannot stack)."""


class _PrecisionMixin:
    """Under autocast, run in bf16 only where that is exact: a binary layer whose input is the
    output of a ``SignActivation`` (+-1 x +-1 products; ``stack_models`` sets
    ``low_precision``). Other layers (the first layer, which sees real-valued pixels, and real
    convolutions/linears) run in fp32 with autocast disabled."""

    low_precision: bool = False

    def _call(self, x: Tensor) -> Tensor:
        device_type = x.device.type
        if not self.low_precision and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type=device_type, enabled=False):
                return self._forward(x.float())
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError


def trial_view(tensor: Tensor, n_trials: int) -> Tensor:
    """View a stacked tensor as ``[N, ...]`` (dim 0 split into trials; no copy)."""
    return tensor.unflatten(0, (n_trials, -1))


# How a stacked binary convolution runs: "grouped" = one convolution with groups=N;
# "split" = N ordinary convolutions on the trials' channel slices, concatenated. Same function;
# which is faster depends on the cuDNN build and the shapes (grouped kernels can be slower than
# separate ones), so ``StackedTrainer`` times both on CUDA.
CONV_IMPLS = ("grouped", "split")


class StackedBinaryConv2d(_PrecisionMixin, BinaryLayer):
    """N binary convolutions; ``weight`` is ``[N*Cout, Cin, k, k]``. ``conv_impl`` (one of
    ``CONV_IMPLS``) picks one grouped convolution or N convolutions over channel slices."""

    conv_impl: str = "grouped"

    def __init__(self, n_trials: int, single: BinaryConv2d, weight: Tensor) -> None:
        super().__init__()
        self.n_trials = n_trials
        self.in_channels = single.in_channels
        self.out_channels = single.out_channels
        self.kernel_size = single.kernel_size
        self.stride = single.stride
        self.padding = single.padding
        self.latent = single.latent
        self.weight = nn.Parameter(weight, requires_grad=single.weight.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        return self._call(x)

    def _forward(self, x: Tensor) -> Tensor:
        weight = self.binary_weight().to(x.dtype)
        if self.conv_impl == "grouped" or self.n_trials == 1:
            return F.conv2d(
                x, weight, stride=self.stride, padding=self.padding, groups=self.n_trials
            )
        pieces = zip(x.chunk(self.n_trials, 1), weight.chunk(self.n_trials, 0), strict=True)
        outputs = [F.conv2d(xi, wi, stride=self.stride, padding=self.padding) for xi, wi in pieces]
        return torch.cat(outputs, 1)

    def extra_repr(self) -> str:
        return (
            f"n_trials={self.n_trials}, {self.in_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        )


def _batched_linear(x: Tensor, weight: Tensor, bias: Tensor | None, n_trials: int) -> Tensor:
    """``[B, N*F] -> [B, N*O]`` with trial n using ``weight[n*O:(n+1)*O]`` (one bmm)."""
    batch = x.shape[0]
    inputs = x.reshape(batch, n_trials, -1).transpose(0, 1)  # [N, B, F]
    w = weight.to(x.dtype).unflatten(0, (n_trials, -1))  # [N, O, F]
    if bias is None:
        out = torch.bmm(inputs, w.transpose(1, 2))
    else:
        b = bias.to(x.dtype).unflatten(0, (n_trials, -1))[:, None, :]  # [N, 1, O]
        out = torch.baddbmm(b, inputs, w.transpose(1, 2))
    return out.transpose(0, 1).reshape(batch, -1)


class StackedBinaryLinear(_PrecisionMixin, BinaryLayer):
    """N binary linear layers as one batched matmul; ``weight`` is ``[N*O, F]``."""

    def __init__(self, n_trials: int, single: BinaryLinear, weight: Tensor) -> None:
        super().__init__()
        self.n_trials = n_trials
        self.in_features = single.in_features
        self.out_features = single.out_features
        self.latent = single.latent
        self.weight = nn.Parameter(weight, requires_grad=single.weight.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        return self._call(x)

    def _forward(self, x: Tensor) -> Tensor:
        weight = ste_sign(self.weight) if self.latent else self.weight
        return _batched_linear(x, weight, None, self.n_trials)

    def extra_repr(self) -> str:
        return f"n_trials={self.n_trials}, {self.in_features}, {self.out_features}"


class StackedLinear(_PrecisionMixin, nn.Module):
    """N real ``nn.Linear`` layers; ``weight`` ``[N*O, F]``, ``bias`` ``[N*O]``."""

    def __init__(self, n_trials: int, single: nn.Linear, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.n_trials = n_trials
        self.in_features = single.in_features
        self.out_features = single.out_features
        self.weight = nn.Parameter(weight, requires_grad=single.weight.requires_grad)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=True)

    def forward(self, x: Tensor) -> Tensor:
        return self._call(x)

    def _forward(self, x: Tensor) -> Tensor:
        return _batched_linear(x, self.weight, self.bias, self.n_trials)


class StackedConv2d(_PrecisionMixin, nn.Conv2d):
    """N real convolutions as one grouped ``nn.Conv2d`` (fp32 under autocast)."""

    def forward(self, x: Tensor) -> Tensor:
        return self._call(x)

    def _forward(self, x: Tensor) -> Tensor:
        return super().forward(x)


def _cat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.detach() for t in tensors], dim=0).clone()


def _stack_bn(mods: list[nn.Module]) -> nn.Module:
    first = mods[0]
    assert isinstance(first, nn.modules.batchnorm._BatchNorm)
    if first.momentum is None:
        raise StackingError("BatchNorm with momentum=None (cumulative average) is not stackable")
    n_trials = len(mods)
    stacked = type(first)(
        first.num_features * n_trials,
        eps=first.eps,
        momentum=first.momentum,
        affine=first.affine,
        track_running_stats=first.track_running_stats,
    ).to(device=_device_of(first))
    with torch.no_grad():
        for name in ("weight", "bias"):
            param = getattr(first, name)
            if param is not None:
                getattr(stacked, name).copy_(_cat([getattr(m, name) for m in mods]))
                getattr(stacked, name).requires_grad_(param.requires_grad)
        for name in ("running_mean", "running_var"):
            if getattr(first, name) is not None:
                getattr(stacked, name).copy_(_cat([getattr(m, name) for m in mods]))
        if first.num_batches_tracked is not None:
            stacked.num_batches_tracked.copy_(first.num_batches_tracked)
    return stacked


def _device_of(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _stack_conv(mods: list[nn.Module]) -> nn.Module:
    first = mods[0]
    n_trials = len(mods)
    weight = _cat([m.weight for m in mods])
    if isinstance(first, BinaryConv2d):
        return StackedBinaryConv2d(n_trials, first, weight)
    assert isinstance(first, nn.Conv2d)
    stacked = StackedConv2d(
        first.in_channels * n_trials,
        first.out_channels * n_trials,
        first.kernel_size,
        stride=first.stride,
        padding=first.padding,
        dilation=first.dilation,
        groups=first.groups * n_trials,
        bias=first.bias is not None,
        padding_mode=first.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        stacked.weight.copy_(weight)
        if first.bias is not None:
            stacked.bias.copy_(_cat([m.bias for m in mods]))
    return stacked


def _stack_linear(mods: list[nn.Module]) -> nn.Module:
    first = mods[0]
    n_trials = len(mods)
    weight = _cat([m.weight for m in mods])
    if isinstance(first, BinaryLinear):
        return StackedBinaryLinear(n_trials, first, weight)
    assert isinstance(first, nn.Linear)
    bias = None if first.bias is None else _cat([m.bias for m in mods])
    return StackedLinear(n_trials, first, weight, bias)


def _check_same(mods: list[nn.Module], path: str) -> None:
    first = mods[0]
    for index, other in enumerate(mods[1:], start=1):
        if type(other) is not type(first):
            raise StackingError(
                f"{path or '<root>'}: model {index} has {type(other).__name__}, "
                f"model 0 has {type(first).__name__}"
            )
        shapes_a = [(n, t.shape) for n, t in first.named_parameters(recurse=False)]
        shapes_b = [(n, t.shape) for n, t in other.named_parameters(recurse=False)]
        shapes_a += [(n, t.shape) for n, t in first.named_buffers(recurse=False)]
        shapes_b += [(n, t.shape) for n, t in other.named_buffers(recurse=False)]
        if shapes_a != shapes_b or list(first._modules) != list(other._modules):
            raise StackingError(f"{path or '<root>'}: model {index} differs in shape from model 0")


def _stack_module(mods: list[nn.Module], path: str) -> nn.Module:
    _check_same(mods, path)
    first = mods[0]
    if isinstance(first, BinaryConv2d | nn.Conv2d) and type(first) in (BinaryConv2d, nn.Conv2d):
        return _stack_conv(mods)
    if type(first) in (BinaryLinear, nn.Linear):
        return _stack_linear(mods)
    if isinstance(first, nn.BatchNorm1d | nn.BatchNorm2d):
        return _stack_bn(mods)
    if isinstance(first, nn.Flatten):
        if first.start_dim != 1 or first.end_dim != -1:
            raise StackingError(f"{path}: only Flatten(1, -1) is stackable")
        return copy.deepcopy(first)
    if isinstance(first, (*_CHANNELWISE, SignActivation)):
        return copy.deepcopy(first)
    if first._parameters or first._buffers:
        raise StackingError(
            f"{path or '<root>'}: {type(first).__name__} holds its own parameters and is not "
            "a known stackable layer"
        )
    if not first._modules:
        raise StackingError(f"{path or '<root>'}: unknown leaf module {type(first).__name__}")
    # A container (nn.Sequential or a custom block): copy it and stack its children.
    shell = copy.copy(first)
    shell._modules = {}
    for name in first._modules:
        children = [m._modules[name] for m in mods]
        if children[0] is None:
            shell._modules[name] = None
            continue
        shell._modules[name] = _stack_module(children, f"{path}.{name}" if path else name)
    return shell


class StackedNetwork(nn.Module):
    """N trials of one architecture as one grouped network.

    ``forward(x)`` takes ``x`` of shape ``[B, N, *input_shape]`` (trial ``n``'s batch is
    ``x[:, n]``) and returns logits ``[B, N, num_classes]``. ``body`` works on the fused
    layout ``[B, N*C, H, W]``.
    """

    def __init__(self, body: nn.Module, template: nn.Module, n_trials: int) -> None:
        super().__init__()
        self.body = body
        self.n_trials = n_trials
        self.channels_last = False
        # The single-model structure, kept off the module tree (for unstack and slot refill).
        object.__setattr__(self, "template", template)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        fused = x.reshape(batch, self.n_trials * x.shape[2], *x.shape[3:])
        if self.channels_last and fused.dim() == 4:
            fused = fused.contiguous(memory_format=torch.channels_last)
        return self.body(fused).reshape(batch, self.n_trials, -1)

    @property
    def conv_impl(self) -> str:
        """How the binary convolutions run (``CONV_IMPLS``); ``"grouped"`` if there are none."""
        convs = [m for m in self.body.modules() if isinstance(m, StackedBinaryConv2d)]
        return convs[0].conv_impl if convs else "grouped"

    @conv_impl.setter
    def conv_impl(self, impl: str) -> None:
        if impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl: must be one of {CONV_IMPLS}, got {impl!r}")
        for module in self.body.modules():
            if isinstance(module, StackedBinaryConv2d):
                module.conv_impl = impl

    def load_trial(self, index: int, model: nn.Module) -> None:
        """Overwrite trial ``index`` with the parameters and buffers of a single ``model``."""
        stacked = dict(self.body.named_parameters())
        stacked.update(dict(self.body.named_buffers()))
        single = dict(model.named_parameters())
        single.update(dict(model.named_buffers()))
        if set(stacked) != set(single):
            raise StackingError("model: its parameters do not match the stacked architecture")
        with torch.no_grad():
            for name, tensor in stacked.items():
                if name.endswith("num_batches_tracked"):
                    continue
                part = trial_view(tensor, self.n_trials)[index]
                part.copy_(single[name].reshape(part.shape))

    def export_trial(self, index: int) -> nn.Module:
        """A single model (a copy of the template) holding trial ``index``'s state."""
        stacked = dict(self.body.named_parameters())
        stacked.update(dict(self.body.named_buffers()))
        device = next(iter(stacked.values())).device
        model = copy.deepcopy(self.template).to(device)
        with torch.no_grad():
            for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
                source = stacked[name]
                if name.endswith("num_batches_tracked"):
                    tensor.copy_(source)
                    continue
                part = trial_view(source, self.n_trials)[index]
                tensor.copy_(part.reshape(tensor.shape))
        return model


def _mark_low_precision(body: nn.Module) -> None:
    """``low_precision`` = binary layer fed directly by a SignActivation (module order)."""
    after_sign = False
    for module in body.modules():
        if isinstance(module, SignActivation):
            after_sign = True
        elif isinstance(module, _PrecisionMixin):
            module.low_precision = after_sign and isinstance(module, BinaryLayer)
            after_sign = False
        elif not module._modules and not isinstance(module, _KEEPS_SIGN):
            after_sign = False  # e.g. BatchNorm or average pooling: no longer +-1


def stack_models(models: list[nn.Module]) -> StackedNetwork:
    """Fuse N models of identical structure (same class, same shapes) into one network.

    Works for ``nn.Sequential`` models and for containers whose own ``forward`` only applies
    channel-wise/element-wise functions between stackable layers (e.g. residual additions,
    global pooling followed by ``torch.flatten``); ``verify_stacking`` checks a given model.
    Raises ``StackingError`` for anything else.
    """
    if not models:
        raise StackingError("models: need at least one model")
    body = _stack_module(list(models), "")
    _mark_low_precision(body)
    template = copy.deepcopy(models[0])
    return StackedNetwork(body, template, len(models))


def verify_stacking(
    models: list[nn.Module], network: StackedNetwork, example: Tensor, atol: float = 1e-4
) -> bool:
    """True if ``network`` (eval mode) reproduces every single model on ``example``
    (``[B, N, *input_shape]``). Runs on copies, so no running statistic changes."""
    net = copy.deepcopy(network).eval()
    with torch.no_grad():
        fused = net(example)
        for index, model in enumerate(models):
            single = copy.deepcopy(model).eval()(example[:, index])
            if not torch.allclose(fused[:, index], single, atol=atol, rtol=1e-4):
                return False
    return True


def unstack(network: StackedNetwork) -> list[nn.Module]:
    """Split a stacked network back into N independent single models."""
    return [network.export_trial(index) for index in range(network.n_trials)]
