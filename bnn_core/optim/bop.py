"""Bop, the Binary optimizer of Helwegen et al. (NeurIPS 2019, "Latent Weights Do Not Exist")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import BinaryOptimizer, ParamsT, check_nonnegative, check_rate, flip_where

__all__ = ["Bop", "bop"]


class Bop(BinaryOptimizer):
    r"""Bop: flip a binary weight when its smoothed gradient is consistent and strong.

    For every binary weight :math:`w \in \{-1, +1\}` with gradient :math:`g` it keeps one
    fp32 state :math:`m` (zero at the start) and per step does

    .. math::
        m_t = (1 - \gamma)\, m_{t-1} + \gamma\, g_t, \qquad
        w_t = \begin{cases} -w_{t-1} & \text{if } w_{t-1} m_t > \tau \\
                             w_{t-1} & \text{otherwise.} \end{cases}

    ``gamma`` is the adaptivity rate :math:`\gamma`, ``threshold`` the threshold
    :math:`\tau`. The comparison is strict, as in the paper's Algorithm 2: a tie at exactly
    :math:`\tau` does not flip. There is no bias correction, and :math:`m` is not reset after a
    flip (after a flip :math:`w m = -|m| < \tau`: hysteresis).

    With :math:`\tau = 0` Bop is latent-weight SGD with weight decay and no momentum,
    :math:`\eta\lambda = \gamma`, with :math:`m = -\lambda\theta`, as long as the latent
    weights' clipped straight-through estimator passes the gradient (:math:`|\theta| \le 1`).

    Only binary weights (exactly +-1) are accepted; batch-norm and other real parameters go to
    Adam. ``gamma`` and ``threshold`` live in the param groups so that a schedule can set them
    before every step.

    Args:
        params: binary parameters or param-group dicts.
        gamma: adaptivity rate in (0, 1] (larq >= 0.9 default 1e-4).
        threshold: flip threshold >= 0 (larq >= 0.9 default 1e-8).
        foreach: use the multi-tensor ``torch._foreach_*`` path; ``None`` picks it on CUDA.
    """

    state_names = ("m",)

    def __init__(
        self,
        params: ParamsT,
        gamma: float = 1e-4,
        threshold: float = 1e-8,
        *,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(params, {"gamma": gamma, "threshold": threshold, "foreach": foreach})

    def _check_group(self, group: dict[str, Any]) -> None:
        check_rate("gamma", group["gamma"])
        check_nonnegative("threshold", group["threshold"])

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        buffers: dict[str, list[Tensor]],
        foreach: bool,
    ) -> None:
        bop(
            params,
            grads,
            buffers["m"],
            gamma=group["gamma"],
            threshold=group["threshold"],
            foreach=foreach,
        )


def bop(
    params: list[Tensor],
    grads: list[Tensor],
    momenta: list[Tensor],
    *,
    gamma: float,
    threshold: float,
    foreach: bool = False,
) -> None:
    """Functional Bop step on lists of weights, gradients and states ``m`` (all in place)."""
    if foreach:
        # lerp_(g, gamma) is m + gamma (g - m) = (1 - gamma) m + gamma g, in one kernel.
        torch._foreach_lerp_(momenta, grads, gamma)
    else:
        for m, g in zip(momenta, grads, strict=True):
            m.lerp_(g, gamma)
    flip_where(params, momenta, threshold, foreach)
