"""Per-trial binary + real optimizers for a ``StackedNetwork``.

Every stacked parameter has dim 0 = ``N * d0``; viewed as ``[N, ...]`` (``trial_view``) its
leading dim is the trial. Hyperparameters are fp32 device tensors of shape ``[N]`` broadcast
over that dim, so one step updates all trials with their own gamma / tau / alpha / sigma /
Adam learning rate and nothing is synced with the host (flips are ``torch.where``).

The arithmetic mirrors ``bnn_core.optim`` op for op (``lerp_`` for the EMAs, strict ``>``
for the flip test, ``torch.optim.Adam``'s single-tensor formula), so with equal gradients a
stacked trial flips exactly the weights its solo optimizer flips.

State (Bop ``m``, Bop2ndOrder ``m, v``, CEMA ``m, x``, Adam moments) is fp32 whatever the
autocast dtype: with gamma ~ 1e-4, ``1 - gamma`` is 1 in bf16 (performance.md 3.3). The
gradients reaching this optimizer are fp32 tensors (autocast casts the weight inside the op,
so autograd returns an fp32 grad); with bf16 there is no loss scaling, hence no unscale step
before the threshold test.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..layers import split_parameters
from .network import StackedNetwork, trial_view

__all__ = ["StackedOptimizer", "BINARY_FAMILIES", "HYPERPARAMETER_NAMES"]

BINARY_FAMILIES = ("bop", "bop2", "filter")
# All per-trial hyperparameter tensors; the ones a family does not use stay 0.
HYPERPARAMETER_NAMES = ("gamma", "threshold", "sigma", "alpha", "real_lr")
ROW_STEP_SIZE = len(HYPERPARAMETER_NAMES)
ROW_BC2_SQRT = ROW_STEP_SIZE + 1
OPTIMIZER_ROWS = ROW_STEP_SIZE + 2
_STATE_NAMES = {"bop": ("m",), "bop2": ("m", "v"), "filter": ("m", "x")}


def _broadcast(values: Tensor, like: Tensor) -> Tensor:
    """``[N]`` -> ``[N, 1, ..., 1]`` matching ``like``'s ``[N, ...]`` view."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """One step = the binary optimizer of every trial + per-trial Adam on real parameters.

    ``family``: ``bop`` (Bop), ``bop2`` (Bop2ndOrder; ``bias_correction``, ``eps``) or
    ``filter`` (CEMA). ``bias_correction`` is every trial's default; ``set_bias_correction``
    picks the biased or "unbiased" Bop2ndOrder variant per trial. Set hyperparameters with
    ``set_hyperparameters`` before each step (``[N]`` values; the trainer evaluates each
    trial's schedules at that trial's step).
    """

    def __init__(
        self,
        network: StackedNetwork,
        family: str,
        *,
        bias_correction: bool = False,
        eps: float = 1e-10,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-7,
    ) -> None:
        if family not in BINARY_FAMILIES:
            raise ValueError(f"family: {family!r} is not stackable; one of {BINARY_FAMILIES}")
        self.family = family
        self.n_trials = network.n_trials
        self.bias_correction = bias_correction
        self.eps = eps
        self.betas = betas
        self.adam_eps = adam_eps
        binary, real = split_parameters(network)
        self.binary = binary
        self.real = real
        device = binary[0].device if binary else torch.device("cpu")
        n = self.n_trials
        # One [ROWS, N] fp32 buffer (updated with a single copy per step): the hyperparameters,
        # then Adam's per-trial bias-corrected step size lr / (1 - b1^t) and sqrt(1 - b2^t).
        self.buffer = torch.zeros(OPTIMIZER_ROWS, n, device=device)
        self.buffer[ROW_BC2_SQRT] = 1.0
        self.hyper = {name: self.buffer[i] for i, name in enumerate(HYPERPARAMETER_NAMES)}
        # Per-trial Bop2ndOrder variant, on the device and (to skip the masked path when no
        # trial uses it, without a sync) on the host.
        self.unbiased_trials = [bias_correction] * n
        self.unbiased = torch.full((n,), bias_correction, dtype=torch.bool, device=device)
        self.adam_step_size = self.buffer[ROW_STEP_SIZE]
        self.adam_bc2_sqrt = self.buffer[ROW_BC2_SQRT]
        self.state = {
            name: [torch.zeros_like(p, dtype=torch.float32) for p in binary]
            for name in _STATE_NAMES[family]
        }
        self.exp_avg = [torch.zeros_like(p, dtype=torch.float32) for p in real]
        self.exp_avg_sq = [torch.zeros_like(p, dtype=torch.float32) for p in real]
        # Flips per trial and binary layer, accumulated on the device (fp64: exact counts).
        self.flip_counts = torch.zeros(n, len(binary), dtype=torch.float64, device=device)
        self.layer_sizes = [p.numel() // n for p in binary]

    # ------------------------------------------------------------------ hyperparameters
    def set_hyperparameters(
        self,
        values: dict[str, Tensor],
        adam_step_size: Tensor | None = None,
        adam_bc2_sqrt: Tensor | None = None,
    ) -> None:
        """Copy ``[N]`` values (any float dtype, host or device) into the device tensors.

        Values are rounded to fp32 from whatever precision they come in (float64 from the
        host gives the same fp32 as a Python float passed to ``bnn_core.optim``).
        """
        for name, value in values.items():
            self.hyper[name].copy_(value, non_blocking=True)
        if adam_step_size is not None:
            self.adam_step_size.copy_(adam_step_size, non_blocking=True)
        if adam_bc2_sqrt is not None:
            self.adam_bc2_sqrt.copy_(adam_bc2_sqrt, non_blocking=True)

    def set_buffer(self, row: Tensor) -> None:
        """Copy a whole ``[OPTIMIZER_ROWS, N]`` block (rows: ``HYPERPARAMETER_NAMES``, then
        ``ROW_STEP_SIZE``, ``ROW_BC2_SQRT``) in one copy; the trainer's per-step tables."""
        self.buffer.copy_(row, non_blocking=True)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, count_mask: Tensor | None = None) -> None:
        """Update all trials. ``count_mask`` ([N], 0/1) selects the trials whose flips
        are added to ``flip_counts`` (the trainer excludes each trial's first step)."""
        self._binary_step(count_mask)
        self._adam_step()

    def _binary_step(self, count_mask: Tensor | None) -> None:
        n = self.n_trials
        counts: list[Tensor] = []
        for index, param in enumerate(self.binary):
            if param.grad is None:
                counts.append(self.flip_counts.new_zeros(n))
                continue
            w = trial_view(param, n)
            g = trial_view(param.grad, n).to(torch.float32)
            score = self._score(index, g)
            threshold = _broadcast(self.hyper["threshold"], w)
            flip = (w * score) > threshold
            w.mul_(torch.where(flip, -1.0, 1.0).to(w.dtype))
            counts.append(flip.flatten(1).sum(1, dtype=torch.float64))
        if counts:
            stacked = torch.stack(counts, dim=1)  # [N, L]
            if count_mask is not None:
                stacked = stacked * count_mask[:, None]
            self.flip_counts += stacked

    def _score(self, index: int, g: Tensor) -> Tensor:
        n = self.n_trials
        m = trial_view(self.state["m"][index], n)
        gamma = _broadcast(self.hyper["gamma"], m)
        m.lerp_(g, gamma)
        if self.family == "bop":
            return m
        if self.family == "filter":
            x = trial_view(self.state["x"][index], n)
            x.lerp_(m, _broadcast(self.hyper["alpha"], x))
            return x
        v = trial_view(self.state["v"][index], n)
        sigma = _broadcast(self.hyper["sigma"], v)
        v.lerp_(g.square(), sigma)
        if all(self.unbiased_trials):
            return (m / gamma) / ((v / sigma).sqrt_().add_(self.eps))
        if any(self.unbiased_trials):
            # Divide by 1 (exact: the biased score) where a trial uses the biased variant.
            unbiased = _broadcast(self.unbiased, m)
            m_scale = torch.where(unbiased, gamma, 1.0)
            v_scale = torch.where(unbiased, sigma, 1.0)
            return (m / m_scale) / ((v / v_scale).sqrt_().add_(self.eps))
        return m / v.sqrt().add_(self.eps)

    def _adam_step(self) -> None:
        n = self.n_trials
        beta1, beta2 = self.betas
        neg_step_size = -self.adam_step_size
        moments = zip(self.real, self.exp_avg, self.exp_avg_sq, strict=True)
        for param, exp_avg, exp_avg_sq in moments:
            if param.grad is None:
                continue
            p = trial_view(param, n)
            g = trial_view(param.grad, n).to(torch.float32)
            m = trial_view(exp_avg, n)
            v = trial_view(exp_avg_sq, n)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / _broadcast(self.adam_bc2_sqrt, v)).add_(self.adam_eps)
            p.addcdiv_(m * _broadcast(neg_step_size, m), denom)

    def zero_grad(self) -> None:
        for param in self.binary + self.real:
            param.grad = None

    # ------------------------------------------------------------------ slots
    @torch.no_grad()
    def set_bias_correction(self, index: int, bias_correction: bool) -> None:
        """Use the "unbiased" Bop2ndOrder variant for trial ``index`` (or the biased one)."""
        self.unbiased_trials[index] = bias_correction
        self.unbiased[index] = bias_correction

    def reset_trials(self, indices: Iterable[int]) -> None:
        """Zero all optimizer state of the given trials (a freed slot gets a fresh trial)."""
        n = self.n_trials
        tensors = [t for buffers in self.state.values() for t in buffers]
        tensors += self.exp_avg + self.exp_avg_sq
        for index in indices:
            for tensor in tensors:
                trial_view(tensor, n)[index].zero_()
            self.flip_counts[index].zero_()
