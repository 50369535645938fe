"""Per-step flip counting on the device (larq ``FlipRatio``, science.md 5.2).

A flip is a change of sign of a binary weight across one optimizer step; for latent-weight
layers the sign of the latent weight is compared. Counts accumulate in device tensors and are
read back once per epoch, so counting never syncs a training step with the host.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import binary_layers

__all__ = ["FlipCounter"]


class FlipCounter:
    """Counts sign flips of every binary layer of ``model``.

    Usage per step: ``snapshot()`` before ``optimizer.step()``, ``update(count)`` after it
    (``count=False`` for the global first step, whose flips are meaningless).
    """

    def __init__(self, model: nn.Module) -> None:
        layers = list(binary_layers(model))
        self.names = [name for name, _ in layers]
        self.params = [layer.weight for _, layer in layers]
        self.sizes = [p.numel() for p in self.params]
        device = self.params[0].device if self.params else torch.device("cpu")
        self.counts = torch.zeros(len(self.params), dtype=torch.int64, device=device)
        self.steps = 0
        self._before: list[Tensor] = []

    def snapshot(self) -> None:
        self._before = [p.detach() >= 0 for p in self.params]

    def update(self, count: bool = True) -> None:
        if not count or not self.params:
            self._before = []
            return
        pairs = zip(self.params, self._before, strict=True)
        flips = [(p.detach() >= 0).ne_(b).sum() for p, b in pairs]
        self.counts += torch.stack(flips)
        self.steps += 1
        self._before = []

    def collect(self) -> tuple[float, dict[str, float]]:
        """(global, per-layer) mean per-step flip ratio since the last ``collect``; resets.

        Zero when no step was counted (an epoch made only of the excluded first step).
        """
        counts = self.counts.tolist()
        steps = self.steps
        self.counts.zero_()
        self.steps = 0
        if steps == 0 or not self.params:
            return 0.0, dict.fromkeys(self.names, 0.0)
        per_layer = {
            name: c / (n * steps)
            for name, c, n in zip(self.names, counts, self.sizes, strict=True)
        }
        return sum(counts) / (sum(self.sizes) * steps), per_layer
