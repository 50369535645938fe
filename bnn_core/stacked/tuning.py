"""Pick the faster way to run the stacked binary convolutions on this GPU.

A stacked convolution is either one grouped convolution (``groups=N``) or N ordinary
convolutions over the trials' channel slices (``network.CONV_IMPLS``). Both compute the same
function; their speed depends on the cuDNN build, the GPU and the shapes (grouped kernels are
sometimes slower than separate ones: pytorch issues #70954, #73764). Like
``cudnn.benchmark``, ``choose_conv_impl`` times a few forward+backward passes of each on a
throwaway copy of the network and keeps the faster one.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import Tensor

from ..devices import autocast, synchronize
from .network import CONV_IMPLS, StackedBinaryConv2d, StackedNetwork

__all__ = ["choose_conv_impl", "time_conv_impls"]

WARMUP_STEPS = 2  # the first passes include cuDNN's algorithm search (cudnn.benchmark)


def time_conv_impls(
    network: StackedNetwork, example: Tensor, precision: str = "fp32", repeats: int = 3
) -> dict[str, float]:
    """Seconds per forward+backward pass on ``example`` (``[B, N, *input_shape]``) for each of
    ``CONV_IMPLS``, measured on a copy (``network``'s weights, grads and statistics are
    untouched)."""
    probe = copy.deepcopy(network).train()
    try:
        return {impl: _seconds_per_pass(probe, impl, example, precision, repeats)
                for impl in CONV_IMPLS}  # fmt: skip
    finally:
        del probe
        if example.device.type == "cuda":
            torch.cuda.empty_cache()


def _seconds_per_pass(
    probe: StackedNetwork, impl: str, example: Tensor, precision: str, repeats: int
) -> float:
    probe.conv_impl = impl

    def one_pass() -> None:
        with autocast(example.device, precision):
            logits = probe(example)
        logits.float().sum().backward()

    for _ in range(WARMUP_STEPS):
        one_pass()
    synchronize(example.device)
    start = time.perf_counter()
    for _ in range(repeats):
        one_pass()
    synchronize(example.device)
    return (time.perf_counter() - start) / repeats


def choose_conv_impl(
    network: StackedNetwork, example: Tensor, precision: str = "fp32"
) -> tuple[str, dict[str, float]]:
    """``(impl, timings)``: the faster of ``CONV_IMPLS`` on CUDA; ``"grouped"`` (untimed) on the
    CPU, for a single trial, without binary convolutions, or if timing runs out of memory."""
    has_convs = any(isinstance(m, StackedBinaryConv2d) for m in network.modules())
    if example.device.type != "cuda" or network.n_trials == 1 or not has_convs:
        return "grouped", {}
    try:
        timings = time_conv_impls(network, example, precision)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "grouped", {}
    return min(timings, key=timings.__getitem__), timings
