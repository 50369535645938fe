"""Warm start: a finished study's COMPLETE trials inform a new study's sampler without using the
new study's budget (spec ``warm_start: {study: <id>}``; the API checked the source when the
study was created and stored its id).

Why the source trials are not copied into the new Optuna study (``study.add_trials``): there they
would be trials of the new study -- counted in its progress, its best trial, its "every trial
failed" rule, its leaked-claim count and its optuna-dashboard history, each of which would then
need an exception. Instead the sampler sees them: :class:`WarmStartSampler` hands the wrapped
sampler a view of the study whose trials are the source's (those that fit the new search space,
re-expressed in its distributions) followed by the study's own. TPE (and any sampler that reads
the history) learns from both; CMA-ES takes them as its ``source_trials`` (warm-started CMA-ES).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine, select

from service.db import session_scope
from service.models import Study
from service.spec import ChoiceSpec, RangeSpec, StudySpec

__all__ = ["WarmStartSampler", "source_trials", "fitting_trials", "warm_sampler"]

logger = logging.getLogger(__name__)


def _distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """The distributions :func:`worker.objective.suggest_params` samples each parameter from
    (a fixed value, or a range with ``low == high``, is not sampled)."""
    out: dict[str, BaseDistribution] = {}
    for name, param in spec.space.items():
        if isinstance(param, RangeSpec):
            if param.include_zero:
                out[f"{name}_is_zero"] = CategoricalDistribution([True, False])
            if param.low < param.high:
                out[name] = FloatDistribution(
                    param.low, param.high, log=param.log, step=param.step
                )
        elif isinstance(param, ChoiceSpec):
            out[name] = CategoricalDistribution(list(param.choices))
    return out


def _fits(distribution: BaseDistribution, value: Any) -> bool:
    if isinstance(distribution, FloatDistribution):
        return isinstance(value, int | float) and distribution.low <= value <= distribution.high
    try:
        return distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def fitting_trials(spec: StudySpec, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The COMPLETE, finite ``trials`` whose every parameter lies in ``spec``'s search space,
    re-created with its distributions and numbered ``-n .. -1``: before the new study's own
    (0, 1, ...) and never equal to one (TPE's constant liar leaves out the trial being sampled
    by its number)."""
    target = _distributions(spec)
    out: list[FrozenTrial] = []
    for trial in trials:
        if trial.state != TrialState.COMPLETE or trial.values is None:
            continue
        if len(trial.values) != len(spec.objectives) or not all(map(math.isfinite, trial.values)):
            continue
        params = trial.params
        if not params or any(
            n not in target or not _fits(target[n], v) for n, v in params.items()
        ):
            continue
        warm = optuna.trial.create_trial(
            values=list(trial.values),
            params=dict(params),
            distributions={name: target[name] for name in params},
            intermediate_values=dict(trial.intermediate_values),
            user_attrs={"warm_start_of": trial.number},
        )
        out.append(warm)
    for index, warm in enumerate(out):
        warm.number = index - len(out)
    return out


def source_trials(engine: Engine, storage: BaseStorage, spec: StudySpec) -> list[FrozenTrial]:
    """The source study's trials that fit ``spec`` ([] when it has no warm start, or its
    source or the source's Optuna study is gone: then the study simply starts cold)."""
    if spec.warm_start is None:
        return []
    ref = spec.warm_start.study
    where = Study.id == ref if isinstance(ref, int) else Study.name == ref
    with session_scope(engine) as session:
        name = session.scalar(select(Study.optuna_study_name).where(where))
    if name is None:
        logger.warning("study %s: warm start source %r is gone; starting cold", spec.name, ref)
        return []
    try:
        optuna_id = storage.get_study_id_from_name(name)
    except KeyError:
        logger.warning("study %s: warm start source %r has no trials; cold", spec.name, name)
        return []
    done = storage.get_all_trials(optuna_id, deepcopy=False, states=(TrialState.COMPLETE,))
    trials = fitting_trials(spec, sorted(done, key=lambda t: t.number))
    logger.info("study %s: warm start from %d trials of %r", spec.name, len(trials), name)
    return trials


class _WarmStudy:
    """A study whose trial history starts with the warm-start trials (what samplers read);
    everything else is the study's own."""

    def __init__(self, study: optuna.Study, warm: list[FrozenTrial]) -> None:
        self._study = study
        self._warm = warm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        own = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        warm = [t for t in self._warm if states is None or t.state in states]
        return warm + own

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class WarmStartSampler(BaseSampler):
    """``base`` sampling as if the warm-start trials were the study's first trials."""

    def __init__(self, base: BaseSampler, warm: list[FrozenTrial]) -> None:
        self.base = base
        self.warm = warm

    def _view(self, study: optuna.Study) -> Any:
        return _WarmStudy(study, self.warm)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.base.sample_relative(self._view(study), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.base.sample_independent(
            self._view(study), trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def warm_sampler(
    spec: StudySpec, base: BaseSampler, warm: list[FrozenTrial], seed: int | None
) -> BaseSampler:
    """``base`` informed by ``warm``: CMA-ES rebuilt with them as ``source_trials``, any other
    sampler wrapped in :class:`WarmStartSampler`; ``base`` itself when there are none."""
    if not warm:
        return base
    if isinstance(base, optuna.samplers.CmaEsSampler):
        return optuna.samplers.CmaEsSampler(
            seed=seed, source_trials=warm, warn_independent_sampling=False
        )
    return WarmStartSampler(base, warm)
