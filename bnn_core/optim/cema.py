"""The cascaded-EMA filter optimizer of Quist, Li and van Gemert (ICLR 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import BinaryOptimizer, ParamsT, check_rate, flip_where

__all__ = ["CEMA", "CascadedEMA", "cema"]


class CEMA(BinaryOptimizer):
    r"""Cascaded exponential moving averages ("filtered gradients") for binary weights.

    Two fp32 states per binary weight, both zero at the start: the smoothed gradient
    :math:`m` (the reference code's ``momentum_buffer``) and the inertia :math:`x`
    (``inertia_buffer``, "the role of latent weights"):

    .. math::
        m_t = (1 - \gamma)\, m_{t-1} + \gamma\, g_t, \qquad
        x_t = (1 - \alpha_t)\, x_{t-1} + \alpha_t\, m_t,

    and :math:`w \leftarrow -w` wherever :math:`w x_t > 0`: :math:`w_t = -\mathrm{sign}(x_t)`
    where :math:`x_t \ne 0`, unchanged where :math:`x_t = 0`. There is no threshold.

    With :math:`\gamma = 1 - \mu` and :math:`\alpha_t = \eta_t\lambda` it gives the same binary
    weights as latent SGD with momentum :math:`\mu`, learning rate :math:`\eta_t` and decoupled
    weight decay :math:`\lambda`, for :math:`x_0 = -\lambda(1-\mu)\theta_0`, while every
    :math:`|\theta| \le 1`: beyond it the latent layers' clipped straight-through estimator
    gives the latent weight no gradient, and the two part ways.
    Start from such a state with :meth:`set_state`. From zero state, step 1 sets every weight
    with :math:`g_1 \ne 0` to :math:`-\mathrm{sign}(g_1)` (about 50 % flips).

    ``alpha`` is the one that gets scheduled (the paper's code decays it linearly to 0 per
    epoch); ``gamma`` is constant. Unlike the reference code, which overwrites the weights with
    ``sign(w)``, parameters that are not exactly +-1 are refused.

    Args:
        params: binary (+-1) parameters or param-group dicts.
        alpha: inertia rate in (0, 1] (no default in the paper's code).
        gamma: gradient-smoothing rate in (0, 1]; 1 gives a single EMA (Bop with tau = 0).
        foreach: use the multi-tensor path; ``None`` picks it on CUDA.
    """

    state_names = ("m", "x")

    def __init__(
        self, params: ParamsT, alpha: float, gamma: float, *, foreach: bool | None = None
    ) -> None:
        super().__init__(params, {"alpha": alpha, "gamma": gamma, "foreach": foreach})

    def _check_group(self, group: dict[str, Any]) -> None:
        check_rate("alpha", group["alpha"])
        check_rate("gamma", group["gamma"])

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        buffers: dict[str, list[Tensor]],
        foreach: bool,
    ) -> None:
        cema(
            params,
            grads,
            buffers["m"],
            buffers["x"],
            alpha=group["alpha"],
            gamma=group["gamma"],
            foreach=foreach,
        )


CascadedEMA = CEMA


def cema(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    inertias: list[Tensor],
    *,
    alpha: float,
    gamma: float,
    foreach: bool = False,
) -> None:
    """Functional CEMA step (all tensors updated in place)."""
    if foreach:
        torch._foreach_lerp_(momenta, grads, gamma)
        torch._foreach_lerp_(inertias, momenta, alpha)
    else:
        for m, x, g in zip(momenta, inertias, grads, strict=True):
            m.lerp_(g, gamma)
            x.lerp_(m, alpha)
    # Strict "> 0": where x == 0 there is no evidence either way, so the weight stays.
    flip_where(params, inertias, 0.0, foreach)
