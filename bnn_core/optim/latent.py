"""Latent-weight baselines and their exact translation into filter (CEMA) parameters.

The baselines train real-valued latent weights ``theta`` whose sign is the binary weight (the
model is switched with ``bnn_core.layers.use_latent_weights``). Plain ``torch.optim`` Adam,
AdamW and SGD are used as they are; this module adds SGDW (decoupled weight decay, the form
that maps exactly onto CEMA), the hyperparameter mappings, and BinaryConnect's
per-layer Xavier learning-rate multiplier (``xavier_lr_multiplier``).

Where the equivalences hold: they assume the latent weight receives the gradient of the binary
weight unchanged. The latent layers use ``ste_sign``, whose gradient is ``1{|theta| <= 1}``:
once ``|theta| > 1`` the latent weight gets no gradient (only weight decay shrinks it back),
while the filter's state keeps integrating it, so the binary weights part ways from then on.
They are exact while every ``|theta|`` stays <= 1 (small learning rates, enough weight
decay). A ``latent_weight_clip`` keeps ``|theta|`` <= clip but is itself a nonlinearity on
the state that the filter does not have, so clipped latent training is not exactly a filter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._base import ParamsT, check_nonnegative

__all__ = [
    "SGDW",
    "FilterParameters",
    "SGDParameters",
    "sgd_to_filter",
    "filter_to_sgd",
    "xavier_lr_multiplier",
]


class FilterParameters(NamedTuple):
    """The two rates of a CEMA filter: ``alpha`` (inertia, scheduled) and ``gamma``."""

    alpha: float
    gamma: float


class SGDParameters(NamedTuple):
    """Latent SGDW hyperparameters: learning rate, momentum, decoupled weight decay."""

    lr: float
    momentum: float
    weight_decay: float


class SGDW(Optimizer):
    r"""SGD with momentum and decoupled weight decay (Loshchilov & Hutter).

    .. math::
        v_t = \mu v_{t-1} + g_t, \qquad
        \theta_t = (1 - \eta_t \lambda)\, \theta_{t-1} - \eta_t v_t,

    with :math:`v_0 = 0`. On latent weights this is CEMA with :math:`\gamma = 1-\mu` and
    :math:`\alpha_t = \eta_t\lambda` exactly, also for a time-varying :math:`\eta_t`.
    ``torch.optim.SGD(weight_decay=...)`` instead adds
    :math:`\lambda\theta` to the gradient (coupled L2), which maps onto CEMA only for constant
    :math:`\eta`. Both equivalences hold while the clipped straight-through estimator passes
    the gradient, i.e. while :math:`|\theta| \le 1` (see the module docstring).
    """

    def __init__(
        self, params: ParamsT, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"Invalid lr: {lr!r} (must be > 0)")
        if not 0 <= momentum < 1:
            raise ValueError(f"Invalid momentum: {momentum!r} (must be in [0, 1))")
        check_nonnegative("weight_decay", weight_decay)
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(group, param)
        return loss

    def _update(self, group: dict[str, Any], param: Tensor) -> None:
        state = self.state[param]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(param)
        buffer = state["momentum_buffer"]
        buffer.mul_(group["momentum"]).add_(param.grad)
        param.mul_(1 - group["lr"] * group["weight_decay"]).add_(buffer, alpha=-group["lr"])


def sgd_to_filter(
    lr: float, momentum: float, weight_decay: float, decoupled: bool = True
) -> FilterParameters:
    """CEMA rates that reproduce latent SGD's binary weights.

    * ``decoupled`` (SGDW): ``gamma = 1 - momentum``, ``alpha = lr * weight_decay``; exact for
      any learning-rate schedule (apply it to ``alpha``), with ``x0 = -wd (1 - mu) theta0``.
    * coupled (``torch.optim.SGD`` L2): ``alpha, gamma`` are the roots of
      ``z^2 - (1 - mu + lr wd) z + lr wd`` (``alpha`` the smaller); exact for constant ``lr``,
      with ``m0 = x0 = -wd theta0``.

    Exact while every latent weight stays in [-1, 1], where ``ste_sign`` passes its gradient
    unchanged; beyond it the latent weight gets no gradient and the twins part ways.

    Raises ``ValueError`` when no real filter exists: ``weight_decay == 0`` (the latent weight is
    then a pure integrator), complex roots (strongly under-damped momentum), or
    a rate outside (0, 1] (``lr * weight_decay`` too large: the latent weight oscillates).
    """
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"Invalid lr: {lr!r} (must be > 0)")
    if not 0 <= momentum < 1:
        raise ValueError(f"Invalid momentum: {momentum!r} (must be in [0, 1))")
    if not (math.isfinite(weight_decay) and weight_decay > 0):
        raise ValueError(
            f"Invalid weight_decay: {weight_decay!r}; with weight_decay = 0 the latent weight is "
            "a pure integrator (alpha = lr * weight_decay = 0) and no finite filter exists"
        )
    rate = lr * weight_decay
    if decoupled:
        params = FilterParameters(alpha=rate, gamma=1.0 - momentum)
    else:
        params = _coupled_roots(rate, momentum)
    for name, value in params._asdict().items():
        # Coupled L2 with lr * wd > 1 gives the pole 1 - gamma < 0 (the latent weight
        # oscillates in sign); CEMA accepts only rates in (0, 1].
        if not 0 < value <= 1:
            raise ValueError(
                f"Invalid lr * weight_decay: {name} = {value!r} is not in (0, 1] "
                f"(lr * weight_decay = {rate!r})"
            )
    return params


def _coupled_roots(rate: float, momentum: float) -> FilterParameters:
    # alpha + gamma = 1 - mu + lr wd and alpha gamma = lr wd, i.e. (1-alpha)(1-gamma) = mu.
    total = 1.0 - momentum + rate
    discriminant = total * total - 4.0 * rate
    if discriminant < 0:
        raise ValueError(
            f"Invalid momentum: {momentum!r} with lr * weight_decay = {rate!r} gives complex "
            "poles; no cascade of two real EMAs reproduces it"
        )
    gamma = (total + math.sqrt(discriminant)) / 2.0
    # The product form avoids the cancellation of (total - sqrt(discriminant)) / 2.
    return FilterParameters(alpha=rate / gamma, gamma=gamma)


def filter_to_sgd(alpha: float, gamma: float, lr: float) -> SGDParameters:
    """The SGDW hyperparameters equivalent to CEMA(alpha, gamma) at learning rate ``lr``.

    Inverse of ``sgd_to_filter(..., decoupled=True)``: momentum ``1 - gamma`` and decoupled
    weight decay ``alpha / lr`` (only the product ``lr * weight_decay`` is identifiable).
    """
    for name, value in (("alpha", alpha), ("gamma", gamma)):
        if not 0 < value <= 1:
            raise ValueError(f"Invalid {name}: {value!r} (must be in (0, 1])")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"Invalid lr: {lr!r} (must be > 0)")
    return SGDParameters(lr=lr, momentum=1.0 - gamma, weight_decay=alpha / lr)


def xavier_lr_multiplier(module: nn.Module) -> float:
    """BinaryConnect's (Courbariaux) Xavier learning-rate multiplier of one layer.

    ``2 / b`` for the layer's Glorot-uniform bound ``b = sqrt(6 / (fan_in + fan_out))``, as
    larq's ``XavierLearningRateScaling.get_lr_multiplier`` (``optimizers_v1.py``, v0.7.4):

    * conv, weight ``[n_out, n_in, kh, kw]`` (kernel area ``k = kh * kw``):
      ``1 / sqrt(1.5 / (k * (n_in + n_out)))``;
    * dense, weight ``[n_out, n_in]``: ``1 / sqrt(1.5 / (n_in + n_out))``.

    ``n_in`` is the weight's input-channel dimension (larq reads the same entries of the Keras
    kernel ``[kh, kw, n_in, n_out]``). Raises ``ValueError`` for a module without a 2-D or 4-D
    ``weight``.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() not in (2, 4):
        shape = None if not isinstance(weight, Tensor) else tuple(weight.shape)
        raise ValueError(
            f"xavier_lr_multiplier: needs a dense (2-D) or conv (4-D) weight, "
            f"got {type(module).__name__} with weight shape {shape}"
        )
    n_out, n_in = int(weight.shape[0]), int(weight.shape[1])
    kernel_area = math.prod(int(d) for d in weight.shape[2:])  # 1 for a dense layer
    return 1.0 / math.sqrt(1.5 / (kernel_area * (n_in + n_out)))
