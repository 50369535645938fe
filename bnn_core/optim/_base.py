"""Shared machinery of the flip-based binary optimizers (Bop, Bop2ndOrder, CEMA).

Every one of them keeps fp32 state per binary weight, computes a per-weight *score* from
that state, and flips ``w <- -w`` where ``w * score > threshold``. The flip is written as a
multiplication by ``where(flip, -1, 1)``: no boolean-mask indexing and no ``.item()``, so a
step never syncs with the host and can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["BinaryOptimizer", "flip_where", "check_rate", "check_nonnegative"]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


def check_rate(name: str, value: float) -> None:
    """An EMA rate must lie in (0, 1]: 0 freezes the filter, > 1 makes it diverge."""
    if not (isinstance(value, int | float) and 0.0 < value <= 1.0):
        raise ValueError(f"Invalid {name}: {value!r} (must be in (0, 1])")


def check_nonnegative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0.0):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number >= 0)")


def state_dtype(param: Tensor) -> torch.dtype:
    """At least fp32: with gamma ~ 1e-4, (1 - gamma) rounds to 1 in bf16/fp16, so
    the state never decays. fp64 parameters keep fp64 state (exact reference tests)."""
    return torch.promote_types(param.dtype, torch.float32)


def flip_where(
    params: list[Tensor], scores: list[Tensor], threshold: float, foreach: bool
) -> None:
    """``w <- -w`` wherever ``w * score > threshold`` (strict, as in Bop's Algorithm 2)."""
    if foreach:
        _flip_where_foreach(params, scores, threshold)
        return
    for param, score in zip(params, scores, strict=True):
        param.mul_(torch.where(param * score > threshold, -1.0, 1.0))


def _flip_where_foreach(params: list[Tensor], scores: list[Tensor], threshold: float) -> None:
    # There is no _foreach_gt: sign(w*s - tau) is +1 exactly where w*s > tau (IEEE subtraction
    # of distinct floats is never 0), so clamp_min(0) gives the flip indicator f in {0, 1} and
    # 1 - 2f the multiplier. Unlike the loop, a NaN score propagates into the weight.
    factors = torch._foreach_mul(params, scores)
    torch._foreach_sub_(factors, threshold)
    torch._foreach_sign_(factors)
    torch._foreach_clamp_min_(factors, 0.0)
    torch._foreach_mul_(factors, -2.0)
    torch._foreach_add_(factors, 1.0)
    torch._foreach_mul_(params, factors)


class BinaryOptimizer(Optimizer):
    """Base of the flip optimizers: validation, lazy zero state, closure handling.

    Subclasses set ``state_names`` (the per-weight buffers) and implement
    ``_check_group`` (hyperparameter validation, ``ValueError`` naming the argument) and
    ``_update`` (one step over the lists of one param group).
    """

    state_names: tuple[str, ...] = ()

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        # Validate before torch does anything, so a bad argument is reported as such even
        # when the parameter list is also bad.
        self._check_group(defaults)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        offset = sum(len(g["params"]) for g in self.param_groups[:-1])
        for index, param in enumerate(group["params"], start=offset):
            self._check_binary(index, param)

    def _check_binary(self, index: int, param: Tensor) -> None:
        # A flip optimizer on real values would silently compute nonsense: refuse them.
        with torch.no_grad():
            is_binary = bool(((param == 1) | (param == -1)).all())
        if not is_binary:
            raise ValueError(
                f"params[{index}]: {type(self).__name__} needs binary parameters holding exactly "
                "+-1 (the weight of a BinaryLayer); real-valued parameters go to Adam"
            )

    def _check_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        buffers: dict[str, list[Tensor]],
        foreach: bool,
    ) -> None:
        raise NotImplementedError

    def set_state(self, param: Tensor, **buffers: Tensor) -> None:
        """Set initial state of ``param`` (e.g. CEMA's inertia ``x`` from latent weights).

        Missing buffers are zero. Used to start from the state that corresponds to a given
        latent-weight initialisation.
        """
        if not any(param is p for group in self.param_groups for p in group["params"]):
            raise ValueError("param: not a parameter of this optimizer")
        unknown = set(buffers) - set(self.state_names)
        if unknown:
            raise ValueError(f"buffers: unknown {sorted(unknown)}; known {self.state_names}")
        state = self._state_of(param)
        for name, value in buffers.items():
            if value.shape != param.shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} != {tuple(param.shape)}")
            state[name].copy_(value)

    def _state_of(self, param: Tensor) -> dict[str, Tensor]:
        state = self.state[param]
        if not state:
            dtype = state_dtype(param)
            for name in self.state_names:
                state[name] = torch.zeros_like(
                    param, dtype=dtype, memory_format=torch.preserve_format
                )
        return state

    def _init_group(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], dict[str, list[Tensor]]]:
        params: list[Tensor] = []
        grads: list[Tensor] = []
        buffers: dict[str, list[Tensor]] = {name: [] for name in self.state_names}
        for param in group["params"]:
            if param.grad is None:
                continue
            if param.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self._state_of(param)
            params.append(param)
            # Gradients of low-precision weights are promoted so the EMAs run in fp32.
            grads.append(param.grad.to(state[self.state_names[0]].dtype))
            for name in self.state_names:
                buffers[name].append(state[name])
        return params, grads, buffers

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = self._init_group(group)
            if params:
                self._update(group, params, grads, buffers, self._use_foreach(group, params))
        return loss

    @staticmethod
    def _use_foreach(group: dict[str, Any], params: list[Tensor]) -> bool:
        # As in torch.optim: the multi-tensor path by default on CUDA, the loop on CPU.
        if group["foreach"] is None:
            return all(p.is_cuda for p in params)
        return bool(group["foreach"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts floating state to the parameter dtype; keep it at least fp32 instead.
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, param in zip(saved_ids, params, strict=True):
            for name, value in state_dict["state"].get(saved_id, {}).items():
                self.state[param][name] = value.to(param.device, state_dtype(param), copy=True)
