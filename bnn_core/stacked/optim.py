"""Per-trial binary + real optimizers for a ``StackedNetwork``.

Every stacked parameter has dim 0 = ``N * d0``; viewed as ``[N, ...]`` (``trial_view``) its
leading dim is the trial. Hyperparameters are fp32 device tensors of shape ``[N]`` broadcast
over that dim, so one step updates all trials with their own gamma / tau / alpha / sigma /
learning rates and nothing is synced with the host (flips are ``torch.where``).

The arithmetic mirrors ``bnn_core.optim`` op for op (``lerp_`` for the EMAs, strict ``>``
for the flip test, ``torch.optim.Adam``'s single-tensor formula), so with equal gradients a
stacked trial flips exactly the weights its solo optimizer flips.

Latent-weight families (``LATENT_FAMILIES``: ``latent-adam``, ``latent-sgd``) mirror what
``bnn_core.optim.build_optimizer`` builds for them: ``torch.optim.Adam`` / ``AdamW``
(betas 0.9/0.999, eps 1e-8), ``torch.optim.SGD`` with momentum and coupled (L2) weight decay,
or ``bnn_core.optim.SGDW`` (decoupled), then ``BinaryOptimizerPair``'s clamp to
``[-latent_weight_clip, latent_weight_clip]``. Per trial: the (scheduled) lr, weight decay,
momentum, clip, and also ``decoupled_weight_decay`` and ``latent_lr_scaling`` (a coupled
trial has a decoupled decay factor of 1, a decoupled one a coupled weight decay of 0, a trial
without Xavier scaling multipliers of 1: exact no-ops). The per-layer Xavier multiplier is
folded into per-layer, per-trial step rows on the host, in float64 as the solo param groups
compute ``lr * lr_multiplier``. A flip is a change of ``w >= 0`` across the step (clip
included), as ``bnn_core.metrics.FlipCounter`` counts it for latent layers.

Where solo computes ``a + alpha * b`` with a Python scalar (``add(b, alpha=...)``), the
stacked step uses ``addcmul(a, b, alpha_tensor)``: bit-identical on the CPU the tests ran on;
a kernel that fuses one into an FMA and not the other differs in the last bit only.

State (Bop ``m``, Bop2ndOrder ``m, v``, CEMA ``m, x``, Adam moments, SGD momentum buffers)
is fp32 whatever the autocast dtype: with gamma ~ 1e-4, ``1 - gamma`` is 1 in bf16. The
gradients reaching this optimizer are fp32 tensors (autocast casts the weight inside the op,
so autograd returns an fp32 grad); with bf16 there is no loss scaling, hence no unscale step
before the threshold test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from ..config import OptimizerConfig
from ..layers import binary_layers, split_parameters
from ..optim.latent import xavier_lr_multiplier
from .network import StackedNetwork, trial_view

__all__ = [
    "StackedOptimizer",
    "BINARY_FAMILIES",
    "LATENT_FAMILIES",
    "STACKABLE_FAMILIES",
    "HYPERPARAMETER_NAMES",
    "LATENT_HYPERPARAMETER_NAMES",
]

# Flip optimizers: the weights are +-1 and a step flips some of them.
BINARY_FAMILIES = ("bop", "bop2", "filter")
# Latent-weight baselines: real-valued latent weights, ste_sign in the forward pass.
LATENT_FAMILIES = ("latent-adam", "latent-sgd")
# Every family a StackedOptimizer (and so a StackedTrainer) can train.
STACKABLE_FAMILIES = BINARY_FAMILIES + LATENT_FAMILIES
# All per-trial hyperparameter tensors of the flip families; the ones a family does not use
# stay 0.
HYPERPARAMETER_NAMES = ("gamma", "threshold", "sigma", "alpha", "real_lr")
# Buffer rows (``StackedOptimizer.row_names``) of the flip families: these, then the real
# Adam's per-trial bias-corrected step size lr / (1 - b1^t) and sqrt(1 - b2^t).
# The latent families' per-trial constants: coupled (L2) weight decay (0 for a decoupled
# trial), SGD momentum, clip (+inf = none). Then per binary layer ``step.<i>`` (Adam:
# lr_i / (1 - b1^t); SGD: lr_i, where lr_i = lr * the layer's multiplier) and ``decay.<i>``
# (1 - lr_i * weight_decay for a decoupled trial, else 1), then the real Adam's two rows.
LATENT_HYPERPARAMETER_NAMES = ("weight_decay", "momentum", "clip")
# The optional ops of a latent step (skipped when no trial of the stack needs them).
_LATENT_OPS = ("coupled", "decoupled", "momentum", "clip")
_STATE_NAMES = {
    "bop": ("m",),
    "bop2": ("m", "v"),
    "filter": ("m", "x"),
    "latent-adam": ("exp_avg", "exp_avg_sq"),
    "latent-sgd": ("momentum_buffer",),
}


def _broadcast(values: Tensor, like: Tensor) -> Tensor:
    """``[N]`` -> ``[N, 1, ..., 1]`` matching ``like``'s ``[N, ...]`` view."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _bias_corrections(betas: tuple[float, float], steps: np.ndarray) -> tuple[list, list]:
    """``1 - b1^t`` and ``sqrt(1 - b2^t)`` at Adam step ``t = step + 1``, computed with
    Python floats exactly as ``torch.optim.Adam`` does (``1 - beta ** float(t)``, ``** 0.5``)."""
    beta1, beta2 = betas
    t = [float(s) + 1.0 for s in steps]
    return [1 - beta1**x for x in t], [(1 - beta2**x) ** 0.5 for x in t]


class StackedOptimizer:
    """One step = the binary optimizer of every trial + per-trial Adam on real parameters.

    ``family``: ``bop`` (Bop), ``bop2`` (Bop2ndOrder; ``bias_correction``, ``eps``),
    ``filter`` (CEMA), ``latent-adam`` (Adam/AdamW on latent weights, ``latent_eps``) or
    ``latent-sgd`` (SGD/SGDW). ``bias_correction`` is every trial's default;
    ``set_bias_correction`` picks the biased or "unbiased" Bop2ndOrder variant per trial.
    Hyperparameters live in one ``[n_rows, N]`` buffer whose rows are ``row_names``; the
    trainer fills it per step with ``set_buffer`` from ``trial_rows`` (each trial's schedules
    evaluated at that trial's step); ``set_hyperparameters`` sets rows by name.
    ``configure_trial`` tells the optimizer which ops a trial needs (ops no trial needs are
    skipped; until then every op runs, with neutral values where a trial has none).
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
        latent_eps: float = 1e-8,
    ) -> None:
        if family not in STACKABLE_FAMILIES:
            raise ValueError(f"family: {family!r} is not stackable; one of {STACKABLE_FAMILIES}")
        self.family = family
        self.latent = family in LATENT_FAMILIES
        self.n_trials = network.n_trials
        self.bias_correction = bias_correction
        self.eps = eps
        self.betas = betas
        self.adam_eps = adam_eps
        self.latent_eps = latent_eps
        binary, real = split_parameters(network)
        self.binary = binary
        self.real = real
        device = binary[0].device if binary else torch.device("cpu")
        n = self.n_trials
        # The per-layer Xavier multipliers (BinaryConnect), from the single-model layers.
        template = getattr(network, "template", None)
        self.xavier = (
            [xavier_lr_multiplier(layer) for _, layer in binary_layers(template)]
            if self.latent and template is not None
            else []
        )
        self.row_names = self._row_names(len(binary))
        self.row_index = {name: i for i, name in enumerate(self.row_names)}
        self.n_rows = len(self.row_names)
        # One [ROWS, N] fp32 buffer (updated with a single copy per step).
        self.buffer = torch.from_numpy(np.repeat(self.idle_row()[:, None], n, axis=1)).to(
            device=device, dtype=torch.float32
        )
        names = LATENT_HYPERPARAMETER_NAMES if self.latent else HYPERPARAMETER_NAMES
        self.hyper = {name: self.buffer[self.row_index[name]] for name in names}
        # Latent families: [L, N] views of the per-layer step and decay rows.
        self.layer_steps = self._layer_rows("step")
        self.layer_decays = self._layer_rows("decay")
        # Per-trial Bop2ndOrder variant, on the device and (to skip the masked path when no
        # trial uses it, without a sync) on the host.
        self.unbiased_trials = [bias_correction] * n
        self.unbiased = torch.full((n,), bias_correction, dtype=torch.bool, device=device)
        # Host flags of the latent ops each trial needs (coupled weight decay, decoupled
        # decay, momentum, clip); every op runs until configure_trial says otherwise.
        self.latent_ops = [dict.fromkeys(_LATENT_OPS, True) for _ in range(n)]
        self.adam_step_size = self.buffer[self.row_index["real_step_size"]]
        self.adam_bc2_sqrt = self.buffer[self.row_index["bc2_sqrt"]]
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
    def _row_names(self, n_layers: int) -> list[str]:
        if not self.latent:
            return [*HYPERPARAMETER_NAMES, "real_step_size", "bc2_sqrt"]
        steps = [f"step.{i}" for i in range(n_layers)]
        decays = [f"decay.{i}" for i in range(n_layers)]
        return [*LATENT_HYPERPARAMETER_NAMES, *steps, *decays, "real_step_size", "bc2_sqrt"]

    def _layer_rows(self, prefix: str) -> Tensor:
        first = self.row_index.get(f"{prefix}.0")
        if first is None:  # a flip family, or no binary layer
            return self.buffer[:0]
        return self.buffer[first : first + len(self.binary)]

    def idle_row(self) -> np.ndarray:
        """``[n_rows]`` float64 values under which a step changes nothing it need not (an
        empty slot): zero rates, ``sqrt(bc2) = 1``, decay factors 1, no clip."""
        row = np.zeros(len(self.row_names))
        for name, i in self.row_index.items():
            if name == "bc2_sqrt" or name.startswith("decay."):
                row[i] = 1.0
            elif name == "clip":
                row[i] = math.inf
        return row

    def trial_rows(
        self, config: OptimizerConfig, values: Mapping[str, np.ndarray], steps: np.ndarray
    ) -> np.ndarray:
        """``[len(steps), n_rows]`` float64 rows of one trial at its global ``steps``.

        ``values`` maps each scheduled hyperparameter (``ScheduledHyperparameter.name`` of
        ``build_optimizer``: gamma, ..., lr, real_lr) to its values at ``steps``. Everything
        derived (Adam step sizes, decay factors, Xavier-scaled rates) is computed in float64
        the way the solo optimizers compute it from Python floats; the buffer rounds to fp32.
        """
        rows = np.tile(self.idle_row(), (len(steps), 1))
        bc1, bc2_sqrt = _bias_corrections(self.betas, steps)
        bc1_array = np.array(bc1)
        if self.latent:
            self._latent_rows(rows, config, values["lr"], bc1_array)
        else:
            for name in HYPERPARAMETER_NAMES:
                if name in values:
                    rows[:, self.row_index[name]] = values[name]
        real_lr = values.get("real_lr", np.zeros(len(steps)))
        rows[:, self.row_index["real_step_size"]] = real_lr / bc1_array
        rows[:, self.row_index["bc2_sqrt"]] = bc2_sqrt
        return rows

    def _latent_rows(
        self, rows: np.ndarray, config: OptimizerConfig, lr: np.ndarray, bc1: np.ndarray
    ) -> None:
        index = self.row_index
        wd = float(config.weight_decay)
        decoupled = bool(config.decoupled_weight_decay)
        rows[:, index["weight_decay"]] = 0.0 if decoupled else wd
        rows[:, index["momentum"]] = config.momentum if self.family == "latent-sgd" else 0.0
        clip = config.latent_weight_clip
        rows[:, index["clip"]] = math.inf if clip is None else float(clip)
        xavier = config.latent_lr_scaling == "xavier"
        for layer in range(len(self.binary)):
            # BinaryOptimizerPair: group lr = value * group.get("lr_multiplier", 1.0).
            lr_layer = lr * (self.xavier[layer] if xavier else 1.0)
            step = lr_layer / bc1 if self.family == "latent-adam" else lr_layer
            rows[:, index[f"step.{layer}"]] = step
            if decoupled:
                # AdamW: param.mul_(1 - lr * weight_decay); SGDW likewise.
                rows[:, index[f"decay.{layer}"]] = 1 - lr_layer * wd

    def set_hyperparameters(
        self,
        values: dict[str, Tensor],
        adam_step_size: Tensor | None = None,
        adam_bc2_sqrt: Tensor | None = None,
    ) -> None:
        """Copy ``[N]`` values (any float dtype, host or device) into the device tensors;
        ``values`` keys are any of ``row_names``.

        Values are rounded to fp32 from whatever precision they come in (float64 from the
        host gives the same fp32 as a Python float passed to ``bnn_core.optim``).
        """
        for name, value in values.items():
            self.buffer[self.row_index[name]].copy_(value, non_blocking=True)
        if adam_step_size is not None:
            self.adam_step_size.copy_(adam_step_size, non_blocking=True)
        if adam_bc2_sqrt is not None:
            self.adam_bc2_sqrt.copy_(adam_bc2_sqrt, non_blocking=True)

    def set_buffer(self, row: Tensor) -> None:
        """Copy a whole ``[n_rows, N]`` block (rows: ``row_names``) in one copy; the
        trainer's per-step tables."""
        self.buffer.copy_(row, non_blocking=True)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, count_mask: Tensor | None = None) -> None:
        """Update all trials. ``count_mask`` ([N], 0/1) selects the trials whose flips
        are added to ``flip_counts`` (the trainer excludes each trial's first step)."""
        update = self._latent_update() if self.latent else self._flip_update
        self._each_binary_layer(update, count_mask)
        self._adam_step()

    def _each_binary_layer(
        self, update: Callable[[int, Tensor, Tensor], Tensor], count_mask: Tensor | None
    ) -> None:
        """``update(index, w, g)`` on every binary layer's ``[N, ...]`` views of its weight and
        fp32 gradient; the ``[N]`` flips it returns are added to ``flip_counts``."""
        n = self.n_trials
        counts: list[Tensor] = []
        for index, param in enumerate(self.binary):
            if param.grad is None:
                counts.append(self.flip_counts.new_zeros(n))
                continue
            w = trial_view(param, n)
            g = trial_view(param.grad, n).to(torch.float32)
            counts.append(update(index, w, g))
        if counts:
            stacked = torch.stack(counts, dim=1)  # [N, L]
            if count_mask is not None:
                stacked = stacked * count_mask[:, None]
            self.flip_counts += stacked

    def _flip_update(self, index: int, w: Tensor, g: Tensor) -> Tensor:
        """Bop / Bop2ndOrder / CEMA: flip where ``w * score > threshold``."""
        score = self._score(index, g)
        threshold = _broadcast(self.hyper["threshold"], w)
        flip = (w * score) > threshold
        w.mul_(torch.where(flip, -1.0, 1.0).to(w.dtype))
        return flip.flatten(1).sum(1, dtype=torch.float64)

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

    def _uses(self, op: str) -> bool:
        return any(ops[op] for ops in self.latent_ops)

    def _latent_update(self) -> Callable[[int, Tensor, Tensor], Tensor]:
        """Adam/AdamW or SGD/SGDW on every trial's latent weights, then the clip; a flip is a
        change of ``w >= 0``. The ops no trial of the stack uses are left out."""
        neg_steps = -self.layer_steps  # [L, N]
        coupled, decoupled = self._uses("coupled"), self._uses("decoupled")
        clip = self._uses("clip")
        clip_max = self.hyper["clip"]
        clip_min = -clip_max

        def update(index: int, w: Tensor, g: Tensor) -> Tensor:
            before = w >= 0
            if coupled:  # torch.optim.Adam / SGD: grad = grad.add(param, alpha=weight_decay)
                g = torch.addcmul(g, w, _broadcast(self.hyper["weight_decay"], w))
            if decoupled and self.family == "latent-adam":  # AdamW: param.mul_(1 - lr * wd)
                w.mul_(_broadcast(self.layer_decays[index], w))
            neg_step = _broadcast(neg_steps[index], w)
            if self.family == "latent-adam":
                self._latent_adam(index, w, g, neg_step)
            else:
                self._latent_sgd(index, w, g, neg_step, decoupled)
            if clip:  # BinaryOptimizerPair: param.clamp_(-clip, clip) after the binary step
                w.clamp_(min=_broadcast(clip_min, w), max=_broadcast(clip_max, w))
            return (w >= 0).ne_(before).flatten(1).sum(1, dtype=torch.float64)

        return update

    def _latent_adam(self, index: int, w: Tensor, g: Tensor, neg_step: Tensor) -> None:
        n = self.n_trials
        beta1, beta2 = self.betas
        m = trial_view(self.state["exp_avg"][index], n)
        v = trial_view(self.state["exp_avg_sq"][index], n)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / _broadcast(self.adam_bc2_sqrt, v)).add_(self.latent_eps)
        w.addcdiv_(m * neg_step, denom)

    def _latent_sgd(
        self, index: int, w: Tensor, g: Tensor, neg_step: Tensor, decoupled: bool
    ) -> None:
        # torch.optim.SGD (dampening 0, no nesterov): buf = grad on the first step, then
        # buf.mul_(momentum).add_(grad); both are buf.mul_(momentum).add_(grad) from a zero
        # buffer. SGDW: buf.mul_(momentum).add_(grad); param.mul_(1 - lr * wd).
        update = g
        if self._uses("momentum"):
            buf = trial_view(self.state["momentum_buffer"][index], self.n_trials)
            buf.mul_(_broadcast(self.hyper["momentum"], buf)).add_(g)
            update = buf
        if decoupled:
            w.mul_(_broadcast(self.layer_decays[index], w))
        w.addcmul_(update, neg_step)  # param.add_(update, alpha=-lr)

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

    def configure_trial(self, index: int, config: OptimizerConfig) -> None:
        """Trial ``index`` now runs ``config``: its Bop2ndOrder variant, and which latent ops
        it needs (an op no trial needs is skipped; a trial that does not need one gets its
        neutral value from ``trial_rows``, so running it anyway changes nothing)."""
        self.set_bias_correction(index, config.bias_correction)
        wd = config.weight_decay != 0
        self.latent_ops[index] = {
            "coupled": wd and not config.decoupled_weight_decay,
            "decoupled": wd and config.decoupled_weight_decay,
            "momentum": self.family == "latent-sgd" and config.momentum != 0,
            "clip": config.latent_weight_clip is not None,
        }

    def reset_trials(self, indices: Iterable[int]) -> None:
        """Zero all optimizer state of the given trials (a freed slot gets a fresh trial)."""
        n = self.n_trials
        tensors = [t for buffers in self.state.values() for t in buffers]
        tensors += self.exp_avg + self.exp_avg_sq
        for index in indices:
            for tensor in tensors:
                trial_view(tensor, n)[index].zero_()
            self.flip_counts[index].zero_()
