"""Plain dataclasses that describe one training run and what it produced.

They are the contract between the library (``bnn_core.train``), the stacked trainer
(``bnn_core.stacked``) and the Optuna worker, which builds them from a study spec. Validation
happens in ``__post_init__`` and every error names the offending field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ConfigError",
    "Schedule",
    "OptimizerConfig",
    "TrainConfig",
    "EpochMetrics",
    "TrainResult",
    "OPTIMIZER_NAMES",
    "SCHEDULE_KINDS",
    "LATENT_LR_SCALINGS",
]

OPTIMIZER_NAMES = ("bop", "bop2", "filter", "latent-adam", "latent-sgd")
SCHEDULE_KINDS = ("constant", "staircase", "linear", "cosine", "linear-epoch")
LATENT_LR_SCALINGS = ("none", "xavier")


class ConfigError(ValueError):
    """A configuration value is invalid; ``field`` names it (dotted path)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.reason = message


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(field_name, message)


def _finite_nonnegative(value: float, field_name: str) -> None:
    _require(isinstance(value, int | float), field_name, f"must be a number, got {value!r}")
    _require(math.isfinite(value) and value >= 0, field_name, f"must be >= 0, got {value!r}")


@dataclass(frozen=True)
class Schedule:
    """How a hyperparameter evolves over the global optimizer step.

    * ``constant``: the base value.
    * ``staircase``: base * factor ** floor(step / (every_epochs * steps_per_epoch)),
      i.e. Keras ``ExponentialDecay(staircase=True)`` (Bop CIFAR recipe: x0.1 every 100 epochs).
    * ``linear``: from base to ``end_value`` over the run, per step (Keras ``PolynomialDecay``).
    * ``cosine``: half-cosine from base to ``end_value`` over the run, per step.
    * ``linear-epoch``: base * (1 - epoch / epochs), piecewise constant per epoch (the released
      code of Quist et al. for alpha).
    """

    kind: Literal["constant", "staircase", "linear", "cosine", "linear-epoch"] = "constant"
    factor: float = 0.1
    every_epochs: int = 100
    end_value: float = 0.0

    def __post_init__(self) -> None:
        _require(
            self.kind in SCHEDULE_KINDS, "kind", f"unknown {self.kind!r}; one of {SCHEDULE_KINDS}"
        )
        _require(0 < self.factor <= 1, "factor", f"must be in (0, 1], got {self.factor!r}")
        _require(
            self.every_epochs >= 1, "every_epochs", f"must be >= 1, got {self.every_epochs!r}"
        )
        _finite_nonnegative(self.end_value, "end_value")


@dataclass(frozen=True)
class OptimizerConfig:
    """Binary-weight optimizer and its hyperparameters; real parameters always use Adam.

    Only the fields of the chosen ``name`` are used:
    ``bop``: gamma, threshold; ``bop2``: gamma, sigma, threshold, bias_correction (the
    "unbiased" variant);
    ``filter``: alpha, gamma (the cascaded EMA of Quist et al.);
    ``latent-adam`` / ``latent-sgd``: lr, momentum (sgd), weight_decay, decoupled_weight_decay,
    latent_init_scale, latent_weight_clip, latent_lr_scaling.

    ``latent_weight_clip`` (default None: no clipping, the ICLR/ReActNet-style baseline) clamps
    every latent binary weight to [-clip, clip] after each update, the BinaryNet (Courbariaux)
    ``weight_clip`` constraint of the Bop paper's Adam baseline (clip 1; science.md 4 item 4).
    It is a ConfigError for bop/bop2/filter, whose weights are exactly +-1.

    ``latent_lr_scaling`` ("none", the default, or "xavier") is BinaryConnect's (Courbariaux)
    Xavier learning-rate scaling, used by the Bop paper's 90.9 % Adam baseline: every binary
    layer gets its own learning rate ``lr * m`` (and a scheduled lr becomes
    ``schedule(lr) * m``), with the larq ``XavierLearningRateScaling.get_lr_multiplier``
    multiplier

    * conv, kernel area ``k = kh * kw``: ``m = 1 / sqrt(1.5 / (k * (n_in + n_out)))``;
    * dense: ``m = 1 / sqrt(1.5 / (n_in + n_out))``,

    where ``n_in``/``n_out`` are the input/output channels (features) of the layer
    (``bnn_core.optim.xavier_lr_multiplier``). Like ``latent_weight_clip`` it is a ConfigError
    for bop/bop2/filter unless "none".
    """

    name: str = "bop"
    gamma: float = 1e-4
    threshold: float = 1e-8
    sigma: float = 1e-2
    alpha: float = 1e-3
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    bias_correction: bool = False
    latent_init_scale: float | None = None
    latent_weight_clip: float | None = None
    latent_lr_scaling: Literal["none", "xavier"] = "none"
    gamma_schedule: Schedule = field(default_factory=Schedule)
    threshold_schedule: Schedule = field(default_factory=Schedule)
    # Bop2ndOrder's CIFAR recipe raises sigma linearly from 1e-7 to 1e-2 (science.md D).
    sigma_schedule: Schedule = field(default_factory=Schedule)
    alpha_schedule: Schedule = field(default_factory=lambda: Schedule(kind="linear-epoch"))
    lr_schedule: Schedule = field(default_factory=Schedule)
    real_lr: float = 0.01
    real_lr_schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self) -> None:
        _require(
            self.name in OPTIMIZER_NAMES,
            "optimizer.name",
            f"unknown optimizer {self.name!r}; one of {OPTIMIZER_NAMES}",
        )
        for name in ("threshold", "weight_decay"):
            _finite_nonnegative(getattr(self, name), f"optimizer.{name}")
        for name in ("gamma", "sigma", "alpha", "lr", "real_lr"):
            value = getattr(self, name)
            _finite_nonnegative(value, f"optimizer.{name}")
            _require(value > 0, f"optimizer.{name}", f"must be > 0, got {value!r}")
        for name in ("gamma", "sigma", "alpha"):
            _require(getattr(self, name) <= 1, f"optimizer.{name}", "must be <= 1 (an EMA rate)")
        _require(
            0 <= self.momentum < 1,
            "optimizer.momentum",
            f"must be in [0, 1), got {self.momentum!r}",
        )
        _require(
            isinstance(self.bias_correction, bool),
            "optimizer.bias_correction",
            f"must be a bool, got {self.bias_correction!r}",
        )
        if self.latent_init_scale is not None:
            _require(self.latent_init_scale > 0, "optimizer.latent_init_scale", "must be > 0")
        self._check_latent_weight_clip()
        self._check_latent_lr_scaling()

    def _check_latent_weight_clip(self) -> None:
        clip, field_name = self.latent_weight_clip, "optimizer.latent_weight_clip"
        if clip is None:
            return
        _require(
            isinstance(clip, int | float) and not isinstance(clip, bool),
            field_name,
            f"must be a number or None, got {clip!r}",
        )
        _require(math.isfinite(clip) and clip > 0, field_name, f"must be > 0, got {clip!r}")
        _require(
            self.name.startswith("latent-"),
            field_name,
            f"only for latent-adam/latent-sgd, not {self.name!r} (its weights are +-1)",
        )

    def _check_latent_lr_scaling(self) -> None:
        scaling, field_name = self.latent_lr_scaling, "optimizer.latent_lr_scaling"
        _require(
            isinstance(scaling, str) and scaling in LATENT_LR_SCALINGS,
            field_name,
            f"unknown {scaling!r}; one of {LATENT_LR_SCALINGS}",
        )
        _require(
            scaling == "none" or self.name.startswith("latent-"),
            field_name,
            f"only for latent-adam/latent-sgd, not {self.name!r} (no learning rate to scale)",
        )


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    ``val_fraction`` of the training set (split with ``seed``) is held out for validation;
    the objective of a tuning study is validation accuracy, never test accuracy.
    """

    model: str = "mlp"
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    epochs: int = 10
    batch_size: int = 50
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    seed: int = 0
    val_fraction: float = 0.1
    augment: bool | None = None  # None: the dataset's default (on for CIFAR-10)
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    max_train_samples: int | None = None  # cap for quick runs and tests
    evaluate_test: bool = False

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs!r}")
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size!r}")
        _require(
            0 < self.val_fraction < 1,
            "val_fraction",
            f"must be in (0, 1), got {self.val_fraction!r}",
        )
        _require(
            self.precision in ("fp32", "bf16"),
            "precision",
            f"fp32 or bf16, got {self.precision!r}",
        )
        if self.max_train_samples is not None:
            _require(self.max_train_samples >= 1, "max_train_samples", "must be >= 1")


@dataclass
class EpochMetrics:
    """What one epoch produced. ``flip_ratio`` is the mean per-step fraction of binary weights
    that changed sign (larq ``FlipRatio``); step 1 is excluded because its flips compare the
    random init with the first update (science.md 5.2)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    flip_ratio: float
    flip_ratio_per_layer: dict[str, float]
    hyperparameters: dict[
        str, float
    ]  # values in force at the end of the epoch: gamma, threshold, ...
    seconds: float


@dataclass
class TrainResult:
    config: TrainConfig
    epochs: list[EpochMetrics]
    stopped_early: bool = False
    test_accuracy: float | None = None
    seconds: float = 0.0

    @property
    def final_val_accuracy(self) -> float:
        return self.epochs[-1].val_accuracy if self.epochs else float("nan")

    @property
    def best_val_accuracy(self) -> float:
        return max((e.val_accuracy for e in self.epochs), default=float("nan"))
