"""Reads of a study's trials for the API and the CLI: progress, the best trial (or Pareto
front), a page of trials, each trial's public view (no FastAPI here, nothing written).

Reads that must scale to studies with many thousands of trials (progress counts, the best trial,
a page of trials) query Optuna's tables with SQLAlchemy Core through our session (the same
database) and load only the trials they return with ``storage.get_trial``.
"""

from __future__ import annotations

import math

from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.lifecycle.state import trial_error
from service.lifecycle.tables import ValueType as _ValueType
from service.lifecycle.tables import optuna_studies as _o_studies
from service.lifecycle.tables import optuna_trials as _o_trials
from service.lifecycle.tables import optuna_values as _o_values
from service.models import Study
from service.schemas import BestTrial, Budget, Progress, TrialPublic

__all__ = [
    "load_trials",
    "study_progress",
    "best_trials",
    "optuna_study_id",
    "trial_counts",
    "best_of",
    "trials_page",
    "budget",
    "trial_public",
    "trial_rates",
]

BULK_LOAD_FACTOR = 5  # a page of >= 1/5 of the matching trials loads them all (trials_page)


def load_trials(
    storage: BaseStorage, study: Study, states: tuple[TrialState, ...] | None = None
) -> list[FrozenTrial]:
    """The trials (all, or those in ``states``, filtered by the database) of the study's Optuna
    study, ordered by number ([] if it has none)."""
    if study.optuna_study_name is None:
        return []
    try:
        optuna_id = storage.get_study_id_from_name(study.optuna_study_name)
    except KeyError:
        return []
    trials = storage.get_all_trials(optuna_id, deepcopy=False, states=states)
    return sorted(trials, key=lambda t: t.number)


def _count(trials: list[FrozenTrial], states: tuple[TrialState, ...]) -> int:
    return sum(1 for t in trials if t.state in states)


def study_progress(trials: list[FrozenTrial]) -> Progress:
    """Trial counts by state (what ``bnn-tune status`` prints)."""
    return Progress(
        n_complete=_count(trials, (TrialState.COMPLETE,)),
        n_pruned=_count(trials, (TrialState.PRUNED,)),
        n_failed=_count(trials, (TrialState.FAIL,)),
        n_running=_count(trials, (TrialState.RUNNING,)),
        n_waiting=_count(trials, (TrialState.WAITING,)),
        n_total=len(trials),
    )


def optuna_study_id(session: Session, study: Study) -> int | None:
    """The id of the study's Optuna study (None if it has none)."""
    if study.optuna_study_name is None:
        return None
    name = _o_studies.c.study_name == study.optuna_study_name
    return session.scalar(select(_o_studies.c.study_id).where(name))


def trial_counts(session: Session, optuna_id: int | None) -> Progress:
    """Trial counts by state with one ``GROUP BY state`` (all zero without an Optuna study)."""
    if optuna_id is None:
        return Progress()
    rows = session.execute(
        select(_o_trials.c.state, func.count())
        .where(_o_trials.c.study_id == optuna_id)
        .group_by(_o_trials.c.state)
    ).all()
    counts: dict[TrialState, int] = dict(rows)
    return Progress(
        n_complete=counts.get(TrialState.COMPLETE, 0),
        n_pruned=counts.get(TrialState.PRUNED, 0),
        n_failed=counts.get(TrialState.FAIL, 0),
        n_running=counts.get(TrialState.RUNNING, 0),
        n_waiting=counts.get(TrialState.WAITING, 0),
        n_total=sum(counts.values()),
    )


def best_of(
    session: Session, storage: BaseStorage, optuna_id: int | None, directions: list[str]
) -> list[BestTrial]:
    """:func:`best_trials` of the whole study without loading every trial.

    Single objective: the COMPLETE trial with the best finite value (lowest number on ties),
    found in SQL. Multi-objective: the Pareto front of the COMPLETE trials (loaded, only those).
    """
    if optuna_id is None:
        return []
    if len(directions) > 1:
        done = storage.get_all_trials(optuna_id, deepcopy=False, states=(TrialState.COMPLETE,))
        return best_trials(done, directions)
    value = _o_values.c.value
    trial_id = session.scalar(
        select(_o_trials.c.trial_id)
        .join(_o_values, _o_values.c.trial_id == _o_trials.c.trial_id)
        .where(
            _o_trials.c.study_id == optuna_id,
            _o_trials.c.state == TrialState.COMPLETE,
            _o_values.c.objective == 0,
            _o_values.c.value_type == _ValueType.FINITE,
            value.is_not(None),
        )
        .order_by(
            value.desc() if directions[0] == "maximize" else value.asc(),
            _o_trials.c.number,
            _o_trials.c.trial_id,
        )
        .limit(1)
    )
    if trial_id is None:
        return []
    best = best_trials([storage.get_trial(trial_id)], directions)
    if not best:  # a NaN stored as FINITE sorts first on PostgreSQL: decide in Python then
        done = storage.get_all_trials(optuna_id, deepcopy=False, states=(TrialState.COMPLETE,))
        return best_trials(done, directions)
    return best


def trials_page(
    session: Session,
    storage: BaseStorage,
    optuna_id: int | None,
    *,
    state: TrialState | None = None,
    skip: int = 0,
    limit: int = 100,
) -> tuple[list[FrozenTrial], int]:
    """One page of trials by number (all states, or ``state``) and the count of all of them.

    The page's trial ids come from SQL (``ORDER BY number LIMIT OFFSET``); only those trials are
    loaded, each with ``storage.get_trial``. A page holding more than 1/:data:`BULK_LOAD_FACTOR`
    of the matching trials loads them all in one go instead (``get_trial`` costs about 5-10
    times more per trial than ``get_all_trials``' batched loads), so it is never slower than
    loading the whole study.
    """
    if optuna_id is None:
        return [], 0
    query = select(_o_trials.c.trial_id).where(_o_trials.c.study_id == optuna_id)
    if state is not None:
        query = query.where(_o_trials.c.state == state)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if skip >= count:
        return [], count
    if min(limit, count - skip) * BULK_LOAD_FACTOR >= count:
        states = None if state is None else (state,)
        trials = storage.get_all_trials(optuna_id, deepcopy=False, states=states)
        trials = sorted(trials, key=lambda t: t.number)  # stable: by number, then trial id
        return trials[skip : skip + limit], count
    order = (_o_trials.c.number, _o_trials.c.trial_id)
    ids = session.scalars(query.order_by(*order).offset(skip).limit(limit)).all()
    return [storage.get_trial(trial_id) for trial_id in ids], count


def budget(study: Study) -> Budget:
    return Budget(
        n_trials=study.n_trials,
        n_claimed=study.n_claimed,
        n_remaining=max(study.n_trials - study.n_claimed, 0),
    )


def best_trials(trials: list[FrozenTrial], directions: list[str]) -> list[BestTrial]:
    """Single objective: [best] (or []); multi-objective: the Pareto front."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    done = [t for t in done if all(math.isfinite(v) for v in t.values)]
    if not done:
        return []
    optuna_dirs = [StudyDirection[d.upper()] for d in directions]
    if len(directions) == 1:
        pick = max if directions[0] == "maximize" else min
        front = [pick(done, key=lambda t: t.values[0])]
    else:
        from optuna.study._multi_objective import _get_pareto_front_trials_by_trials

        front = _get_pareto_front_trials_by_trials(done, optuna_dirs)
    return [
        BestTrial(number=t.number, values=list(t.values), params=t.params, rates=trial_rates(t))
        for t in front
    ]


def trial_rates(trial: FrozenTrial) -> dict[str, float]:
    """The EMA rates the worker derived from the trial's sampled cutoffs (user attr
    ``rates``, see ``worker.objective``); {} when it sampled rates directly."""
    rates = trial.user_attrs.get("rates")
    if not isinstance(rates, dict):
        return {}
    return {
        str(name): float(value)
        for name, value in rates.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def trial_public(trial: FrozenTrial) -> TrialPublic:
    """The API view of one Optuna trial (epochs/error from user_attrs, retries from attrs)."""
    user_attrs = dict(trial.user_attrs)
    epochs = user_attrs.pop("epochs", None)
    user_attrs.pop("error", None)
    error = trial_error(trial)
    start, end = trial.datetime_start, trial.datetime_complete
    retry_of = trial.system_attrs.get("failed_trial", user_attrs.get("retry_of"))
    history = trial.system_attrs.get("retry_history", user_attrs.get("retry_history", []))
    return TrialPublic(
        number=trial.number,
        state=trial.state.name,
        params=trial.params,
        values=list(trial.values) if trial.values is not None else None,
        datetime_start=start,
        datetime_complete=end,
        duration_s=(end - start).total_seconds() if start and end else None,
        epochs=epochs if isinstance(epochs, list) else [],
        intermediate_values=dict(trial.intermediate_values),
        error=str(error) if error is not None else None,
        retry_of=retry_of if isinstance(retry_of, int) else None,
        retry_history=[h for h in history if isinstance(h, int)],
        rates=trial_rates(trial),
        user_attrs=user_attrs,
    )
