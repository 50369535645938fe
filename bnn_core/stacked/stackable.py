"""Which trials can share one stacked group.

A group's trials share everything that fixes the tensor shapes, the data and the numerics
(``SHARED_FIELDS``) and the optimizer family; each has its own seed, epochs and
hyperparameters. ``check_stackable`` is the one place that rule is checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..config import ConfigError, TrainConfig
from .optim import STACKABLE_FAMILIES

__all__ = ["SHARED_FIELDS", "check_stackable", "is_stackable"]

SHARED_FIELDS = (
    "model",
    "dataset",
    "data_root",
    "data_subdir",
    "eval_protocol",
    "batch_size",
    "val_fraction",
    "max_train_samples",
    "augment",
    "device",
    "precision",
    "channels_last",
    "compile",
    "optimizer.name",
)


def _field(config: TrainConfig, name: str) -> Any:
    value: Any = config
    for part in name.split("."):
        value = getattr(value, part)
    return value


def is_stackable(config: TrainConfig) -> bool:
    """Whether ``config`` can run in a ``StackedTrainer``: a known model and any optimizer
    family of ``STACKABLE_FAMILIES`` (bop, bop2, filter, latent-adam, latent-sgd)."""
    from ..models import MODEL_NAMES

    return config.optimizer.name in STACKABLE_FAMILIES and config.model in MODEL_NAMES


def check_stackable(configs: Sequence[TrainConfig], fields: Iterable[str] = SHARED_FIELDS) -> None:
    """Raise ``ConfigError(field)`` unless all configs agree on ``fields`` and use a family
    the stacked optimizer supports (``STACKABLE_FAMILIES``)."""
    if not configs:
        raise ConfigError("configs", "need at least one config")
    first = configs[0]
    if first.optimizer.name not in STACKABLE_FAMILIES:
        raise ConfigError(
            "optimizer.name",
            f"{first.optimizer.name!r} cannot be stacked; one of {STACKABLE_FAMILIES}",
        )
    for index, config in enumerate(configs[1:], start=1):
        for name in fields:
            if _field(config, name) != _field(first, name):
                raise ConfigError(
                    name,
                    f"stacked trials must share {name}: config {index} has "
                    f"{_field(config, name)!r}, config 0 has {_field(first, name)!r}",
                )
