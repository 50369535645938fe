"""Bop2ndOrder of Suarez-Ramirez et al. (CVPR Workshops 2021, "A Bop and Beyond")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._base import BinaryOptimizer, ParamsT, check_nonnegative, check_rate, flip_where

__all__ = ["Bop2ndOrder", "bop_2nd_order"]


class Bop2ndOrder(BinaryOptimizer):
    r"""Bop with a second-moment normalisation of the flip signal.

    Two fp32 states per binary weight, both zero at the start:

    .. math::
        m_t = m_{t-1} + \gamma (g_t - m_{t-1}), \qquad
        v_t = v_{t-1} + \sigma (g_t^2 - v_{t-1}),

    and the weight flips, :math:`w \leftarrow -w`, iff

    .. math::
        w \frac{m_t}{\sqrt{v_t} + \epsilon} > \tau
        \quad\text{(biased, the default), or}\quad
        w \frac{m_t / \gamma}{\sqrt{v_t / \sigma} + \epsilon} > \tau
        \quad\text{(``bias_correction=True``)}.

    The second form is the reference code's ``Bop2ndOrder_unbiased``. It divides by the
    *rates*, not by Adam's :math:`1 - \beta^t`, and equals the biased form with the effective
    threshold :math:`\tau\gamma/\sqrt{\sigma}`. :math:`\tau` thresholds a
    normalised signal, so it is gradient-scale invariant (unlike Bop's).

    Args:
        params: binary (+-1) parameters or param-group dicts.
        gamma: first-moment rate in (0, 1] (reference default 1e-6).
        sigma: second-moment rate in (0, 1] (reference default 1e-2).
        threshold: flip threshold >= 0 (reference default 1e-6).
        bias_correction: use the "unbiased" variant.
        eps: > 0, keeps the score finite where ``v = 0`` (reference 1e-10).
        foreach: use the multi-tensor path; ``None`` picks it on CUDA.
    """

    state_names = ("m", "v")

    def __init__(
        self,
        params: ParamsT,
        gamma: float = 1e-6,
        sigma: float = 1e-2,
        threshold: float = 1e-6,
        bias_correction: bool = False,
        eps: float = 1e-10,
        *,
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "gamma": gamma,
            "sigma": sigma,
            "threshold": threshold,
            "bias_correction": bias_correction,
            "eps": eps,
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_rate("gamma", group["gamma"])
        check_rate("sigma", group["sigma"])
        check_nonnegative("threshold", group["threshold"])
        check_nonnegative("eps", group["eps"])
        if group["eps"] == 0:
            raise ValueError("Invalid eps: 0 (must be > 0 so that m / (sqrt(v) + eps) is finite)")

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        buffers: dict[str, list[Tensor]],
        foreach: bool,
    ) -> None:
        bop_2nd_order(
            params,
            grads,
            buffers["m"],
            buffers["v"],
            gamma=group["gamma"],
            sigma=group["sigma"],
            threshold=group["threshold"],
            bias_correction=group["bias_correction"],
            eps=group["eps"],
            foreach=foreach,
        )


def bop_2nd_order(
    params: list[Tensor],
    grads: list[Tensor],
    first_moments: list[Tensor],
    second_moments: list[Tensor],
    *,
    gamma: float,
    sigma: float,
    threshold: float,
    bias_correction: bool,
    eps: float,
    foreach: bool = False,
) -> None:
    """Functional Bop2ndOrder step (all tensors updated in place)."""
    if foreach:
        scores = _scores_foreach(
            grads, first_moments, second_moments, gamma, sigma, bias_correction, eps
        )
    else:
        scores = [
            _score(g, m, v, gamma, sigma, bias_correction, eps)
            for g, m, v in zip(grads, first_moments, second_moments, strict=True)
        ]
    flip_where(params, scores, threshold, foreach)


def _score(
    g: Tensor, m: Tensor, v: Tensor, gamma: float, sigma: float, unbiased: bool, eps: float
) -> Tensor:
    m.lerp_(g, gamma)
    v.lerp_(g.square(), sigma)
    if unbiased:
        return (m / gamma) / ((v / sigma).sqrt_().add_(eps))
    return m / v.sqrt().add_(eps)


def _scores_foreach(
    grads: list[Tensor],
    ms: list[Tensor],
    vs: list[Tensor],
    gamma: float,
    sigma: float,
    unbiased: bool,
    eps: float,
) -> list[Tensor]:
    torch._foreach_lerp_(ms, grads, gamma)
    torch._foreach_lerp_(vs, torch._foreach_mul(grads, grads), sigma)
    if unbiased:
        numerators = torch._foreach_div(ms, gamma)
        denominators = torch._foreach_sqrt(torch._foreach_div(vs, sigma))
    else:
        numerators = ms
        denominators = torch._foreach_sqrt(vs)
    torch._foreach_add_(denominators, eps)
    return torch._foreach_div(numerators, denominators)
