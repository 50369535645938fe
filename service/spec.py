"""The study spec: what a user asks BNN-Tune to tune, validated once, read by API and worker.

A study tunes the hyperparameters of ONE binary-weight optimizer family on one model/dataset.
``search_space`` maps each tuned parameter of that family to a :data:`ParamSpec`:

* a fixed value: ``1e-4`` (schedule parameters: a kind string ``"cosine"`` or a
  :class:`ScheduleSpec` object ``{"kind": "staircase", "factor": 0.1, "every_epochs": 30}``;
  fixed kind strings are normalised to a :class:`ScheduleSpec` after validation);
* a range: ``{"low": 1e-6, "high": 1e-2, "log": true}`` (``log`` needs ``low > 0``; optional
  ``step``; ``threshold``/``weight_decay`` ranges may set ``include_zero: true``, which makes 0 its
  own categorical choice next to the range, as in the Bop paper's tau sweep {0, 1e-6, 1e-5});
* a choice: ``{"choices": [1e-3, 1e-4]}`` (schedule parameters: kind strings).

Parameters of the family that are not listed keep the ``bnn_core.config.OptimizerConfig``
defaults. Leaving ``search_space`` out uses :data:`DEFAULT_SEARCH_SPACES` (science.md §5.1).

``latent_weight_clip`` (latent families; not listed: no clipping) clamps the latent weights to
[-clip, clip] after every update, the BinaryNet constraint of the Bop paper's Adam baseline
(clip 1).

``latent_lr_scaling`` (latent families; a string, fixed ``"xavier"`` or
``{"choices": ["none", "xavier"]}``; not listed: ``"none"``) gives every binary layer its own
latent learning rate ``lr * m`` with BinaryConnect's Xavier multiplier
``m = 1 / sqrt(1.5 / (k * (n_in + n_out)))`` (``k`` the conv kernel area, 1 for dense layers),
as the Bop paper's Adam baseline did; an lr schedule is scaled per layer the same way.

The ``filter`` family needs ``alpha <= gamma``. The spec rejects it when it can never hold (both
fixed, or the lowest possible alpha above the highest possible gamma). When the ranges overlap,
the worker samples ``gamma`` first and then ``alpha`` from its range clipped to
``high = min(alpha.high, gamma)`` (a fixed alpha raises gamma's ``low`` instead), so sampled
trials satisfy the constraint. Only when no valid alpha exists for the sampled gamma (gamma below
alpha's lowest value, or every alpha choice above gamma) does the trial end PRUNED without
training, with user_attr ``error = "alpha > gamma"`` (see ``worker.objective``).

Semantics for the worker (names are Optuna parameter names):

* range -> ``trial.suggest_float(name, low, high, log=log, step=step)``; with ``include_zero``
  first ``trial.suggest_categorical(f"{name}_is_zero", [True, False])`` and, when False, the range;
* choices -> ``trial.suggest_categorical(name, choices)``;
* fixed -> not sampled (record it with ``trial.set_user_attr`` if wanted).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.settings import Settings
from service.vocabulary import (
    DATASET_NAMES,
    DEVICE_DESCRIPTION,
    DEVICE_PATTERN,
    LATENT_LR_SCALINGS,
    MODEL_NAMES,
    OBJECTIVE_DIRECTIONS,
    OPTIMIZER_FAMILIES,
    SCHEDULE_KINDS,
    DatasetName,
    ModelName,
    ObjectiveName,
    OptimizerFamily,
    Precision,
    PrunerName,
    SamplerName,
    ScheduleKind,
)

__all__ = [
    "OPTIMIZER_FAMILIES",
    "BOOL_PARAMS",
    "STRING_PARAMS",
    "FAMILY_PARAMS",
    "SCHEDULE_PARAMS",
    "SCHEDULE_KINDS",
    "ZERO_CHOICE_PARAMS",
    "PARAM_ALIASES",
    "OBJECTIVE_DIRECTIONS",
    "DEFAULT_SEARCH_SPACES",
    "SPEC_EXAMPLES",
    "MODEL_NAMES",
    "INCOMPATIBLE_MODEL_DATASETS",
    "DATASET_NAMES",
    "RangeSpec",
    "ChoiceSpec",
    "ScheduleSpec",
    "ParamSpec",
    "SamplerSpec",
    "PrunerSpec",
    "StudySpec",
    "SpecError",
    "spec_errors",
    "check_limits",
    "load_spec",
    "parse_spec",
    "stored_spec",
]

FAMILY_PARAMS: dict[str, tuple[str, ...]] = {
    "bop": ("gamma", "threshold", "real_lr", "gamma_schedule"),
    "bop2": ("gamma", "sigma", "threshold", "real_lr", "sigma_schedule", "bias_correction"),
    "filter": ("alpha", "gamma", "real_lr", "alpha_schedule"),
    "latent-adam": (
        "lr",
        "weight_decay",
        "latent_init_scale",
        "latent_weight_clip",
        "latent_lr_scaling",
        "real_lr",
    ),
    "latent-sgd": (
        "lr",
        "momentum",
        "weight_decay",
        "latent_init_scale",
        "latent_weight_clip",
        "latent_lr_scaling",
        "real_lr",
    ),
}
SCHEDULE_PARAMS: frozenset[str] = frozenset({"gamma_schedule", "alpha_schedule", "sigma_schedule"})
# Parameters that are a bool: fixed ``true``/``false`` or ``{choices: [true, false]}``.
BOOL_PARAMS: frozenset[str] = frozenset({"bias_correction"})
# Parameters that take one of a few strings: fixed ``"xavier"`` or ``{choices: [...]}``.
STRING_PARAMS: dict[str, tuple[str, ...]] = {"latent_lr_scaling": LATENT_LR_SCALINGS}
ZERO_CHOICE_PARAMS: frozenset[str] = frozenset({"threshold", "weight_decay"})
PARAM_ALIASES: dict[str, str] = {"tau": "threshold"}
# Model/dataset pairs that cannot train (every trial would fail with the same ConfigError of
# bnn_core.models.build_model); tests/worker checks this table against bnn_core.
INCOMPATIBLE_MODEL_DATASETS: dict[tuple[str, str], str] = {
    ("binarynet", "digits"): "binarynet downsamples too often for the 8x8 digits images; use "
    "mlp, conv-small or resnet, or a 28x28/32x32 dataset (mnist, fashion-mnist, cifar10)",
}

# name -> (lowest allowed, is the lowest itself allowed, highest allowed, is the highest allowed)
_BOUNDS: dict[str, tuple[float, bool, float, bool]] = {
    "gamma": (0.0, False, 1.0, True),
    "sigma": (0.0, False, 1.0, True),
    "alpha": (0.0, False, 1.0, True),
    "threshold": (0.0, True, math.inf, False),
    "weight_decay": (0.0, True, math.inf, False),
    "momentum": (0.0, True, 1.0, False),
    "lr": (0.0, False, math.inf, False),
    "real_lr": (0.0, False, math.inf, False),
    "latent_init_scale": (0.0, False, math.inf, False),
    "latent_weight_clip": (0.0, False, math.inf, False),
}

DEFAULT_SEARCH_SPACES: dict[str, dict[str, Any]] = {
    "bop": {
        "gamma": {"low": 1e-6, "high": 1e-2, "log": True},
        "threshold": {"low": 1e-10, "high": 1e-5, "log": True, "include_zero": True},
        "real_lr": {"low": 1e-4, "high": 3e-2, "log": True},
    },
    "bop2": {
        "gamma": {"low": 1e-9, "high": 1e-2, "log": True},
        "sigma": {"low": 1e-7, "high": 1e-1, "log": True},
        "threshold": {"low": 1e-9, "high": 1e-4, "log": True},
        "real_lr": {"low": 1e-4, "high": 3e-2, "log": True},
    },
    "filter": {
        "alpha": {"low": 1e-7, "high": 1e-2, "log": True},
        "gamma": {"low": 1e-3, "high": 1.0, "log": True},
        "real_lr": {"low": 1e-4, "high": 3e-2, "log": True},
        "alpha_schedule": {"choices": ["linear-epoch", "constant"]},
    },
    "latent-adam": {
        "lr": {"low": 1e-5, "high": 1e-2, "log": True},
        "weight_decay": {"low": 1e-8, "high": 1e-3, "log": True, "include_zero": True},
        "real_lr": {"low": 1e-4, "high": 3e-2, "log": True},
    },
    "latent-sgd": {
        "lr": {"low": 1e-3, "high": 1.0, "log": True},
        "momentum": {"choices": [0.0, 0.5, 0.9, 0.99]},
        "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True, "include_zero": True},
        "real_lr": {"low": 1e-4, "high": 3e-2, "log": True},
    },
}


def _fail(field: str, reason: str) -> PydanticCustomError:
    """An error whose ``ctx.field`` carries the dotted path (model-level checks have no loc)."""
    ctx = {"field": field, "reason": reason}
    return PydanticCustomError("invalid_spec", "{field}: {reason}", ctx)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RangeSpec(_Strict):
    """A continuous range; sampled with ``suggest_float(low, high, log=log, step=step)``."""

    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)
    include_zero: bool = Field(
        False, description="Also offer exactly 0 as its own choice (threshold, weight_decay)."
    )

    @model_validator(mode="after")
    def _check(self) -> RangeSpec:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log ranges need low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("step cannot be combined with log")
        return self


ChoiceValue = StrictBool | StrictInt | StrictFloat | str


class ChoiceSpec(_Strict):
    """A categorical choice; sampled with ``suggest_categorical(name, choices)``."""

    choices: list[ChoiceValue] = Field(min_length=1)


class ScheduleSpec(_Strict):
    """A fixed schedule (see ``bnn_core.config.Schedule``); a bare kind string means defaults."""

    kind: ScheduleKind = "constant"
    factor: float = Field(0.1, gt=0, le=1)
    every_epochs: int = Field(100, ge=1)
    end_value: float = Field(0.0, ge=0)


def _param_kind(value: Any) -> str:
    if isinstance(value, dict):
        if "choices" in value:
            return "choices"
        if "kind" in value:
            return "schedule"
        return "range"
    if isinstance(value, RangeSpec | ChoiceSpec | ScheduleSpec):
        return {RangeSpec: "range", ChoiceSpec: "choices", ScheduleSpec: "schedule"}[type(value)]
    return "fixed"


def _fixed_value(value: Any) -> bool | float | int | str:
    # bools pass here; _check_param accepts them only for BOOL_PARAMS.
    if not isinstance(value, bool | int | float | str):
        raise ValueError(f"must be a number, a range, choices or a schedule, got {value!r}")
    return value


FixedValue = Annotated[
    bool | float | int | str,
    PlainValidator(_fixed_value),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}),
]

ParamSpec = Annotated[
    Annotated[FixedValue, Tag("fixed")]
    | Annotated[RangeSpec, Tag("range")]
    | Annotated[ChoiceSpec, Tag("choices")]
    | Annotated[ScheduleSpec, Tag("schedule")],
    Discriminator(_param_kind),
]
_TAGS = ("fixed", "range", "choices", "schedule")


class SamplerSpec(_Strict):
    """Optuna sampler; ``seed`` makes sampling reproducible (per worker process)."""

    name: SamplerName = "tpe"
    seed: int | None = None


class PrunerSpec(_Strict):
    """Optuna pruner over per-epoch val_accuracy; single-objective studies only.

    ``median``: MedianPruner(n_startup_trials, n_warmup_steps, interval_steps).
    ``hyperband``: HyperbandPruner(min_resource, max_resource=epochs, reduction_factor).
    """

    name: PrunerName = "none"
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(1, ge=0)
    interval_steps: int = Field(1, ge=1)
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


SPEC_EXAMPLES: dict[str, dict[str, Any]] = {
    "bop": {
        "name": "bop-binarynet-cifar10",
        "optimizer": "bop",
        "model": "binarynet",
        "dataset": "cifar10",
        "epochs": 100,
        "batch_size": 100,
        "n_trials": 30,
        "search_space": {
            "gamma": {"low": 1e-6, "high": 1e-2, "log": True},
            "threshold": {"low": 1e-10, "high": 1e-5, "log": True, "include_zero": True},
            "real_lr": 0.01,
            "gamma_schedule": {"choices": ["constant", "cosine"]},
        },
        "pruner": {"name": "median"},
    },
    "bop2": {
        "name": "bop2-mlp-digits",
        "optimizer": "bop2",
        "model": "mlp",
        "dataset": "digits",
        "epochs": 10,
        "n_trials": 20,
        "search_space": {
            "gamma": {"low": 1e-9, "high": 1e-2, "log": True},
            "sigma": {"low": 1e-7, "high": 1e-1, "log": True},
            "threshold": {"low": 1e-9, "high": 1e-4, "log": True},
            "real_lr": 0.01,
        },
    },
    "filter": {
        "name": "filter-conv-fashion",
        "optimizer": "filter",
        "model": "conv-small",
        "dataset": "fashion-mnist",
        "epochs": 20,
        "n_trials": 40,
        "search_space": {
            "alpha": {"low": 1e-7, "high": 1e-2, "log": True},
            "gamma": {"low": 1e-3, "high": 1.0, "log": True},
            "real_lr": {"low": 1e-4, "high": 3e-2, "log": True},
            "alpha_schedule": "linear-epoch",
        },
        "objectives": ["val_accuracy", "flip_ratio"],
        "sampler": {"name": "tpe", "seed": 0},
    },
    "latent-adam": {
        "name": "adam-baseline-mnist",
        "optimizer": "latent-adam",
        "model": "mlp",
        "dataset": "mnist",
        "epochs": 10,
        "n_trials": 25,
        "search_space": {
            "lr": {"low": 1e-5, "high": 1e-2, "log": True},
            "weight_decay": {"low": 1e-8, "high": 1e-3, "log": True, "include_zero": True},
            "latent_init_scale": {"choices": [0.001, 0.01, 0.1]},
            "real_lr": 0.001,
        },
        "trials_per_gpu": 4,
    },
    "latent-sgd": {
        "name": "sgd-baseline-digits",
        "optimizer": "latent-sgd",
        "model": "mlp",
        "dataset": "digits",
        "epochs": 10,
        "n_trials": 16,
        "search_space": {
            "lr": {"low": 1e-3, "high": 1.0, "log": True},
            "momentum": {"choices": [0.0, 0.5, 0.9, 0.99]},
            "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True, "include_zero": True},
            "real_lr": 0.01,
        },
        "sampler": {"name": "random", "seed": 1},
    },
}


class StudySpec(_Strict):
    """One tuning study. Unknown fields anywhere are rejected (``extra="forbid"``).

    ``n_trials`` is the STUDY-WIDE budget (all workers together), enforced through
    ``bnn_studies.n_claimed``. ``objectives[0]`` is always ``val_accuracy`` (maximize); a second
    ``flip_ratio`` or ``time`` (both minimize) makes the study multi-objective.
    """

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": list(SPEC_EXAMPLES.values())}
    )

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Unique slug: lowercase letters, digits, '-' and '_', at most 63 chars.",
    )
    description: str | None = Field(None, max_length=2000)
    owner: str | None = Field(None, max_length=128)
    optimizer: OptimizerFamily
    search_space: dict[str, ParamSpec] | None = Field(
        None, description="Parameter -> fixed | range | choices. None: the family's default."
    )
    model: ModelName = "mlp"
    dataset: DatasetName = "digits"
    data_dir: str | None = None
    download: bool = False
    max_train_samples: int | None = Field(None, ge=1, description="Cap for quick runs.")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(100, ge=1)
    seed: int = 0
    n_trials: int = Field(20, ge=1, description="Study-wide trial budget.")
    timeout_s: float | None = Field(
        None,
        gt=0,
        description="Wall-clock budget of the study, counted from its first trial: then no "
        "trial starts and running ones end at their next epoch.",
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    objectives: list[ObjectiveName] = Field(
        default_factory=lambda: ["val_accuracy"], min_length=1, max_length=2
    )
    trials_per_gpu: int = Field(1, ge=1, description="Trials stacked on one GPU.")
    max_retries: int | None = Field(
        None, ge=0, description="Retries of a failed/stale trial (None: settings.max_retries)."
    )
    device: str = Field(
        "auto", max_length=8, pattern=DEVICE_PATTERN, description=DEVICE_DESCRIPTION
    )
    precision: Precision = "fp32"

    @model_validator(mode="before")
    @classmethod
    def _apply_aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("search_space"), dict):
            return data
        space = dict(data["search_space"])
        family = FAMILY_PARAMS.get(str(data.get("optimizer")), ())
        for alias, target in PARAM_ALIASES.items():
            if alias in space and target in family:
                if target in space:
                    raise _fail(f"search_space.{alias}", f"alias of {target}; give only one")
                space[target] = space.pop(alias)
        return {**data, "search_space": space}

    @field_validator("search_space")
    @classmethod
    def _check_family_params(
        cls, value: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        """Unknown parameters of the family, reported even when other fields are invalid too
        (the model validator below only runs once every field is valid)."""
        family = info.data.get("optimizer")
        if value is None or family is None:
            return value
        allowed = FAMILY_PARAMS[family]
        unknown = [name for name in value if name not in allowed]
        if unknown:
            others = f" (nor are {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
            raise _fail(
                f"search_space.{unknown[0]}",
                f"not a parameter of optimizer {family!r}{others}; allowed: {', '.join(allowed)}",
            )
        return value

    @field_validator("objectives")
    @classmethod
    def _check_objectives(cls, value: list[str]) -> list[str]:
        if value[0] != "val_accuracy":
            raise ValueError("the first objective must be 'val_accuracy'")
        if len(set(value)) != len(value):
            raise ValueError("objectives must be distinct")
        return value

    @model_validator(mode="after")
    def _check_space(self) -> StudySpec:
        if self.search_space is None:
            self.search_space = StudySpec._default_space(self.optimizer)
        allowed = FAMILY_PARAMS[self.optimizer]
        for name, param in list(self.search_space.items()):
            if name not in allowed:
                raise _fail(
                    f"search_space.{name}",
                    f"not a parameter of optimizer {self.optimizer!r}; "
                    f"allowed: {', '.join(allowed)}",
                )
            self.search_space[name] = _check_param(name, param, self.sampler.name)
        if self.optimizer == "filter":
            _check_alpha_le_gamma(self.search_space)
        if len(self.objectives) > 1 and self.pruner.name != "none":
            raise _fail("pruner.name", "pruning needs a single objective; use 'none'")
        return self

    @model_validator(mode="after")
    def _check_model_fits_dataset(self, info: ValidationInfo) -> StudySpec:
        """New specs only: stored ones (``context={"stored": True}``, :func:`stored_spec`)
        were valid when submitted and must stay readable."""
        if (info.context or {}).get("stored"):
            return self
        if reason := INCOMPATIBLE_MODEL_DATASETS.get((self.model, self.dataset)):
            raise _fail("model", reason)
        return self

    @staticmethod
    def _default_space(family: str) -> dict[str, Any]:
        raw = DEFAULT_SEARCH_SPACES[family]
        return {k: (ChoiceSpec(**v) if "choices" in v else RangeSpec(**v)) for k, v in raw.items()}

    @property
    def directions(self) -> list[str]:
        """Optuna study directions, one per objective."""
        return [OBJECTIVE_DIRECTIONS[o] for o in self.objectives]

    @property
    def is_multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def space(self) -> dict[str, Any]:
        """``search_space`` with the default filled in (never None after validation)."""
        return dict(self.search_space or {})


def _check_number(name: str, value: float, field: str) -> None:
    low, low_ok, high, high_ok = _BOUNDS[name]
    ok_low = value > low or (low_ok and value == low)
    ok_high = value < high or (high_ok and value == high)
    if not (ok_low and ok_high):
        lo, hi = ("[" if low_ok else "("), ("]" if high_ok else ")")
        raise _fail(field, f"{value!r} is outside {lo}{low}, {high}{hi}")


def _check_param(name: str, param: Any, sampler: str) -> Any:
    field = f"search_space.{name}"
    if name in SCHEDULE_PARAMS:
        return _check_schedule_param(field, param)
    if name in BOOL_PARAMS:
        return _check_bool_param(field, param)
    if name in STRING_PARAMS:
        return _check_string_param(field, param, STRING_PARAMS[name])
    if isinstance(param, bool):
        raise _fail(field, f"must be a number, a range or choices, got {param!r}")
    if isinstance(param, ScheduleSpec):
        raise _fail(field, "a schedule object is only valid for *_schedule parameters")
    if isinstance(param, str):
        raise _fail(field, f"must be a number, a range or choices, got {param!r}")
    if isinstance(param, ChoiceSpec):
        for i, choice in enumerate(param.choices):
            if isinstance(choice, bool) or not isinstance(choice, int | float):
                raise _fail(f"{field}.choices.{i}", f"must be a number, got {choice!r}")
            _check_number(name, float(choice), f"{field}.choices.{i}")
    elif isinstance(param, RangeSpec):
        if param.include_zero and name not in ZERO_CHOICE_PARAMS:
            raise _fail(f"{field}.include_zero", "only threshold and weight_decay may include 0")
        _check_number(name, param.low, f"{field}.low")
        _check_number(name, param.high, f"{field}.high")
        if sampler == "grid" and param.step is None:
            raise _fail(field, "the grid sampler needs choices or a range with step")
    else:
        _check_number(name, float(param), field)
    return param


def _check_bool_param(field: str, param: Any) -> Any:
    if isinstance(param, bool):
        return param
    if isinstance(param, ChoiceSpec):
        for i, choice in enumerate(param.choices):
            if not isinstance(choice, bool):
                raise _fail(f"{field}.choices.{i}", f"must be true or false, got {choice!r}")
        return param
    raise _fail(field, "must be true, false or {choices: [true, false]}")


def _check_string_param(field: str, param: Any, allowed: tuple[str, ...]) -> Any:
    one_of = ", ".join(allowed)
    if isinstance(param, ChoiceSpec):
        for i, choice in enumerate(param.choices):
            if not (isinstance(choice, str) and choice in allowed):
                raise _fail(f"{field}.choices.{i}", f"must be one of {one_of}, got {choice!r}")
        return param
    if isinstance(param, str) and param in allowed:
        return param
    got = {RangeSpec: "a range", ScheduleSpec: "a schedule"}.get(type(param), repr(param))
    raise _fail(field, f"must be one of {one_of} or {{choices: [...]}}, got {got}")


def _check_schedule_param(field: str, param: Any) -> Any:
    if isinstance(param, str):
        if param not in SCHEDULE_KINDS:
            raise _fail(field, f"unknown schedule {param!r}; one of {', '.join(SCHEDULE_KINDS)}")
        return ScheduleSpec(kind=param)  # type: ignore[arg-type]
    if isinstance(param, ChoiceSpec):
        for i, choice in enumerate(param.choices):
            if choice not in SCHEDULE_KINDS:
                raise _fail(
                    f"{field}.choices.{i}",
                    f"unknown schedule {choice!r}; one of {', '.join(SCHEDULE_KINDS)}",
                )
        return param
    if isinstance(param, ScheduleSpec):
        return param
    raise _fail(field, "a schedule is a kind string, a schedule object or {choices: [kinds]}")


def _extent(param: Any) -> tuple[float, float]:
    """Smallest and largest value a numeric ParamSpec can take."""
    if isinstance(param, RangeSpec):
        return (0.0 if param.include_zero else param.low), param.high
    if isinstance(param, ChoiceSpec):
        values = [float(c) for c in param.choices]
        return min(values), max(values)
    return float(param), float(param)


def _check_alpha_le_gamma(space: dict[str, Any]) -> None:
    if "alpha" not in space or "gamma" not in space:
        return
    alpha_min, _ = _extent(space["alpha"])
    _, gamma_max = _extent(space["gamma"])
    if alpha_min > gamma_max:
        raise _fail(
            "search_space.alpha",
            f"the filter needs alpha <= gamma, but alpha >= {alpha_min} > gamma <= {gamma_max}",
        )


class SpecError(ValueError):
    """An invalid spec; ``errors`` is a list of ``{"field", "message", "type"}`` dicts."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {e['field']}: {e['message']}" for e in errors)
        super().__init__(f"invalid study spec:\n{lines}")


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p != "body"]
    if len(parts) > 2 and parts[0] == "search_space" and parts[2] in _TAGS:
        del parts[2]
    return ".".join(str(p) for p in parts) or "<spec>"


def spec_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Flatten a pydantic error into ``{"field": "a.b.c", "message", "type"}`` dicts."""
    return [_one_error(e) for e in exc.errors()]


def _one_error(error: Any) -> dict[str, str]:
    ctx = error.get("ctx") or {}
    field = ctx.get("field") if isinstance(ctx.get("field"), str) else None
    if field and "reason" in ctx:
        message = ctx["reason"]
    elif "error" in ctx:  # a ValueError raised in a validator: drop pydantic's "Value error, "
        message = str(ctx["error"])
    else:
        message = error["msg"]
    return {
        "field": field or _loc_to_field(tuple(error["loc"])),
        "message": str(message),
        "type": error["type"],
    }


def check_limits(spec: StudySpec, settings: Settings) -> list[dict[str, str]]:
    """Service limits (settings) a valid spec may still exceed; [] when within all of them."""
    errors = []
    if spec.n_trials > settings.max_trials:
        errors.append(("n_trials", f"{spec.n_trials} exceeds max_trials={settings.max_trials}"))
    if spec.epochs > settings.max_epochs:
        errors.append(("epochs", f"{spec.epochs} exceeds max_epochs={settings.max_epochs}"))
    cap = settings.max_trials_per_gpu
    if cap is not None and spec.trials_per_gpu > cap:
        message = f"{spec.trials_per_gpu} exceeds max_trials_per_gpu={cap}"
        errors.append(("trials_per_gpu", message))
    return [{"field": f, "message": m, "type": "limit_exceeded"} for f, m in errors]


def parse_spec(data: Any, settings: Settings | None = None) -> StudySpec:
    """Validate a spec from plain data; raise :class:`SpecError` (field paths) when invalid."""
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(spec_errors(exc)) from exc
    if settings is not None and (errors := check_limits(spec, settings)):
        raise SpecError(errors)
    return spec


def stored_spec(data: Any) -> StudySpec:
    """A spec read back from the database: validated again, minus the checks added after it
    may have been stored (so old studies stay readable)."""
    return StudySpec.model_validate(data, context={"stored": True})


def load_spec(path: str | Path, settings: Settings | None = None) -> StudySpec:
    """Read a YAML or JSON spec file (used by ``bnn-tune submit``); raise :class:`SpecError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SpecError([{"field": "<file>", "message": f"{path}: {exc}", "type": "io"}]) from exc
    if not isinstance(data, dict):
        raise SpecError([{"field": "<spec>", "message": "must be a mapping", "type": "type"}])
    return parse_spec(data, settings)
