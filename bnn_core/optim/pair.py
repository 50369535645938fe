"""One binary optimizer plus Adam for the real parameters, stepped together with schedules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from ..config import OptimizerConfig, Schedule
from ..layers import binary_layers, split_parameters, use_latent_weights
from ..schedules import schedule_value
from .bop import Bop
from .bop2 import Bop2ndOrder
from .cema import CEMA
from .latent import SGDW, xavier_lr_multiplier

__all__ = [
    "BinaryOptimizerPair",
    "ScheduledHyperparameter",
    "build_optimizer",
    "REAL_ADAM_EPS",
    "MULTIPLIER_SUFFIX",
]

# Keras' Adam epsilon: the Bop paper trains real parameters with Keras defaults.
REAL_ADAM_EPS = 1e-7
# A param group holding ``key + MULTIPLIER_SUFFIX`` (e.g. "lr_multiplier") gets the scheduled
# value of ``key`` times that multiplier (per-layer Xavier learning-rate scaling).
MULTIPLIER_SUFFIX = "_multiplier"


@dataclass(frozen=True)
class ScheduledHyperparameter:
    """``name`` (reported key) is written into param-group key ``key`` of optimizer ``target``
    ('binary' or 'real') before every step, following ``schedule`` from ``base``. A param
    group with a ``key + MULTIPLIER_SUFFIX`` entry (``lr_multiplier``) gets the scheduled value
    times that multiplier; the reported value stays the unscaled one."""

    name: str
    target: str
    key: str
    base: float
    schedule: Schedule = Schedule()


class BinaryOptimizerPair:
    """The binary optimizer and the real-parameter Adam, stepped in the same ``step()``.

    ``step()`` writes every scheduled hyperparameter for the current global step into the
    param groups (Keras semantics: the first update uses step 0; a group's
    ``<key>_multiplier``, if any, scales the value written), steps the binary optimizer,
    then the real one, and increments ``global_step``. Either optimizer is ``None`` when the
    model has no parameters of that kind. With ``weight_clip`` set (latent families only), every
    binary (latent) weight is clamped in place to [-weight_clip, weight_clip] right after the
    binary step: larq's ``weight_clip`` constraint of BinaryNet, applied after each update.
    """

    def __init__(
        self,
        binary: Optimizer | None,
        real: Optimizer | None,
        scheduled: list[ScheduledHyperparameter],
        steps_per_epoch: int,
        total_steps: int,
        weight_clip: float | None = None,
    ) -> None:
        self.binary = binary
        self.real = real
        self.scheduled = scheduled
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.weight_clip = weight_clip
        self.global_step = 0

    @property
    def binary_parameters(self) -> list[torch.Tensor]:
        if self.binary is None:
            return []
        return [p for group in self.binary.param_groups for p in group["params"]]

    def _value(self, item: ScheduledHyperparameter, step: int) -> float:
        return schedule_value(
            item.base, item.schedule, step, self.steps_per_epoch, self.total_steps
        )

    def step(self) -> None:
        """Apply the schedules at ``global_step``, step binary then real, advance the step."""
        for item in self.scheduled:
            optimizer = getattr(self, item.target)
            if optimizer is not None:
                value = self._value(item, self.global_step)
                multiplier_key = item.key + MULTIPLIER_SUFFIX
                for group in optimizer.param_groups:
                    group[item.key] = value * group.get(multiplier_key, 1.0)
        if self.binary is not None:
            self.binary.step()
            self._clip_binary()
        if self.real is not None:
            self.real.step()
        self.global_step += 1

    def _clip_binary(self) -> None:
        if self.weight_clip is None:
            return
        with torch.no_grad():
            for param in self.binary_parameters:
                param.clamp_(-self.weight_clip, self.weight_clip)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in (self.binary, self.real):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=set_to_none)

    def hyperparameters(self) -> dict[str, float]:
        """The values in force: those used by the last step (the initial ones before any)."""
        step = max(self.global_step - 1, 0)
        return {item.name: self._value(item, step) for item in self.scheduled}

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "binary": None if self.binary is None else self.binary.state_dict(),
            "real": None if self.real is None else self.real.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Restoring the filter state matters: from zero state the next step flips ~50 % of
        # the weights.
        self.global_step = int(state_dict["global_step"])
        for name in ("binary", "real"):
            optimizer = getattr(self, name)
            if (optimizer is None) != (state_dict[name] is None):
                raise ValueError(f"state_dict.{name}: does not match this optimizer pair")
            if optimizer is not None:
                optimizer.load_state_dict(state_dict[name])


# The binary parameters: a flat list, or param groups (per-layer Xavier lr scaling).
BinaryParams = list[nn.Parameter] | list[dict[str, Any]]
BinaryBuilder = Callable[[BinaryParams, OptimizerConfig], Optimizer]


def _build_bop(params: BinaryParams, config: OptimizerConfig) -> Optimizer:
    return Bop(params, gamma=config.gamma, threshold=config.threshold)


def _build_bop2(params: BinaryParams, config: OptimizerConfig) -> Optimizer:
    return Bop2ndOrder(
        params,
        gamma=config.gamma,
        sigma=config.sigma,
        threshold=config.threshold,
        bias_correction=config.bias_correction,
    )


def _build_filter(params: BinaryParams, config: OptimizerConfig) -> Optimizer:
    return CEMA(params, alpha=config.alpha, gamma=config.gamma)


def _build_latent_adam(params: BinaryParams, config: OptimizerConfig) -> Optimizer:
    adam = torch.optim.AdamW if config.decoupled_weight_decay else torch.optim.Adam
    return adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _build_latent_sgd(params: BinaryParams, config: OptimizerConfig) -> Optimizer:
    if config.decoupled_weight_decay:
        return SGDW(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


_BUILDERS: dict[str, BinaryBuilder] = {
    "bop": _build_bop,
    "bop2": _build_bop2,
    "filter": _build_filter,
    "latent-adam": _build_latent_adam,
    "latent-sgd": _build_latent_sgd,
}


def _binary_schedules(config: OptimizerConfig) -> list[ScheduledHyperparameter]:
    """Which schedule drives which hyperparameter, per family."""
    binary = "binary"
    if config.name == "bop":
        return [
            ScheduledHyperparameter("gamma", binary, "gamma", config.gamma, config.gamma_schedule),
            ScheduledHyperparameter(
                "threshold", binary, "threshold", config.threshold, config.threshold_schedule
            ),
        ]
    if config.name == "bop2":
        return [
            ScheduledHyperparameter("gamma", binary, "gamma", config.gamma, config.gamma_schedule),
            ScheduledHyperparameter("sigma", binary, "sigma", config.sigma, config.sigma_schedule),
            ScheduledHyperparameter(
                "threshold", binary, "threshold", config.threshold, config.threshold_schedule
            ),
        ]
    if config.name == "filter":
        return [
            ScheduledHyperparameter("alpha", binary, "alpha", config.alpha, config.alpha_schedule),
            ScheduledHyperparameter("gamma", binary, "gamma", config.gamma),
        ]
    return [ScheduledHyperparameter("lr", binary, "lr", config.lr, config.lr_schedule)]


def _xavier_param_groups(model: nn.Module, config: OptimizerConfig) -> list[dict[str, Any]]:
    """One param group per binary layer: ``lr = config.lr * xavier_lr_multiplier(layer)``,
    the multiplier kept as ``lr_multiplier`` for the lr schedule."""
    groups = []
    for _, layer in binary_layers(model):
        multiplier = xavier_lr_multiplier(layer)
        groups.append(
            {"params": [layer.weight], "lr": config.lr * multiplier, "lr_multiplier": multiplier}
        )
    return groups


def build_optimizer(
    model: nn.Module, config: OptimizerConfig, steps_per_epoch: int, epochs: int
) -> BinaryOptimizerPair:
    """Split ``model`` by layer type and build the binary optimizer plus Adam for the rest.

    For the latent families the binary layers are first switched to latent weights
    (``use_latent_weights(model, config.latent_init_scale)``), so call this before the first
    forward pass. Real parameters get ``Adam(real_lr, eps=1e-7)``. ``config.latent_weight_clip``
    (latent families only) becomes the pair's ``weight_clip``; the initial latent weights are
    not clamped (larq applies the constraint after updates only). With
    ``config.latent_lr_scaling == "xavier"`` the latent optimizer has one param group per
    binary layer whose lr is ``lr * xavier_lr_multiplier(layer)`` (also under an lr schedule);
    ``hyperparameters()["lr"]`` stays the unscaled base lr.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"Invalid steps_per_epoch: {steps_per_epoch!r} (must be >= 1)")
    if epochs < 1:
        raise ValueError(f"Invalid epochs: {epochs!r} (must be >= 1)")
    if config.name.startswith("latent-"):
        use_latent_weights(model, config.latent_init_scale)
    binary_params, real_params = split_parameters(model)
    params: BinaryParams = binary_params
    if config.name.startswith("latent-") and config.latent_lr_scaling == "xavier":
        params = _xavier_param_groups(model, config)
    binary = _BUILDERS[config.name](params, config) if binary_params else None
    real = (
        torch.optim.Adam(real_params, lr=config.real_lr, eps=REAL_ADAM_EPS)
        if real_params
        else None
    )
    scheduled = _binary_schedules(config) + [
        ScheduledHyperparameter("real_lr", "real", "lr", config.real_lr, config.real_lr_schedule)
    ]
    clip = config.latent_weight_clip if config.name.startswith("latent-") else None
    total_steps = steps_per_epoch * epochs
    return BinaryOptimizerPair(binary, real, scheduled, steps_per_epoch, total_steps, clip)
