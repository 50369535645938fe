"""The search space of a study: what each tuned parameter may be and which values are valid.

``search_space`` maps each tuned parameter of the study's optimizer family to a
:data:`ParamSpec`:

* a fixed value: ``1e-4`` (schedule parameters: a kind string ``"cosine"`` or a
  :class:`ScheduleSpec` object ``{"kind": "staircase", "factor": 0.1, "every_epochs": 30}``;
  fixed kind strings are normalised to a :class:`ScheduleSpec` after validation);
* a range: ``{"low": 1e-6, "high": 1e-2, "log": true}`` (``log`` needs ``low > 0``; optional
  ``step``; ``threshold``/``weight_decay`` ranges may set ``include_zero: true``, which makes 0 its
  own categorical choice next to the range, as in the Bop paper's tau sweep {0, 1e-6, 1e-5});
* a choice: ``{"choices": [1e-3, 1e-4]}`` (schedule parameters: kind strings), at most
  ``MAX_CHOICES`` of them.

Parameters of the family that are not listed keep the ``bnn_core.config.OptimizerConfig``
defaults; leaving ``search_space`` out uses :data:`DEFAULT_SEARCH_SPACES`, a space per family
around the values its paper recommends.

Semantics for the worker (names are Optuna parameter names):

* range -> ``trial.suggest_float(name, low, high, log=log, step=step)``; with ``include_zero``
  first ``trial.suggest_categorical(f"{name}_is_zero", [True, False])`` and, when False, the range;
* choices -> ``trial.suggest_categorical(name, choices)``;
* fixed -> not sampled.

EMA rates as cutoffs: ``gamma``/``sigma``/``alpha`` may be given as ``<name>_cutoff`` (cycles
per step, in (0, 0.5]; fixed, range or choices), never both (:mod:`service.spec.cutoffs`). A
cutoff range without ``log`` (and without ``step``) is sampled on a log scale. The worker
samples the cutoff and derives the rate.

Schedules: ``<h>_schedule`` for every hyperparameter ``h`` the family's optimizer schedules
(:data:`FAMILY_PARAMS`): a kind string, a :class:`ScheduleSpec` (staircase ``factor`` every
``every_epochs``, ``linear``/``cosine``/``linear-epoch`` to ``end_value``, ``polynomial`` with
``power`` and ``end_value``, ``constant``) or ``{choices: [kinds]}``. ``latent-sgd`` takes
``decoupled_weight_decay`` (a bool like ``bias_correction``: SGDW, the latent twin of filter).

The ``filter`` family's ``alpha <= gamma`` is a symmetry only with a constant alpha: its two
EMA stages then commute, so swapped pairs train identically and keeping ``alpha <= gamma``
drops duplicates. With a scheduled alpha (the default ``linear-epoch``) every pair is a
different filter and is trained. For a constant alpha, :func:`check_alpha_le_gamma` rejects a
space where the order can never hold (in rates; cutoffs are monotone in rates). When the ranges
overlap, the worker samples ``gamma`` first and clips ``alpha``'s range to ``alpha <= gamma``
(a fixed alpha raises gamma's ``low`` instead); only when no valid alpha exists for the sampled
gamma does the trial end PRUNED without training, with user_attr ``error = "alpha > gamma"``
(see ``worker.objective``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    Tag,
    WithJsonSchema,
    model_validator,
)

from service.limits import MAX_CHOICE_CHARS, MAX_CHOICES, MAX_EPOCHS
from service.spec.cutoffs import CUTOFF_PARAMS, MAX_CUTOFF, cutoff_to_rate
from service.spec.errors import fail
from service.spec.fields import (
    FiniteFloat,
    PositiveFloat,
    bounded_int,
    finite_float,
    name_str,
    no_control_chars,
)
from service.vocabulary import LATENT_LR_SCALINGS, SCHEDULE_KINDS, ScheduleKind

__all__ = [
    "FAMILY_PARAMS",
    "SCHEDULE_PARAMS",
    "BOOL_PARAMS",
    "STRING_PARAMS",
    "ZERO_CHOICE_PARAMS",
    "PARAM_ALIASES",
    "DEFAULT_SEARCH_SPACES",
    "RangeSpec",
    "ChoiceSpec",
    "ScheduleSpec",
    "ParamSpec",
    "check_param",
    "check_rate_or_cutoff",
    "alpha_is_constant",
    "check_alpha_le_gamma",
    "default_space",
]

# Per family: its hyperparameters, the cutoffs of its EMA rates (``service.spec.cutoffs``) and
# a ``<name>_schedule`` for every hyperparameter its optimizer schedules (the filter's gamma is
# never scheduled: ``bnn_core.optim`` keeps it constant).
FAMILY_PARAMS: dict[str, tuple[str, ...]] = {
    "bop": (
        "gamma", "gamma_cutoff", "threshold", "real_lr",
        "gamma_schedule", "threshold_schedule", "real_lr_schedule",
    ),
    "bop2": (
        "gamma", "gamma_cutoff", "sigma", "sigma_cutoff", "threshold", "real_lr",
        "bias_correction",
        "gamma_schedule", "sigma_schedule", "threshold_schedule", "real_lr_schedule",
    ),
    "filter": (
        "alpha", "alpha_cutoff", "gamma", "gamma_cutoff", "real_lr",
        "alpha_schedule", "real_lr_schedule",
    ),
    "latent-adam": (
        "lr", "weight_decay", "latent_init_scale", "latent_weight_clip", "latent_lr_scaling",
        "real_lr", "lr_schedule", "real_lr_schedule",
    ),
    "latent-sgd": (
        "lr", "momentum", "weight_decay", "decoupled_weight_decay", "latent_init_scale",
        "latent_weight_clip", "latent_lr_scaling", "real_lr", "lr_schedule", "real_lr_schedule",
    ),
}  # fmt: skip
# ``<h>_schedule`` for every scheduled hyperparameter h (``bnn_core.config``'s
# SCHEDULED_HYPERPARAMETERS; tests/service/test_service_spec_schedules.py keeps them equal).
SCHEDULE_PARAMS: frozenset[str] = frozenset(
    f"{name}_schedule" for name in ("gamma", "threshold", "sigma", "alpha", "lr", "real_lr")
)
# Parameters that are a bool: fixed ``true``/``false`` or ``{choices: [true, false]}``.
BOOL_PARAMS: frozenset[str] = frozenset({"bias_correction", "decoupled_weight_decay"})
# Parameters that take one of a few strings: fixed ``"xavier"`` or ``{choices: [...]}``.
STRING_PARAMS: dict[str, tuple[str, ...]] = {"latent_lr_scaling": LATENT_LR_SCALINGS}
ZERO_CHOICE_PARAMS: frozenset[str] = frozenset({"threshold", "weight_decay"})
PARAM_ALIASES: dict[str, str] = {"tau": "threshold", "tau_schedule": "threshold_schedule"}

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
    **dict.fromkeys(CUTOFF_PARAMS, (0.0, False, MAX_CUTOFF, True)),
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

# Integers a choice or fixed value may be: exactly representable as a float (Optuna's storage).
_EXACT_INT = 2**53


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RangeSpec(_Strict):
    """A continuous range; sampled with ``suggest_float(low, high, log=log, step=step)``."""

    low: FiniteFloat
    high: FiniteFloat
    log: StrictBool = False
    step: PositiveFloat | None = None  # type: ignore[valid-type]
    include_zero: StrictBool = Field(
        False, description="Also offer exactly 0 as its own choice (threshold, weight_decay)."
    )

    @model_validator(mode="after")
    def _check(self) -> RangeSpec:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log ranges need low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("step cannot be combined with log")
        return self


ChoiceString = name_str(MAX_CHOICE_CHARS)
ChoiceValue = StrictBool | bounded_int(-_EXACT_INT, _EXACT_INT) | StrictFloat | ChoiceString


class ChoiceSpec(_Strict):
    """A categorical choice; sampled with ``suggest_categorical(name, choices)``."""

    choices: list[ChoiceValue] = Field(min_length=1, max_length=MAX_CHOICES)


class ScheduleSpec(_Strict):
    """A fixed schedule (see ``bnn_core.config.Schedule``); a bare kind string means defaults."""

    kind: ScheduleKind = "constant"
    factor: finite_float(gt=0, le=1) = 0.1  # type: ignore[valid-type]
    every_epochs: bounded_int(1, MAX_EPOCHS) = 100  # type: ignore[valid-type]
    end_value: finite_float(ge=0) = 0.0  # type: ignore[valid-type]
    power: finite_float(gt=0, le=100) = Field(  # type: ignore[valid-type]
        1.0, description="Exponent of ``polynomial``."
    )


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
    # bools pass here; check_param accepts them only for BOOL_PARAMS.
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _EXACT_INT:
        raise ValueError(f"must be at most {_EXACT_INT} in magnitude")
    if isinstance(value, str):
        if len(value) > MAX_CHOICE_CHARS:
            raise ValueError(f"must be at most {MAX_CHOICE_CHARS} characters")
        return no_control_chars(value)
    if not isinstance(value, bool | int | float):
        raise ValueError(f"must be a number, a range, choices or a schedule, got {value!r}")
    return value


FixedValue = Annotated[
    bool | float | int | str,
    PlainValidator(_fixed_value),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "maxLength": MAX_CHOICE_CHARS},
                {"type": "boolean"},
            ]
        }
    ),
]

ParamSpec = Annotated[
    Annotated[FixedValue, Tag("fixed")]
    | Annotated[RangeSpec, Tag("range")]
    | Annotated[ChoiceSpec, Tag("choices")]
    | Annotated[ScheduleSpec, Tag("schedule")],
    Discriminator(_param_kind),
]


def default_space(family: str) -> dict[str, Any]:
    """The family's :data:`DEFAULT_SEARCH_SPACES` entry as validated ParamSpecs."""
    raw = DEFAULT_SEARCH_SPACES[family]
    return {k: (ChoiceSpec(**v) if "choices" in v else RangeSpec(**v)) for k, v in raw.items()}


def check_param(name: str, param: Any, sampler: str) -> Any:
    """``param`` (normalised) when it is valid for parameter ``name``; raises :func:`fail`."""
    field = f"search_space.{name}"
    if name in SCHEDULE_PARAMS:
        return _check_schedule_param(field, param)
    if name in BOOL_PARAMS:
        return _check_bool_param(field, param)
    if name in STRING_PARAMS:
        return _check_string_param(field, param, STRING_PARAMS[name])
    if isinstance(param, bool):
        raise fail(field, f"must be a number, a range or choices, got {param!r}")
    if isinstance(param, ScheduleSpec):
        raise fail(field, "a schedule object is only valid for *_schedule parameters")
    if isinstance(param, str):
        raise fail(field, f"must be a number, a range or choices, got {param!r}")
    if isinstance(param, ChoiceSpec):
        for i, choice in enumerate(param.choices):
            if isinstance(choice, bool) or not isinstance(choice, int | float):
                raise fail(f"{field}.choices.{i}", f"must be a number, got {choice!r}")
            _check_number(name, float(choice), f"{field}.choices.{i}")
    elif isinstance(param, RangeSpec):
        if param.include_zero and name not in ZERO_CHOICE_PARAMS:
            raise fail(f"{field}.include_zero", "only threshold and weight_decay may include 0")
        _check_number(name, param.low, f"{field}.low")
        _check_number(name, param.high, f"{field}.high")
        if sampler == "grid" and param.step is None:
            raise fail(field, "the grid sampler needs choices or a range with step")
        if name in CUTOFF_PARAMS and "log" not in param.model_fields_set and param.step is None:
            # cutoffs span decades (periods of steps to epochs): log scale unless told otherwise
            return param.model_copy(update={"log": True})
    else:
        _check_number(name, float(param), field)
    return param


def _check_number(name: str, value: float, field: str) -> None:
    low, low_ok, high, high_ok = _BOUNDS[name]
    ok_low = value > low or (low_ok and value == low)
    ok_high = value < high or (high_ok and value == high)
    if not (ok_low and ok_high):
        lo, hi = ("[" if low_ok else "("), ("]" if high_ok else ")")
        unit = ""
        if name in CUTOFF_PARAMS:
            unit = (
                " cycles per step (0.5 is Nyquist, the cutoff of the largest EMA rate that "
                "has one, 2*sqrt(2) - 2)"
            )
        raise fail(field, f"{value!r} is outside {lo}{low}, {high}{hi}{unit}")


def _check_bool_param(field: str, param: Any) -> Any:
    if isinstance(param, bool):
        return param
    if isinstance(param, ChoiceSpec):
        for i, choice in enumerate(param.choices):
            if not isinstance(choice, bool):
                raise fail(f"{field}.choices.{i}", f"must be true or false, got {choice!r}")
        return param
    raise fail(field, "must be true, false or {choices: [true, false]}")


def _check_string_param(field: str, param: Any, allowed: tuple[str, ...]) -> Any:
    one_of = ", ".join(allowed)
    if isinstance(param, ChoiceSpec):
        for i, choice in enumerate(param.choices):
            if not (isinstance(choice, str) and choice in allowed):
                raise fail(f"{field}.choices.{i}", f"must be one of {one_of}, got {choice!r}")
        return param
    if isinstance(param, str) and param in allowed:
        return param
    got = {RangeSpec: "a range", ScheduleSpec: "a schedule"}.get(type(param), repr(param))
    raise fail(field, f"must be one of {one_of} or {{choices: [...]}}, got {got}")


def _check_schedule_param(field: str, param: Any) -> Any:
    if isinstance(param, str):
        if param not in SCHEDULE_KINDS:
            raise fail(field, f"unknown schedule {param!r}; one of {', '.join(SCHEDULE_KINDS)}")
        return ScheduleSpec(kind=param)  # type: ignore[arg-type]
    if isinstance(param, ChoiceSpec):
        for i, choice in enumerate(param.choices):
            if choice not in SCHEDULE_KINDS:
                raise fail(
                    f"{field}.choices.{i}",
                    f"unknown schedule {choice!r}; one of {', '.join(SCHEDULE_KINDS)}",
                )
        return param
    if isinstance(param, ScheduleSpec):
        return param
    raise fail(field, "a schedule is a kind string, a schedule object or {choices: [kinds]}")


def _extent(param: Any) -> tuple[float, float]:
    """Smallest and largest value a numeric ParamSpec can take."""
    if isinstance(param, RangeSpec):
        return (0.0 if param.include_zero else param.low), param.high
    if isinstance(param, ChoiceSpec):
        values = [float(c) for c in param.choices]
        return min(values), max(values)
    return float(param), float(param)


def check_rate_or_cutoff(space: dict[str, Any]) -> None:
    """An EMA rate is given as the rate or as its cutoff, never both."""
    for cutoff, rate in CUTOFF_PARAMS.items():
        if cutoff in space and rate in space:
            raise fail(
                f"search_space.{cutoff}",
                f"give {rate} or {cutoff} (its cutoff in cycles per step), not both",
            )


def alpha_is_constant(space: dict[str, Any]) -> bool:
    """Whether every trial of the filter's space has a constant alpha (``alpha_schedule`` fixed
    to ``constant`` or only ``constant`` among its choices; unset means ``linear-epoch``)."""
    schedule = space.get("alpha_schedule")
    if isinstance(schedule, ScheduleSpec):
        return schedule.kind == "constant"
    if isinstance(schedule, ChoiceSpec):
        return all(choice == "constant" for choice in schedule.choices)
    return False


def _rate_extent(space: dict[str, Any], name: str) -> tuple[float, float] | None:
    """Smallest and largest rate ``name`` can take, given as a rate or as a cutoff."""
    if name in space:
        return _extent(space[name])
    if f"{name}_cutoff" in space:
        low, high = _extent(space[f"{name}_cutoff"])
        return cutoff_to_rate(low), cutoff_to_rate(high)  # monotone: lower cutoff, lower rate
    return None


def check_alpha_le_gamma(space: dict[str, Any]) -> None:
    """With a constant alpha, the filter's ``alpha <= gamma`` (rates, or equally cutoffs) must
    be possible for some sampled pair. Only then is the order a symmetry (two time-invariant
    stages commute); a scheduled alpha makes every pair a distinct, valid filter."""
    if not alpha_is_constant(space):
        return
    alpha, gamma = _rate_extent(space, "alpha"), _rate_extent(space, "gamma")
    if alpha is None or gamma is None:
        return
    if alpha[0] > gamma[1]:
        name = "alpha" if "alpha" in space else "alpha_cutoff"
        raise fail(
            f"search_space.{name}",
            f"a constant-alpha filter needs alpha <= gamma, but alpha >= {alpha[0]:.6g} > "
            f"gamma <= {gamma[1]:.6g} (as rates)",
        )
