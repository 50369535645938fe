"""How many stacked trials fit on the GPU.

``choose_slots`` measures the peak memory of one training step (forward, backward, stacked
optimizer step) with N=1 and N=2 trials; the difference is the cost of one more slot and the
rest is fixed overhead (CUDA context excluded: ``mem_get_info`` already accounts for it).
N is then ``(free * headroom - fixed) / per_slot``, capped at ``max_slots``. On the CPU, or if
the measurement fails, an analytical estimate (parameters x optimizer state + activations)
is used; on the CPU memory is not the limit, so ``max_slots`` is returned.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import autocast, resolve_device
from ..layers import use_latent_weights
from ..models import build_model
from .network import stack_models
from .optim import _STATE_NAMES, LATENT_FAMILIES, StackedOptimizer

__all__ = ["choose_slots", "estimate_slot_bytes", "measure_slot_bytes"]

_BYTES_PER_ACTIVATION = 16  # fp32 output + saved input/mask for backward, roughly


def estimate_slot_bytes(
    model_name: str,
    input_shape: tuple[int, int, int],
    batch_size: int,
    *,
    num_classes: int = 10,
    family: str = "bop",
    model_options: dict[str, Any] | None = None,
) -> int:
    """Analytical bytes per slot: weights + grads + optimizer state (fp32) + activations.

    Optimizer state tensors per weight (``_STATE_NAMES``): bop 1, bop2 2, filter 2,
    latent-adam 2 (Adam moments), latent-sgd 1 (momentum buffer); every parameter is counted
    at its family's rate (the few real parameters carry Adam's 2).
    """
    model = build_model(model_name, input_shape, num_classes, **dict(model_options or {}))
    params = sum(p.numel() for p in model.parameters())
    states = len(_STATE_NAMES.get(family, ("m",)))
    param_bytes = params * 4 * (2 + states)
    activations = 0

    def count(module: nn.Module, _: Any, output: torch.Tensor) -> None:
        nonlocal activations
        if not list(module.children()):
            activations += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()
    return int(param_bytes + activations * batch_size * _BYTES_PER_ACTIVATION)


def measure_slot_bytes(
    model_name: str,
    input_shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
    *,
    num_classes: int = 10,
    family: str = "bop",
    precision: str = "fp32",
    model_options: dict[str, Any] | None = None,
) -> tuple[int, int]:
    """(bytes per slot, fixed bytes) from the peak memory of one step at N=1 and N=2 (CUDA)."""
    peaks = []
    for n in (1, 2):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        models = [
            build_model(model_name, input_shape, num_classes, **dict(model_options or {}))
            for _ in range(n)
        ]
        if family in LATENT_FAMILIES:  # ste_sign of the latent weight in the forward pass
            for model in models:
                use_latent_weights(model)
        network = stack_models(models).to(device)
        optimizer = StackedOptimizer(network, family)
        x = torch.randn(batch_size, n, *input_shape, device=device)
        y = torch.randint(0, num_classes, (batch_size, n), device=device)
        with autocast(device, precision):
            logits = network(x)
        loss = F.cross_entropy(logits.float().permute(0, 2, 1), y, reduction="none").mean(0)
        loss.sum().backward()
        optimizer.step()
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
        del network, optimizer, x, y, logits, loss, models
    per_slot = max(peaks[1] - peaks[0], 1)
    return per_slot, max(peaks[0] - per_slot, 0)


def choose_slots(
    model_name: str,
    input_shape: tuple[int, int, int],
    batch_size: int,
    device: str | torch.device,
    max_slots: int,
    *,
    num_classes: int = 10,
    family: str = "bop",
    precision: str = "fp32",
    model_options: dict[str, Any] | None = None,
    headroom: float = 0.8,
) -> int:
    """The number of slots N (1..max_slots) that fits the free memory of ``device``
    (``cpu``, ``cuda[:i]`` or ``auto``); ``max_slots`` on the CPU."""
    device = resolve_device(device) if isinstance(device, str) else device
    if device.type != "cuda":
        return max(1, max_slots)
    free, _ = torch.cuda.mem_get_info(device)
    try:
        per_slot, fixed = measure_slot_bytes(
            model_name, input_shape, batch_size, device, num_classes=num_classes,
            family=family, precision=precision, model_options=model_options,
        )  # fmt: skip
    except torch.cuda.OutOfMemoryError:
        return 1
    except RuntimeError:
        per_slot = estimate_slot_bytes(
            model_name, input_shape, batch_size, num_classes=num_classes, family=family,
            model_options=model_options,
        )  # fmt: skip
        fixed = 0
    fits = math.floor((free * headroom - fixed) / per_slot)
    return max(1, min(max_slots, fits))
