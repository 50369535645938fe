"""Study operations over our table and the study's Optuna storage (no FastAPI here).

The API routes and the CLI (``bnn-tune status``) share these. Functions take a session and never
commit, except :func:`create_study` and :func:`delete_study`, which write Optuna's study (on its
own connection) between two commits of ours.

The reads of a study's trials (progress, best trial, trial pages) are in
:mod:`service.trial_views`.
"""

from __future__ import annotations

import warnings

import optuna
import yaml
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna_dashboard import save_note
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import ConflictError, InvalidSpecError, NotFoundError
from service.lifecycle import RESUMABLE, ResumeRefused, request_stop, resume, transition
from service.lifecycle import make_storage as make_optuna_storage
from service.models import Study
from service.spec import ChoiceSpec, RangeSpec, StudySpec, stored_spec
from service.trial_views import optuna_study_id, trial_counts

__all__ = [
    "make_optuna_storage",
    "create_study",
    "get_study",
    "list_studies",
    "stop_study",
    "resume_study",
    "delete_study",
    "spec_of",
]


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
