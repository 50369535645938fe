"""Study operations over our table and the study's Optuna storage (no FastAPI here).

The API routes and the CLI (``bnn-tune status``) share these. Functions take a session and never
commit, except :func:`create_study` and :func:`delete_study`, which write Optuna's study (on its
own connection) between two commits of ours.

Reads that must scale to studies with many thousands of trials (progress counts, the best trial,
a page of trials) query Optuna's tables with SQLAlchemy Core through our session (the same
database) and load only the trials they return with ``storage.get_trial``.
"""

from __future__ import annotations

import math
import warnings

import optuna
import yaml
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard import save_note
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import ConflictError, InvalidSpecError, NotFoundError
from service.lifecycle import RESUMABLE, ResumeRefused, request_stop, resume, transition
from service.lifecycle import make_storage as make_optuna_storage
from service.lifecycle.state import trial_error
from service.lifecycle.tables import ValueType as _ValueType
from service.lifecycle.tables import optuna_studies as _o_studies
from service.lifecycle.tables import optuna_trials as _o_trials
from service.lifecycle.tables import optuna_values as _o_values
from service.models import Study
from service.schemas import BestTrial, Budget, Progress, TrialPublic
from service.spec import ChoiceSpec, RangeSpec, StudySpec, stored_spec

__all__ = [
    "make_optuna_storage",
    "create_study",
    "get_study",
    "list_studies",
    "stop_study",
    "resume_study",
    "delete_study",
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
    "spec_of",
]


BULK_LOAD_FACTOR = 5  # a page of >= 1/5 of the matching trials loads them all (trials_page)


def spec_of(study: Study) -> StudySpec:
    """The stored spec, validated again (it was valid when stored)."""
    return stored_spec(study.spec)


def create_study(
    session: Session, storage: BaseStorage, spec: StudySpec, *, owner: str | None = None
) -> Study:
    """Insert the row, then create its Optuna study, named after the spec (directions,
    metric names, the spec as the study's note in optuna-dashboard).

    Two transactions (SQLite allows one writer, and Optuna writes on its own connection): the
    row is committed first and deleted again if the Optuna study cannot be created. A worker
    that sees the row within that window simply finds no Optuna study yet and retries later.
    """
    existing = session.execute(
        select(Study.id, Study.status).where(Study.name == spec.name)
    ).first()
    if existing is not None:
        study_id, status = existing
        hint = (
            f"; `bnn-tune delete {study_id} --purge` frees the name"
            if status == "deleted"
            else f"; `bnn-tune resume {study_id}` runs it again"
            if status in RESUMABLE
            else ""
        )
        raise ConflictError(
            f"a study named {spec.name!r} already exists (id {study_id}, {status}){hint}"
        )
    if spec.warm_start is not None:
        spec = spec.model_copy(
            update={
                "warm_start": spec.warm_start.model_copy(
                    update={"study": warm_start_source(session, spec).id}
                )
            }
        )
    study = Study(
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        status="queued",
        owner=owner or spec.owner,
        n_trials=spec.n_trials,
        n_claimed=0,
        optuna_study_name=spec.name,
    )
    session.add(study)
    try:
        session.flush()
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ConflictError(f"a study named {spec.name!r} already exists") from exc
    try:
        _create_optuna_study(storage, study, spec)
    except Exception:
        session.delete(study)
        session.commit()
        raise
    return study


WARM_START_SAMPLERS = ("tpe", "cmaes")  # the samplers that learn from earlier trials


def warm_start_source(session: Session, spec: StudySpec) -> Study:
    """The study ``spec.warm_start`` names (a name or an id), checked: it exists, is finished
    (completed or stopped) with COMPLETE trials, has the same family, objectives and sampled
    parameters, and ``spec``'s sampler learns from history; else a 422 naming
    ``warm_start.study`` (or ``sampler.name``). Stored specs name it by id (never reused)."""
    assert spec.warm_start is not None
    ref = spec.warm_start.study

    def refuse(message: str, field: str = "warm_start.study") -> InvalidSpecError:
        return InvalidSpecError([{"field": field, "message": message, "type": "value_error"}])

    if spec.sampler.name not in WARM_START_SAMPLERS:
        raise refuse(
            f"sampler {spec.sampler.name!r} does not learn from earlier trials; warm start "
            f"needs one of {', '.join(WARM_START_SAMPLERS)}",
            "sampler.name",
        )
    where = Study.id == ref if isinstance(ref, int) else Study.name == ref
    source = session.scalars(select(Study).where(where, Study.status != "deleted")).first()
    if source is None:
        raise refuse(f"no study {ref!r} to warm start from")
    if source.status not in ("completed", "stopped"):
        raise refuse(f"study {ref!r} is {source.status}; warm start needs a finished study")
    try:
        other = spec_of(source)
    except ValueError as exc:
        raise refuse(f"study {ref!r} has a spec that cannot be read: {exc}") from exc
    if other.optimizer != spec.optimizer:
        raise refuse(f"study {ref!r} tunes {other.optimizer}, not {spec.optimizer}")
    if other.objectives != spec.objectives:
        raise refuse(f"study {ref!r} has objectives {other.objectives}, not {spec.objectives}")
    extra = sorted(_sampled(other) - _sampled(spec))
    if extra:  # its trials would not fit this search space
        raise refuse(f"study {ref!r} also samples {', '.join(extra)}, which this study does not")
    counts = trial_counts(session, optuna_study_id(session, source))
    if counts.n_complete == 0:
        raise refuse(f"study {ref!r} has no COMPLETE trial")
    return source


def _sampled(spec: StudySpec) -> set[str]:
    """The parameters a spec samples (ranges and choices, not fixed values)."""
    return {
        name for name, param in spec.space.items() if isinstance(param, RangeSpec | ChoiceSpec)
    }


def _create_optuna_study(storage: BaseStorage, study: Study, spec: StudySpec) -> None:
    directions = [StudyDirection[d.upper()] for d in spec.directions]
    assert study.optuna_study_name is not None
    try:
        optuna_id = storage.create_new_study(directions, study.optuna_study_name)
    except optuna.exceptions.DuplicatedStudyError as exc:
        raise ConflictError(f"Optuna study {study.optuna_study_name!r} already exists") from exc
    try:
        storage.set_study_user_attr(optuna_id, "bnn_tune_study_id", study.id)
        for key, value in _dashboard_attrs(spec).items():  # optuna-dashboard lists user attrs
            storage.set_study_user_attr(optuna_id, key, value)
        optuna_study = optuna.Study(study.optuna_study_name, storage)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still the API
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna_study.set_metric_names(list(spec.objectives))
        save_note(optuna_study, spec_note(study.id, spec))
    except Exception:
        storage.delete_study(optuna_id)
        raise


def _dashboard_attrs(spec: StudySpec) -> dict[str, str]:
    """The facts optuna-dashboard's study page lists next to the study's name."""
    return {
        "name": spec.name,
        "optimizer": spec.optimizer,
        "model": spec.model,
        "dataset": spec.dataset,
    }


def spec_note(study_id: int, spec: StudySpec) -> str:
    """The study's note in optuna-dashboard (Markdown): what it is and its spec as YAML."""
    body = yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
    about = f"{spec.description}\n\n" if getattr(spec, "description", None) else ""
    return (
        f"## {spec.name}\n\n{about}BNN-Tune study {study_id}: {spec.optimizer} on "
        f"{spec.model}/{spec.dataset}, {spec.n_trials} trials of {spec.epochs} epochs.\n\n"
        f"```yaml\n{body}```\n"
    )


def get_study(session: Session, study_id: int, *, include_deleted: bool = False) -> Study:
    """Load one study or raise :class:`NotFoundError` (deleted studies count as missing)."""
    study = session.get(Study, study_id)
    if study is None or (study.status == "deleted" and not include_deleted):
        raise NotFoundError(f"study {study_id} not found")
    return study


def list_studies(
    session: Session, *, status: str | None = None, skip: int = 0, limit: int = 100
) -> tuple[list[Study], int]:
    """A page of studies (newest first) and the total count; deleted ones only if asked."""
    query = select(Study)
    query = query.where(Study.status == status if status else Study.status != "deleted")
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Study.id.desc()).offset(skip).limit(limit)).all()
    return list(rows), count


def stop_study(session: Session, study: Study) -> Study:
    """Ask workers to stop (:func:`service.lifecycle.request_stop`); idempotent."""
    moved = request_stop(session, study.id)
    session.refresh(study)
    if moved or study.status in ("stopping", "stopped"):
        return study
    raise ConflictError(f"study {study.id} is already {study.status}")


def resume_study(
    session: Session, study: Study, add_trials: int | None, max_trials: int | None
) -> int:
    """Queue a stopped, failed or completed study again (:func:`service.lifecycle.resume`
    decides the budget); the trials added. 409 for another status or a study whose Optuna
    study is gone; 422 (``add_trials``) past the server's ``max_trials``."""
    if study.status in RESUMABLE and optuna_study_id(session, study) is None:
        raise ConflictError(
            f"study {study.id} cannot be resumed: its Optuna study "
            f"{study.optuna_study_name!r} is gone; submit the spec again"
        )
    if add_trials is not None and max_trials is not None:
        if study.n_trials + add_trials > max_trials:
            raise InvalidSpecError(
                [
                    {
                        "field": "add_trials",
                        "message": f"{study.n_trials} + {add_trials} trials exceed "
                        f"max_trials={max_trials}",
                        "type": "value_error",
                    }
                ]
            )
    try:
        added = resume(session, study, add_trials)
    except ResumeRefused as exc:
        raise ConflictError(str(exc)) from exc
    session.refresh(study)
    return added


def delete_study(
    session: Session, storage: BaseStorage, study: Study, *, purge: bool = False
) -> Study:
    """Delete a study; refused while it is running trials.

    Both ways remove its Optuna study (its trials), so optuna-dashboard no longer lists it.
    Without ``purge`` our row stays, status ``deleted`` (name, spec, budget, times, error:
    ``?status=deleted`` lists it) and keeps the name taken; ``purge`` deletes the row too and
    frees the name. Study ids are never reused either way.
    """
    if study.status in ("running", "stopping"):
        raise ConflictError(f"study {study.id} is {study.status}; stop it first")
    optuna_id = optuna_study_id(session, study)
    running = trial_counts(session, optuna_id).n_running
    if running:
        raise ConflictError(f"study {study.id} has {running} running trial(s); stop it first")
    if study.status != "deleted":
        moved = transition(session, study.id, "deleted")
        session.refresh(study)
        if not moved:
            raise ConflictError(f"study {study.id} is {study.status}; stop it first")
    session.commit()  # deleted before its trials go: no worker claims from it meanwhile
    if optuna_id is not None:
        try:
            storage.delete_study(optuna_id)
        except KeyError:  # deleted meanwhile (another request, optuna-dashboard)
            pass
    if purge:
        session.delete(study)
        session.commit()
    return study


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
