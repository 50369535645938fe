"""The whole stacked training step as one CUDA graph (``capture="graph"``).

A step is forward, loss, backward and the stacked optimizer's update. Everything it reads
that changes from step to step is a device tensor updated in place: the batch (copied into
static input buffers), the per-trial hyperparameter rows of the epoch's table (copied into
``StackedOptimizer.buffer``), weights, gradients and optimizer state. So one captured graph
replays every step, with one launch instead of hundreds.

What is host-side Python in a step decides the graph's shape and is the capture's key: which
trials use Bop2ndOrder's unbiased variant and which optional latent ops (weight decay kinds,
momentum, clip) any trial needs (``StackedOptimizer`` skips ops no trial uses). When the key
changes (a refill brings a trial with other options) the step is captured again.

Capture follows torch.cuda.graphs' rules: ``WARMUP_STEPS`` real steps run eagerly on a side
stream first (cuDNN's algorithm search, lazy allocations), then the next step is captured and
replayed (capturing runs no kernels, so the replay is that step). A captured step computes
what the eager step computes: the same kernels on the same addresses.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor

__all__ = ["CAPTURE_MODES", "GraphStep", "resolve_capture"]

CAPTURE_MODES = ("off", "graph", "auto")
WARMUP_STEPS = 3

Step = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def resolve_capture(mode: str, device: torch.device) -> bool:
    """Whether to capture: ``graph`` and ``auto`` capture on CUDA; the CPU has no graphs."""
    return mode in ("graph", "auto") and device.type == "cuda"


class GraphStep:
    """``step(x, y, row) -> (per-trial losses, per-trial hits)``, replayed from a CUDA graph.

    ``key()`` returns the host-side state the step's Python depends on; a new key recaptures.
    """

    def __init__(self, step: Step, key: Callable[[], Hashable]) -> None:
        self.step = step
        self.key = key
        self.captures = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_key: Hashable = None
        self._warm = 0
        self._inputs: tuple[Tensor, Tensor, Tensor] | None = None
        self._outputs: tuple[Tensor, Tensor] | None = None

    def __call__(self, x: Tensor, y: Tensor, row: Tensor) -> tuple[Tensor, Tensor]:
        key = self.key()
        if self._graph is not None and key == self._graph_key:
            assert self._inputs is not None and self._outputs is not None
            for static, value in zip(self._inputs, (x, y, row), strict=True):
                static.copy_(value)
            self._graph.replay()
            return self._outputs[0].clone(), self._outputs[1].clone()
        if self._warm < WARMUP_STEPS:
            self._warm += 1
            return self._side_stream(x, y, row)
        return self._capture(key, x, y, row)

    def _side_stream(self, x: Tensor, y: Tensor, row: Tensor) -> tuple[Tensor, Tensor]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = self.step(x, y, row)
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _capture(self, key: Hashable, x: Tensor, y: Tensor, row: Tensor) -> tuple[Tensor, Tensor]:
        self.reset()
        self._inputs = (x.clone(), y.clone(), row.clone())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._outputs = self.step(*self._inputs)
        self._graph, self._graph_key = graph, key
        self.captures += 1
        graph.replay()  # capturing ran nothing: this replay is the step
        return self._outputs[0].clone(), self._outputs[1].clone()

    def reset(self) -> None:
        """Drop the graph (its memory pool goes with it); the next call captures again."""
        self._graph = None
        self._inputs = self._outputs = None
