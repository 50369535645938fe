"""Per-step flip counting on the device (larq ``FlipRatio``).

A flip is a change of sign of a binary weight across one optimizer step; for latent-weight
layers the sign of the latent weight is compared (``w >= 0`` is +1, as in ``binarize.sign``).
Counts accumulate in device tensors and are read back once per epoch, so counting never syncs
a training step with the host.

For +-1 weights the count uses a handful of fused ``torch._foreach`` kernels for all layers:
``d = sign(w_before) * sign(w_after) - 1`` is 0 (kept) or -2 (flipped), so the per-layer L1
norm of ``d`` is twice the number of flips.

The Bop paper's per-step flip statistic of the last binary layer, its eq. 7,
``pi_t = ln(r_t + e^-9)`` with ``r_t`` that layer's flip ratio at step ``t`` (-9 when nothing
flips), is accumulated the same way: its epoch mean and its value at the epoch's last step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .layers import binary_layers

__all__ = ["FlipCounter", "EpochFlips", "PI_FLOOR"]

PI_FLOOR = math.exp(-9.0)  # pi_t = ln(r_t + e^-9): -9 when the last layer does not flip


class EpochFlips(NamedTuple):
    """One epoch's flip statistics (``pi_mean``/``pi_last`` None when no step was counted)."""

    ratio: float
    per_layer: dict[str, float]
    pi_mean: float | None
    pi_last: float | None


class FlipCounter:
    """Counts sign flips of every binary layer of ``model``.

    Usage per step: ``snapshot()`` before ``optimizer.step()``, ``update(count)`` after it
    (``count=False`` for the global first step, whose flips are meaningless).
    """

    def __init__(self, model: nn.Module) -> None:
        layers = list(binary_layers(model))
        self.layers = [layer for _, layer in layers]
        self.names = [name for name, _ in layers]
        self.params = [layer.weight for layer in self.layers]
        self.sizes = [p.numel() for p in self.params]
        device = self.params[0].device if self.params else torch.device("cpu")
        self.counts = torch.zeros(len(self.params), dtype=torch.float64, device=device)
        self.pi_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.pi_last = torch.zeros((), dtype=torch.float64, device=device)
        self.steps = 0
        self._before: list[Tensor] = []
        self._pm_one = False

    def _detached(self) -> list[Tensor]:
        return [p.detach() for p in self.params]

    def snapshot(self) -> None:
        if not self.params:
            return
        # +-1 weights (never 0): the fused sign path; latent weights: the strict w >= 0 test
        self._pm_one = not any(layer.latent for layer in self.layers)
        if self._pm_one:
            self._before = torch._foreach_sign(self._detached())
        else:
            self._before = [p >= 0 for p in self._detached()]

    def update(self, count: bool = True) -> None:
        if not count or not self.params:
            self._before = []
            return
        if self._pm_one:
            change = torch._foreach_sign(self._detached())
            torch._foreach_mul_(change, self._before)
            torch._foreach_sub_(change, 1.0)
            twice = torch.stack(torch._foreach_norm(change, 1))
            step_counts = twice.to(torch.float64) / 2
        else:
            pairs = zip(self.params, self._before, strict=True)
            step_counts = torch.stack([(p.detach() >= 0).ne_(b).sum() for p, b in pairs])
            step_counts = step_counts.to(torch.float64)
        self.counts += step_counts
        pi = torch.log(step_counts[-1] / self.sizes[-1] + PI_FLOOR)
        self.pi_sum += pi
        self.pi_last.copy_(pi)
        self.steps += 1
        self._before = []

    def collect(self) -> tuple[float, dict[str, float]]:
        """(global, per-layer) mean per-step flip ratio since the last collect; resets."""
        epoch = self.collect_epoch()
        return epoch.ratio, epoch.per_layer

    def collect_epoch(self) -> EpochFlips:
        """Everything counted since the last collect (one host read); resets.

        Ratios are zero, and pi None, when no step was counted (an epoch made only of the
        excluded first step).
        """
        counts = [round(c) for c in self.counts.tolist()]
        pi_sum, pi_last = float(self.pi_sum), float(self.pi_last)
        steps = self.steps
        self.counts.zero_()
        self.pi_sum.zero_()
        self.steps = 0
        if steps == 0 or not self.params:
            return EpochFlips(0.0, dict.fromkeys(self.names, 0.0), None, None)
        per_layer = {
            name: c / (n * steps)
            for name, c, n in zip(self.names, counts, self.sizes, strict=True)
        }
        ratio = sum(counts) / (sum(self.sizes) * steps)
        return EpochFlips(ratio, per_layer, pi_sum / steps, pi_last)
