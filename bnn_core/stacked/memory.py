"""How many stacked trials to run at once on a device.

``choose_slots`` first bounds N by memory: it measures the peak memory of one training step
(forward, backward, stacked optimizer step) with N=1 and N=2 trials; the difference is the
cost of one more slot and the rest is fixed overhead (the CUDA context is excluded:
``mem_get_info`` already accounts for it). The bound is ``(free * headroom - fixed) /
per_slot``, capped at ``max_slots``. Memory is measured with ``cudnn.benchmark`` off, so the
workspaces of cuDNN's algorithm search (freed after it) do not count as the slot's own.

Then, with ``by_throughput`` (the default on CUDA), it times a training step at a few
candidate N (powers of two up to the bound, and the bound) and keeps the N with the most
model-epochs per second (N / seconds per step: every N takes the same steps per epoch) whose
measured peak fits the budget (``pick_slots``, a pure function of the measurements). More
slots stop paying once the GPU is saturated, and a grouped kernel's speed is not monotonic in
N, so the largest N that fits is not always the fastest. Results are cached per process.

On the CPU, or if the measurement fails, an analytical estimate (parameters x optimizer state
+ activations) bounds memory; on the CPU memory is not the limit, so ``max_slots`` is
returned unless a ``timer`` is given (tests inject one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import autocast, resolve_device, synchronize
from ..layers import use_latent_weights
from ..models import build_model
from .network import stack_models
from .optim import _STATE_NAMES, LATENT_FAMILIES, StackedOptimizer

__all__ = [
    "candidate_slots",
    "choose_slots",
    "estimate_slot_bytes",
    "measure_slot_bytes",
    "measure_step_seconds",
    "pick_slots",
]

# (n) -> (seconds per training step with n slots, peak bytes of that step)
StepTimer = Callable[[int], tuple[float, int]]
TIMED_STEPS = 5
WARMUP_STEPS = 2  # cuDNN's algorithm search and lazy allocations happen in these
_chosen: dict[tuple, int] = {}

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


def _one_step_network(
    model_name: str,
    input_shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
    n: int,
    num_classes: int,
    family: str,
    model_options: dict[str, Any] | None,
) -> Callable[[str], None]:
    """A stacked network of ``n`` fresh models and a function running one training step."""
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

    def step(precision: str) -> None:
        with autocast(device, precision):
            logits = network(x)
        loss = F.cross_entropy(logits.float().permute(0, 2, 1), y, reduction="none").mean(0)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()

    return step


def _peak_bytes(step: Callable[[str], None], device: torch.device, precision: str) -> int:
    """Peak memory of one step above what was allocated before, cuDNN benchmark off."""
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(precision)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    finally:
        torch.backends.cudnn.benchmark = benchmark


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
    """(bytes per slot, fixed bytes) from the peak memory of one step at N=1 and N=2 (CUDA;
    the network's own weights and state count, cuDNN benchmark workspaces do not)."""
    peaks = []
    for n in (1, 2):
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        step = _one_step_network(
            model_name, input_shape, batch_size, device, n, num_classes, family, model_options
        )
        built = torch.cuda.memory_allocated(device) - base
        peaks.append(built + _peak_bytes(step, device, precision))
        del step
    per_slot = max(peaks[1] - peaks[0], 1)
    return per_slot, max(peaks[0] - per_slot, 0)


def measure_step_seconds(
    model_name: str,
    input_shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
    n: int,
    *,
    num_classes: int = 10,
    family: str = "bop",
    precision: str = "fp32",
    model_options: dict[str, Any] | None = None,
) -> tuple[float, int]:
    """(seconds per training step, peak bytes) with ``n`` stacked slots on ``device``: peak
    memory with cuDNN benchmark off, time with it as training runs (on, on CUDA)."""
    start_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    step = _one_step_network(
        model_name, input_shape, batch_size, device, n, num_classes, family, model_options
    )
    peak = 0
    if device.type == "cuda":
        built = torch.cuda.memory_allocated(device) - start_bytes
        peak = built + _peak_bytes(step, device, precision)
    for _ in range(WARMUP_STEPS):
        step(precision)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(TIMED_STEPS):
        step(precision)
    synchronize(device)
    return (time.perf_counter() - start) / TIMED_STEPS, peak


def candidate_slots(bound: int) -> list[int]:
    """The N worth timing up to ``bound``: powers of two, and ``bound`` itself."""
    candidates = [1 << k for k in range(bound.bit_length()) if 1 << k <= bound]
    return sorted({*candidates, max(bound, 1)})


def pick_slots(measurements: Sequence[tuple[int, float, int]], budget_bytes: float) -> int:
    """The N of ``(n, seconds per step, peak bytes)`` measurements with the most
    model-epochs per second (``n / seconds``) whose bytes fit ``budget_bytes``; on a tie the
    smaller N. If none fits, the smallest N measured."""
    if not measurements:
        raise ValueError("measurements: need at least one (n, seconds, bytes)")
    fitting = [m for m in measurements if m[2] <= budget_bytes and m[1] > 0]
    if not fitting:
        return min(m[0] for m in measurements)
    return max(fitting, key=lambda m: (m[0] / m[1], -m[0]))[0]


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
    by_throughput: bool = True,
    timer: StepTimer | None = None,
) -> int:
    """The number of slots N (1..max_slots) for ``device`` (``cpu``, ``cuda[:i]`` or
    ``auto``): the fastest N within the free memory (see the module docstring);
    ``max_slots`` on the CPU unless ``timer`` (n -> (seconds, bytes)) is given."""
    device = resolve_device(device) if isinstance(device, str) else device
    max_slots = max(1, max_slots)
    if device.type != "cuda" and timer is None:
        return max_slots
    key = (model_name, tuple(input_shape), batch_size, str(device), max_slots, num_classes,
           family, precision, repr(sorted((model_options or {}).items())), headroom,
           by_throughput)  # fmt: skip
    if timer is None and key in _chosen:
        return _chosen[key]
    budget, bound = math.inf, max_slots
    if device.type == "cuda":
        budget, bound = _memory_bound(
            model_name, input_shape, batch_size, device, max_slots, num_classes, family,
            precision, model_options, headroom,
        )  # fmt: skip
    if by_throughput and bound > 1:
        if timer is None:

            def timer(n: int) -> tuple[float, int]:
                return measure_step_seconds(
                    model_name, input_shape, batch_size, device, n, num_classes=num_classes,
                    family=family, precision=precision, model_options=model_options,
                )  # fmt: skip

        bound = _fastest(timer, bound, budget, device)
    if timer is None or device.type == "cuda":
        _chosen[key] = bound
    return bound


def _memory_bound(
    model_name: str,
    input_shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
    max_slots: int,
    num_classes: int,
    family: str,
    precision: str,
    model_options: dict[str, Any] | None,
    headroom: float,
) -> tuple[float, int]:
    """(memory budget in bytes, the largest N whose estimated memory fits it)."""
    free, _ = torch.cuda.mem_get_info(device)
    budget = free * headroom
    try:
        per_slot, fixed = measure_slot_bytes(
            model_name, input_shape, batch_size, device, num_classes=num_classes,
            family=family, precision=precision, model_options=model_options,
        )  # fmt: skip
    except torch.cuda.OutOfMemoryError:
        return budget, 1
    except RuntimeError:
        per_slot = estimate_slot_bytes(
            model_name, input_shape, batch_size, num_classes=num_classes, family=family,
            model_options=model_options,
        )  # fmt: skip
        fixed = 0
    fits = math.floor((budget - fixed) / per_slot)
    return budget, max(1, min(max_slots, fits))


def _fastest(timer: StepTimer, bound: int, budget: float, device: torch.device) -> int:
    """``pick_slots`` over the candidates up to ``bound``; a candidate that runs out of memory
    ends the search, and if timing fails altogether the memory bound stands."""
    measured: list[tuple[int, float, int]] = []
    for n in candidate_slots(bound):
        try:
            seconds, peak = timer(n)
        except torch.cuda.OutOfMemoryError:
            break
        except RuntimeError:
            return bound
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        measured.append((n, seconds, peak))
    return pick_slots(measured, budget) if measured else 1
