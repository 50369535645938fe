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
    "SCHEDULED_HYPERPARAMETERS",
    "LATENT_LR_SCALINGS",
    "EVAL_PROTOCOLS",
    "FAMILY_DEFAULTS",
    "check_subdir",
]

OPTIMIZER_NAMES = ("bop", "bop2", "filter", "latent-adam", "latent-sgd")
SCHEDULE_KINDS = ("constant", "staircase", "linear", "cosine", "linear-epoch", "polynomial")
# Every hyperparameter that has a ``<name>_schedule`` field in OptimizerConfig.
SCHEDULED_HYPERPARAMETERS = ("gamma", "threshold", "sigma", "alpha", "lr", "real_lr")
LATENT_LR_SCALINGS = ("none", "xavier")
# "holdout": tune on a held-out part of the training set (the default, no test-set leakage);
# "test": train on the whole training set and report the test set as "val" (reproducing a
# paper's published protocol; choosing hyperparameters on it is tuning on the test set).
EVAL_PROTOCOLS = ("holdout", "test")

# The defaults of each family, for the OptimizerConfig fields left unset (None). Each row
# satisfies its family's own rules:
# * bop: larq >= 0.9's Bop(threshold=1e-8, gamma=1e-4), the Bop paper's section-5.2 values;
# * bop2: the reference Bop2ndOrder class defaults gamma=1e-6, sigma=1e-2, threshold=1e-6;
# * filter: the cascaded EMA has no published defaults; alpha <= gamma, with gamma = 0.1 the
#   twin of latent SGD momentum 0.9 and alpha = 1e-3 a slow inertia stage;
# * latent-adam / latent-sgd: lr 1e-3, SGD momentum 0.9, no weight decay.
FAMILY_DEFAULTS: dict[str, dict[str, float]] = {
    "bop": {"gamma": 1e-4, "threshold": 1e-8},
    "bop2": {"gamma": 1e-6, "sigma": 1e-2, "threshold": 1e-6},
    "filter": {"alpha": 1e-3, "gamma": 1e-1},
    "latent-adam": {"lr": 1e-3, "weight_decay": 0.0},
    "latent-sgd": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0},
}
# Fields a family does not use still get a value (so every field is a float after
# construction); these are never read by that family's optimizer.
_UNUSED_DEFAULTS = {
    "gamma": 1e-4, "threshold": 1e-8, "sigma": 1e-2, "alpha": 1e-3,
    "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0,
}  # fmt: skip


class ConfigError(ValueError):
    """A configuration value is invalid; ``field`` names it (dotted path)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.reason = message


def _require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(field_name, message)


def check_subdir(value: str | None, field_name: str = "data_subdir") -> None:
    """A data sub-folder is one folder name under the data root: no path separators, no
    ``.``/``..``, no control characters (so a setting can never point outside the root)."""
    if value is None:
        return
    _require(isinstance(value, str), field_name, f"must be a folder name, got {value!r}")
    _require(
        value not in ("", ".", "..")
        and "/" not in value
        and "\\" not in value
        and len(value) <= 255
        and all(ord(c) >= 32 and ord(c) != 127 for c in value),
        field_name,
        f"must be a single folder name under the data root (no '/', '..' or absolute path), "
        f"got {value!r}",
    )


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
    * ``polynomial``: end + (base - end) * (1 - step / total) ** power, per step (Keras
      ``PolynomialDecay(power=...)``; power 1 is ``linear``).

    ``Schedule.parse("staircase:factor=0.1,every_epochs=100")`` builds one from text.
    """

    kind: Literal["constant", "staircase", "linear", "cosine", "linear-epoch", "polynomial"] = (
        "constant"
    )
    factor: float = 0.1
    every_epochs: int = 100
    end_value: float = 0.0
    power: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """``KIND[:key=value,...]`` with keys factor, every_epochs, end_value, power, e.g.
        ``linear:end_value=1e-6`` or ``polynomial:power=2,end_value=0``."""
        kind, _, rest = text.strip().partition(":")
        values: dict[str, float | int] = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, eq, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            _require(
                bool(eq) and key in ("factor", "every_epochs", "end_value", "power"),
                "schedule",
                f"{item!r}: expected key=value with key factor, every_epochs, end_value or power",
            )
            try:
                values[key] = int(raw) if key == "every_epochs" else float(raw)
            except ValueError:
                raise ConfigError("schedule", f"{key}: not a number: {raw!r}") from None
        return cls(kind=kind.strip(), **values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        _require(
            self.kind in SCHEDULE_KINDS, "kind", f"unknown {self.kind!r}; one of {SCHEDULE_KINDS}"
        )
        _require(0 < self.factor <= 1, "factor", f"must be in (0, 1], got {self.factor!r}")
        _require(
            self.every_epochs >= 1, "every_epochs", f"must be >= 1, got {self.every_epochs!r}"
        )
        _finite_nonnegative(self.end_value, "end_value")
        _require(
            math.isfinite(self.power) and self.power > 0,
            "power",
            f"must be > 0, got {self.power!r}",
        )


@dataclass(frozen=True)
class OptimizerConfig:
    """Binary-weight optimizer and its hyperparameters; real parameters always use Adam.

    Only the fields of the chosen ``name`` are used:
    ``bop``: gamma, threshold; ``bop2``: gamma, sigma, threshold, bias_correction (the
    "unbiased" variant);
    ``filter``: alpha, gamma (the cascaded EMA of Quist et al.);
    ``latent-adam`` / ``latent-sgd``: lr, momentum (sgd), weight_decay, decoupled_weight_decay,
    latent_init_scale, latent_weight_clip, latent_lr_scaling.
    A rate left unset (None) takes its family's default (``FAMILY_DEFAULTS``).
    ``latent-sgd`` with ``decoupled_weight_decay`` is the exact latent twin of ``filter``
    (gamma = 1 - momentum, alpha = lr * weight_decay) while every latent weight stays in
    [-1, 1]; the clipped straight-through estimator gives weights beyond it no gradient, which
    breaks the equivalence, and so does ``latent_weight_clip``.
    Every hyperparameter ``h`` in ``SCHEDULED_HYPERPARAMETERS`` follows ``h_schedule`` per step.

    ``latent_weight_clip`` (default None: no clipping, the ICLR/ReActNet-style baseline) clamps
    every latent binary weight to [-clip, clip] after each update, the BinaryNet (Courbariaux)
    ``weight_clip`` constraint of the Bop paper's Adam baseline (clip 1).
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
    # None: the family's default from FAMILY_DEFAULTS (a float after construction).
    gamma: float | None = None
    threshold: float | None = None
    sigma: float | None = None
    alpha: float | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    decoupled_weight_decay: bool = False
    bias_correction: bool = False
    latent_init_scale: float | None = None
    latent_weight_clip: float | None = None
    latent_lr_scaling: Literal["none", "xavier"] = "none"
    gamma_schedule: Schedule = field(default_factory=Schedule)
    threshold_schedule: Schedule = field(default_factory=Schedule)
    # Bop2ndOrder's CIFAR recipe raises sigma linearly from 1e-7 to 1e-2.
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
        family = FAMILY_DEFAULTS[self.name]
        for name, fallback in _UNUSED_DEFAULTS.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, family.get(name, fallback))
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

    Data: the data set is read from ``<data_root>/<data_subdir or dataset>``
    (``bnn_core.data.load_dataset``; ``data_root`` None: ``$BNN_TUNE_DATA_ROOT`` or
    ``~/.cache/bnn-tune``; ``data_subdir`` is one folder name, never a path).

    ``eval_protocol``:

    * ``"holdout"`` (default): ``val_fraction`` of the training set (split with ``seed``) is
      held out, and "val" metrics are measured on it; the objective of a tuning study is this
      validation accuracy, never test accuracy.
    * ``"test"``: REPRODUCTION MODE. The whole training set is trained on and the "val" metrics
      are the TEST set, as the papers report them. Tuning hyperparameters on these numbers is
      tuning on the test set (leakage): use it only to rerun a published protocol.

    ``stop_check_steps``: how often (in steps) ``train``'s ``should_stop`` is polled.
    """

    model: str = "mlp"
    dataset: str = "digits"
    data_root: str | None = None
    data_subdir: str | None = None
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
    eval_protocol: Literal["holdout", "test"] = "holdout"
    stop_check_steps: int = 20

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
        check_subdir(self.data_subdir)
        _require(
            self.eval_protocol in EVAL_PROTOCOLS,
            "eval_protocol",
            f"unknown {self.eval_protocol!r}; one of {EVAL_PROTOCOLS}",
        )
        _require(
            isinstance(self.stop_check_steps, int) and self.stop_check_steps >= 1,
            "stop_check_steps",
            f"must be an int >= 1, got {self.stop_check_steps!r}",
        )


@dataclass
class EpochMetrics:
    """What one epoch produced. ``flip_ratio`` is the mean per-step fraction of binary weights
    that changed sign (larq ``FlipRatio``); step 1 is excluded because its flips compare the
    random init with the first update.

    ``last_layer_pi_mean`` / ``last_layer_pi_last``: the Bop paper's eq. 7 statistic of the last
    binary layer, ``pi_t = ln(r_t + e^-9)`` with ``r_t`` its per-step flip ratio, averaged over
    the epoch's counted steps / at its last step (None where not measured)."""

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
    last_layer_pi_mean: float | None = None
    last_layer_pi_last: float | None = None


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
