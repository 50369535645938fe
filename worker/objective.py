"""Study spec + Optuna trial -> ``bnn_core.config.TrainConfig``; samplers and pruners of a spec.

This is the one place where Optuna's names meet ``bnn_core``'s. Parameter names in Optuna are the
spec's names (``gamma``, ``threshold``, ``alpha_schedule`` ...); ``include_zero`` ranges add a
categorical ``<name>_is_zero`` parameter first. Fixed values are not sampled; they are recorded in
the user attr ``fixed_params`` so that the dashboard shows them next to the sampled ones.

EMA rates given as cutoffs (``gamma_cutoff``, ``sigma_cutoff``, ``alpha_cutoff``, cycles per
step) are sampled as such (the Optuna parameter is the cutoff, log-scaled when the spec says
so) and converted to the rate by ``bnn_core.filters.cutoff_to_rate`` in
:func:`build_optimizer_config`; the derived rates are recorded in the user attr ``rates``
(``{"gamma": 0.0012, ...}``), so a trial shows both.

The ``filter`` family's ``alpha <= gamma`` holds only where it is a symmetry,
``bnn_core.filters.order_is_symmetric`` (a constant alpha: the two stages commute, so a swapped
pair trains identically). ``alpha_schedule`` is sampled first; with a constant alpha, ``gamma``
is sampled next and the range of ``alpha`` is clipped to ``alpha <= gamma`` (compared as rates;
a cutoff bound is the cutoff of that rate, both being monotone), and a fixed alpha raises
gamma's ``low`` instead. When no valid alpha exists (gamma below alpha's lowest value, or an
alpha choice above gamma) :class:`InfeasibleParams` is raised and the worker ends the trial
PRUNED without training, with user attr ``error = "alpha > gamma"``. With a scheduled alpha
every pair is a different filter: both rates are sampled over their whole ranges and trained.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import optuna
from optuna.trial import BaseTrial

from bnn_core.config import FAMILY_DEFAULTS, OptimizerConfig, Schedule, TrainConfig
from bnn_core.data import split_indices
from bnn_core.filters import (
    MAX_RATE_WITH_CUTOFF,
    cutoff_to_rate,
    filter_summary,
    order_is_symmetric,
    rate_to_cutoff,
)
from service.spec import (
    BOOL_PARAMS,
    SCHEDULE_PARAMS,
    STRING_PARAMS,
    ChoiceSpec,
    RangeSpec,
    ScheduleSpec,
    StudySpec,
)
from service.spec.cutoffs import CUTOFF_PARAMS
from service.vocabulary import PRUNERS, SAMPLERS

__all__ = [
    "InfeasibleParams",
    "suggest_params",
    "build_optimizer_config",
    "derived_rates",
    "steps_per_epoch",
    "filter_attr",
    "build_train_config",
    "build_sampler",
    "build_pruner",
    "claim_seed",
    "grid_search_space",
    "train_config_dict",
]


class InfeasibleParams(ValueError):
    """The sampled values violate a constraint of the family (the trial cannot train)."""


def _suggest_range(trial: BaseTrial, name: str, spec: RangeSpec, **bounds: float) -> float:
    low = bounds.get("low", spec.low)
    high = bounds.get("high", spec.high)
    if spec.include_zero and trial.suggest_categorical(f"{name}_is_zero", [True, False]):
        return 0.0
    if low > high:
        raise InfeasibleParams(f"{name}: empty range [{low}, {high}]")
    if low == high:
        return low
    return trial.suggest_float(name, low, high, log=spec.log, step=spec.step)


def _suggest_one(trial: BaseTrial, name: str, spec: Any, fixed: dict[str, Any]) -> Any:
    if isinstance(spec, RangeSpec):
        return _suggest_range(trial, name, spec)
    if isinstance(spec, ChoiceSpec):
        return trial.suggest_categorical(name, list(spec.choices))
    if isinstance(spec, ScheduleSpec):
        fixed[name] = spec.model_dump()
        return spec
    fixed[name] = spec
    return spec


def _rate(name: str, value: Any) -> float:
    """The EMA rate of a sampled ``name`` (a rate, or a ``<rate>_cutoff``)."""
    return cutoff_to_rate(float(value)) if name in CUTOFF_PARAMS else float(value)


def _in_domain_of(name: str, rate: float) -> float | None:
    """``rate`` as a bound for parameter ``name``: itself, or its cutoff for a cutoff parameter
    (None: a rate above ``MAX_RATE_WITH_CUTOFF``, higher than any cutoff's rate)."""
    if name not in CUTOFF_PARAMS:
        return rate
    return rate_to_cutoff(rate) if rate <= MAX_RATE_WITH_CUTOFF else None


def _rate_name(space: dict[str, Any], rate: str) -> str | None:
    """The parameter giving ``rate`` in ``space``: the rate itself or its cutoff (never both)."""
    for name in (rate, f"{rate}_cutoff"):
        if name in space:
            return name
    return None


def _suggest_filter(
    trial: BaseTrial, space: dict[str, Any], fixed: dict[str, Any]
) -> dict[str, Any]:
    """alpha_schedule first; with a constant alpha, gamma then alpha clipped to alpha <= gamma
    (see the module docstring)."""
    values: dict[str, Any] = {}
    if "alpha_schedule" in space:
        values["alpha_schedule"] = _suggest_one(
            trial, "alpha_schedule", space["alpha_schedule"], fixed
        )
    if not order_is_symmetric(build_optimizer_config("filter", values)):
        return values  # a scheduled alpha: every (alpha, gamma) pair is its own filter
    defaults = FAMILY_DEFAULTS["filter"]
    alpha_name, gamma_name = _rate_name(space, "alpha"), _rate_name(space, "gamma")
    alpha = space[alpha_name] if alpha_name else None
    gamma = space[gamma_name] if gamma_name else None
    gamma_rate = defaults["gamma"]
    if gamma_name is not None:
        if isinstance(gamma, RangeSpec) and alpha_name and isinstance(alpha, int | float):
            low = _in_domain_of(gamma_name, _rate(alpha_name, alpha))
            low = float("inf") if low is None else max(gamma.low, low)
            if low > gamma.high:
                raise InfeasibleParams("alpha > gamma")
            values[gamma_name] = _suggest_range(trial, gamma_name, gamma, low=low)
        else:
            values[gamma_name] = _suggest_one(trial, gamma_name, gamma, fixed)
        gamma_rate = _rate(gamma_name, values[gamma_name])
    alpha_rate = defaults["alpha"]
    if alpha_name is not None:
        if isinstance(alpha, RangeSpec):
            high = _in_domain_of(alpha_name, gamma_rate)
            high = alpha.high if high is None else min(alpha.high, high)
            if alpha.low > high:
                raise InfeasibleParams("alpha > gamma")
            values[alpha_name] = _suggest_range(trial, alpha_name, alpha, high=high)
        else:
            values[alpha_name] = _suggest_one(trial, alpha_name, alpha, fixed)
        alpha_rate = _rate(alpha_name, values[alpha_name])
    if alpha_rate > gamma_rate * (1.0 + 1e-12):  # a cutoff bound round-trips to its rate
        raise InfeasibleParams("alpha > gamma")
    return values


def derived_rates(values: dict[str, Any]) -> dict[str, float]:
    """The EMA rates of the cutoffs among ``values``: ``{"gamma": cutoff_to_rate(...)}``."""
    return {
        CUTOFF_PARAMS[name]: cutoff_to_rate(float(value))
        for name, value in values.items()
        if name in CUTOFF_PARAMS
    }


def suggest_params(trial: BaseTrial, spec: StudySpec) -> dict[str, Any]:
    """Sample (or take fixed) every search-space parameter; returns ``name -> value`` with
    schedule parameters as :class:`ScheduleSpec`/kind strings and cutoffs as cutoffs. Fixed
    values go to the user attr ``fixed_params``, the rates derived from cutoffs to ``rates``.
    Raises :class:`InfeasibleParams` for an unsatisfiable constant-alpha filter sample."""
    space = spec.space
    fixed: dict[str, Any] = {}
    values: dict[str, Any] = {}
    if spec.optimizer == "filter":
        values.update(_suggest_filter(trial, space, fixed))
    for name, param in space.items():
        if name not in values:
            values[name] = _suggest_one(trial, name, param, fixed)
    if fixed:
        trial.set_user_attr("fixed_params", fixed)
    if rates := derived_rates(values):
        trial.set_user_attr("rates", rates)
    return values


def _schedule(value: Any) -> Schedule:
    if isinstance(value, ScheduleSpec):
        return Schedule(**value.model_dump())
    if isinstance(value, str):
        return Schedule(kind=value)  # type: ignore[arg-type]
    raise TypeError(f"not a schedule: {value!r}")


def build_optimizer_config(family: str, values: dict[str, Any]) -> OptimizerConfig:
    """``OptimizerConfig(name=family, **values)``; unlisted fields keep their family's defaults.
    Schedules become ``Schedule``, bools ``bool``, string parameters (``latent_lr_scaling``)
    ``str``, a cutoff the rate ``bnn_core.filters.cutoff_to_rate`` gives, everything else
    ``float``."""
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name in CUTOFF_PARAMS:
            kwargs[CUTOFF_PARAMS[name]] = cutoff_to_rate(float(value))
        elif name in SCHEDULE_PARAMS:
            kwargs[name] = _schedule(value)
        elif name in BOOL_PARAMS:
            kwargs[name] = bool(value)
        elif name in STRING_PARAMS:
            kwargs[name] = str(value)
        else:
            kwargs[name] = float(value)
    return OptimizerConfig(name=family, **kwargs)


def build_train_config(
    spec: StudySpec,
    trial: BaseTrial,
    *,
    device: str = "cpu",
    data_root: str | None = None,
    download: bool = False,
    compile: bool = False,
) -> TrainConfig:
    """Sample the trial's parameters and build its ``TrainConfig`` (``device`` is already
    resolved by the worker; ``data_root`` is the worker's data root, the spec's ``data_subdir``
    a folder name under it; ``download`` is the worker's choice, never the spec's).
    On CUDA the images are channels_last (a layout choice: same results, faster convs);
    ``compile`` is the worker's choice (``WorkerSettings.compile``)."""
    values = suggest_params(trial, spec)
    return TrainConfig(
        model=spec.model,
        dataset=spec.dataset,
        data_root=data_root,
        data_subdir=spec.data_subdir,
        download=download,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        optimizer=build_optimizer_config(spec.optimizer, values),
        seed=spec.seed,
        device=device,
        precision=spec.precision,
        channels_last=device.startswith("cuda"),
        compile=compile,
        max_train_samples=spec.max_train_samples,
        eval_protocol=spec.eval_protocol,
    )


def steps_per_epoch(config: TrainConfig, train_images: int) -> int:
    """Optimizer steps per epoch of ``config`` on a training set of ``train_images`` images:
    full batches of its eval_protocol's training split (``bnn_core.train.evaluation_split``),
    at least one."""
    if config.eval_protocol == "test":
        n_train = min(train_images, config.max_train_samples or train_images)
    else:
        train_idx, _ = split_indices(
            train_images, config.val_fraction, config.seed, config.max_train_samples
        )
        n_train = len(train_idx)
    return max(1, n_train // config.batch_size)


def filter_attr(config: TrainConfig, train_images: int) -> dict[str, Any] | None:
    """The trial's filter view, stored as user attr ``filter``: ``bnn_core.filters.filter_summary``
    of its optimizer at the first step (JSON-able, under 4 KB); None for a family without one
    (latent Adam, latent SGD without weight decay) and for a latent SGD whose equivalent filter
    does not exist (complex roots, ``lr * weight_decay`` outside (0, 1]: ``ValueError``)."""
    try:
        return filter_summary(
            config.optimizer, steps_per_epoch(config, train_images), epochs=config.epochs
        )
    except ValueError:
        if config.optimizer.name != "latent-sgd":
            raise
        return None


def train_config_dict(config: TrainConfig) -> dict[str, Any]:
    """JSON-ready dict of a TrainConfig (stored as the trial's user attr ``train_config``)."""
    return asdict(config)


def grid_search_space(spec: StudySpec) -> dict[str, list[Any]]:
    """The grid of a spec whose every parameter is fixed, a choice or a stepped range."""
    grid: dict[str, list[Any]] = {}
    for name, param in spec.space.items():
        if isinstance(param, ChoiceSpec):
            grid[name] = list(param.choices)
        elif isinstance(param, RangeSpec):
            if param.step is None:
                raise ValueError(
                    f"the grid sampler needs choices, fixed values or stepped ranges; "
                    f"search_space.{name} is a continuous range"
                )
            count = int(round((param.high - param.low) / param.step))
            grid[name] = [param.low + i * param.step for i in range(count + 1)]
            if param.include_zero:
                grid[f"{name}_is_zero"] = [True, False]
        # fixed values and fixed schedules are not sampled
    if not grid:
        raise ValueError("the grid sampler needs at least one choice or stepped range")
    return grid


class BudgetGridSampler(optuna.samplers.GridSampler):
    """GridSampler that does not call ``study.stop()`` when the grid is exhausted (that only
    works inside ``optimize``; with ask/tell it raises). The study budget ends the search; extra
    trials beyond the grid re-run random grid points."""

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def claim_seed(seed: int, index: int) -> int:
    """The sampler seed of a study's ``index``-th claim (0, 1, ...) when its spec says
    ``sampler.seed = seed``: the same for every rerun, different for every claim (so workers
    that share the spec's seed do not draw the same points). 32 bits, as numpy takes."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def build_sampler(spec: StudySpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The spec's sampler (seeded with ``seed`` when given, else the spec's seed). TPE is
    multivariate with ``constant_liar`` so that parallel workers do not all sample the same
    point while the first trials run."""
    name = spec.sampler.name
    seed = spec.sampler.seed if seed is None else seed
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        if spec.is_multi_objective:
            raise ValueError("the cmaes sampler supports a single objective; use tpe")
        if importlib.util.find_spec("cmaes") is None:
            raise ValueError("the cmaes sampler needs the 'cmaes' package: pip install cmaes")
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "grid":
        return BudgetGridSampler(grid_search_space(spec), seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(
            seed=seed, scramble=True, warn_independent_sampling=False
        )
    raise ValueError(f"unknown sampler {name!r}; one of {', '.join(SAMPLERS)}")


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner over per-epoch val_accuracy; never prunes a multi-objective study."""
    pruner = spec.pruner
    if spec.is_multi_objective or pruner.name == "none":
        return optuna.pruners.NopPruner()
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials,
            n_warmup_steps=pruner.n_warmup_steps,
            interval_steps=pruner.interval_steps,
        )
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=spec.epochs,
            reduction_factor=pruner.reduction_factor,
        )
    raise ValueError(f"unknown pruner {pruner.name!r}; one of {', '.join(PRUNERS)}")
