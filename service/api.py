"""Routes under /api/v1 (studies, trials, plots, workers) plus /health and /ready.

Every path and query integer is bounded (ids and offsets are 32-bit columns), so an out-of-range
number is a 422, never a database error. ``/ready`` names what is wrong (unreachable, not
migrated) without host names, ports or addresses: it answers without an API key.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from service import studies as ops
from service import trial_views as views
from service import workers as registry
from service.errors import InvalidSpecError, NotFoundError, ServiceError, StorageUnavailableError
from service.limits import INT32_MAX, MAX_N_TRIALS
from service.migrate import check_migrated
from service.models import ACTIVE_STATUSES, STUDY_STATUSES, Study
from service.plots import StudyData, render_plot
from service.schemas import (
    ErrorBody,
    Links,
    StudiesPublic,
    StudyCreated,
    StudyPublic,
    StudySummary,
    TrialsPublic,
    WorkersPublic,
)
from service.settings import Settings
from service.spec import StudySpec, check_limits, spec_examples
from service.vocabulary import PLOT_KINDS, PLOT_MEDIA_TYPES, PlotFormat

__all__ = ["api_router", "health_router", "key_matches"]

logger = logging.getLogger(__name__)

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; handlers commit explicitly (never after the response).

    Closing runs after the response has started, so it must not raise: a connection that broke
    during the request (database outage) is invalidated instead of returned to the pool.
    """
    session: Session = request.app.state.session_factory()
    try:
        yield session
    finally:
        try:
            session.close()
        except DBAPIError:
            logger.warning("dropping a broken database connection", exc_info=True)
            session.invalidate()


def get_storage(request: Request) -> BaseStorage:
    """The app's Optuna storage, created on first use (the DB may be down at startup)."""
    state = request.app.state
    with state.storage_lock:
        if state.storage is None:
            try:
                state.storage = ops.make_optuna_storage(state.settings.database_url)
            except Exception as exc:  # noqa: BLE001 - any failure here means "not available"
                message = f"database unavailable, retry later ({type(exc).__name__})"
                raise StorageUnavailableError(message) from exc
        return state.storage


def _root_cause_type(exc: BaseException) -> str:
    """The class name of the innermost cause: says what failed (a refused connection, a
    timeout) without the driver's message, which names the host and port."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return type(exc).__name__


def key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of an ``X-API-Key`` header with the configured key, as bytes:
    header values arrive decoded as latin-1, so any header (non-ASCII included) compares
    without error; the configured key is UTF-8."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("latin-1"), expected.encode("utf-8"))


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings_dep)],
    key: Annotated[str | None, Depends(_api_key_header)],
) -> None:
    if settings.api_key and not key_matches(key, settings.api_key):
        raise _Unauthorized("missing or wrong X-API-Key header")


class _Unauthorized(ServiceError):
    status_code = 401


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StudyId = Annotated[int, Path(ge=1, le=INT32_MAX)]
Skip = Annotated[int, Query(ge=0, le=INT32_MAX)]
Limit = Annotated[int, Query(ge=1, le=1000)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[BaseStorage, Depends(get_storage)]

_errors = {
    code: {"model": ErrorBody, "description": text_}
    for code, text_ in [
        (401, "Missing or wrong API key"),
        (404, "Unknown study"),
        (409, "Conflict with the study's state"),
        (413, "Request body larger than settings.max_request_bytes"),
        (415, "A POST that is not Content-Type: application/json"),
        (422, "Invalid input; `errors` names each field"),
        (503, "Database unavailable (retry after Retry-After seconds)"),
    ]
}

api_router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_api_key)])
studies = APIRouter(prefix="/studies", tags=["studies"], responses=_errors)
workers = APIRouter(
    prefix="/workers",
    tags=["workers"],
    responses={code: _errors[code] for code in (401, 413, 503)},
)
health_router = APIRouter(tags=["health"])


def _study(session: Session, study_id: int) -> Study:
    return ops.get_study(session, study_id)


def _links(request: Request, study_id: int) -> Links:
    base = f"{request.url_for('read_study', study_id=study_id).path}"
    return Links(
        self=base, trials=f"{base}/trials", stop=f"{base}/stop", plots=f"{base}/plots/{{kind}}"
    )


_spec_examples = {
    name: {"summary": str(value.get("description") or name), "value": value}
    for name, value in spec_examples().items()
}


@studies.post("", status_code=status.HTTP_201_CREATED)
def create_study(
    request: Request,
    spec: Annotated[StudySpec, Body(openapi_examples=_spec_examples)],
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    response: Response,
) -> StudyCreated:
    """Create a study and its Optuna study; workers pick it up from the database."""
    if errors := check_limits(spec, settings):
        raise InvalidSpecError(errors)
    study = ops.create_study(session, storage, spec)
    links = _links(request, study.id)
    response.headers["Location"] = links.self
    return StudyCreated(
        id=study.id,
        name=study.name,
        status=study.status,
        optuna_study_name=study.optuna_study_name or "",
        links=links,
    )


@studies.get("")
def list_studies(
    session: SessionDep,
    settings: SettingsDep,
    skip: Skip = 0,
    limit: Limit = 100,
    status: Annotated[Literal[STUDY_STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
) -> StudiesPublic:
    """Studies, newest first; deleted ones are hidden unless ?status=deleted."""
    rows, count = ops.list_studies(session, status=status, skip=skip, limit=limit)
    devices: list[tuple[str, dict[str, str]]] = []
    if any(r.status in ACTIVE_STATUSES for r in rows):  # one query for the whole page
        devices = registry.live_worker_devices(session, registry.live_after_s(settings))
    return StudiesPublic(
        data=[
            _summary(
                r,
                registry.reason_to_wait(
                    r.status, registry.study_device(r), devices, registry.study_dataset(r)
                ),
            )
            for r in rows
        ],
        count=count,
    )


def _summary(study: Study, waiting_reason: str | None = None) -> StudySummary:
    return StudySummary(
        id=study.id,
        name=study.name,
        status=study.status,
        owner=study.owner,
        optimizer=str(study.spec.get("optimizer")),
        n_trials=study.n_trials,
        n_claimed=study.n_claimed,
        created_at=study.created_at,
        updated_at=study.updated_at,
        started_at=study.started_at,
        finished_at=study.finished_at,
        waiting_reason=waiting_reason,
    )


@studies.get("/{study_id}")
def read_study(
    request: Request,
    study_id: StudyId,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> StudyPublic:
    """Status, spec, progress, budget, the best trial (Pareto front if multi-objective) and,
    for a queued or running study that no live worker can train, `waiting_reason`."""
    return _public(request, session, storage, settings, _study(session, study_id))


def _public(
    request: Request, session: Session, storage: BaseStorage, settings: Settings, study: Study
) -> StudyPublic:
    spec = ops.spec_of(study)
    optuna_id = views.optuna_study_id(session, study)
    best = views.best_of(session, storage, optuna_id, spec.directions)
    single = not spec.is_multi_objective
    waiting = registry.waiting_reason(session, study, registry.live_after_s(settings))
    return StudyPublic(
        **_summary(study, waiting).model_dump(),
        optuna_study_name=study.optuna_study_name,
        spec=study.spec,
        directions=spec.directions,
        eval_protocol=spec.eval_protocol,
        error=study.error,
        progress=views.trial_counts(session, optuna_id),
        budget=views.budget(study),
        best_trial=best[0] if single and best else None,
        best_value=best[0].values[0] if single and best else None,
        pareto_front=None if single else best,
        links=_links(request, study.id),
    )


@studies.get("/{study_id}/trials")
def list_trials(
    study_id: StudyId,
    session: SessionDep,
    storage: StorageDep,
    skip: Skip = 0,
    limit: Limit = 100,
    state: Annotated[
        Literal["RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING"] | None, Query()
    ] = None,
) -> TrialsPublic:
    """Trials by number, with per-epoch curves, error and retry info."""
    optuna_id = views.optuna_study_id(session, _study(session, study_id))
    wanted = None if state is None else TrialState[state]
    page, count = views.trials_page(
        session, storage, optuna_id, state=wanted, skip=skip, limit=limit
    )
    return TrialsPublic(data=[views.trial_public(t) for t in page], count=count)


@studies.post("/{study_id}/stop")
def stop_study(study_id: StudyId, session: SessionDep) -> StudySummary:
    """Ask workers to stop: running trials end within a few training steps, then `stopped`."""
    study = ops.stop_study(session, _study(session, study_id))
    session.commit()
    return _summary(study)


class ResumeRequest(BaseModel):
    """``add_trials``: more trials for the budget (default: see :func:`service.lifecycle.resume`:
    the failed ones when the budget is used up, none while budget is left)."""

    model_config = ConfigDict(extra="forbid")

    add_trials: Annotated[int, Field(ge=1, le=MAX_N_TRIALS, strict=True)] | None = None


@studies.post("/{study_id}/resume")
def resume_study(
    request: Request,
    study_id: StudyId,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    body: Annotated[ResumeRequest | None, Body()] = None,
) -> StudyPublic:
    """Queue a stopped, failed or completed study again (409 otherwise), its error cleared and
    its budget grown by `add_trials` -- by default by its failed trials when the budget is used
    up (a study whose trials failed for a cause since fixed runs them again), by nothing while
    budget is left. Earlier trials stay and keep informing the sampler."""
    study = _study(session, study_id)
    add = body.add_trials if body is not None else None
    ops.resume_study(session, study, add, settings.max_trials)
    session.commit()
    return _public(request, session, storage, settings, study)


@studies.delete("/{study_id}")
def delete_study(
    study_id: StudyId,
    session: SessionDep,
    storage: StorageDep,
    purge: Annotated[bool, Query(description="also delete our record and free the name")] = False,
) -> StudySummary:
    """Delete a study's Optuna study (its trials; gone from optuna-dashboard) and hide it; our
    record stays (`?status=deleted`) and keeps the name, unless `purge=true` deletes it too and
    frees the name. 409 while the study has running trials."""
    study = ops.get_study(session, study_id, include_deleted=purge)
    summary = _summary(ops.delete_study(session, storage, study, purge=purge))
    session.commit()
    return summary


@studies.get(
    "/{study_id}/plots/{kind}",
    response_class=Response,
    responses={200: {"content": {m: {} for m in PLOT_MEDIA_TYPES.values()}}},
)
def plot_study(
    study_id: StudyId,
    kind: Annotated[str, Path(max_length=32)],
    session: SessionDep,
    storage: StorageDep,
    format: Annotated[PlotFormat, Query()] = "png",  # noqa: A002
    trial: Annotated[
        int | None, Query(ge=0, le=INT32_MAX, description="layer-flips: trial number")
    ] = None,
    compare: Annotated[
        int | None,
        Query(ge=1, le=INT32_MAX, description="filter: overlay this study's best filters"),
    ] = None,
) -> Response:
    """Plot `params`, `importance`, `pareto`, `curves`, `flips`, `layer-flips` or `filter` as
    PNG or SVG (what each shows: `service.plots`)."""
    if kind not in PLOT_KINDS:
        raise NotFoundError(f"unknown plot kind {kind!r}; one of {', '.join(PLOT_KINDS)}")
    study = _study(session, study_id)
    other = None
    if compare is not None and kind == "filter":
        try:
            compared = _study(session, compare)
        except NotFoundError as exc:
            raise NotFoundError(f"compare: {exc.message}") from exc
        other = StudyData(
            ops.spec_of(compared), views.load_trials(storage, compared), compared.status
        )
    content = render_plot(
        kind,
        ops.spec_of(study),
        views.load_trials(storage, study),
        format,
        status=study.status,
        error=study.error,
        trial=trial,
        compare=other,
    )
    return Response(content=content, media_type=PLOT_MEDIA_TYPES[format])


@workers.get("")
def list_workers(session: SessionDep, settings: SettingsDep) -> WorkersPublic:
    """Registered worker processes, live ones first: device, state, last seen, current study."""
    rows = registry.list_workers(session, registry.live_after_s(settings))
    return WorkersPublic(data=rows, count=len(rows))


api_router.include_router(studies)
api_router.include_router(workers)


@health_router.get("/health")
def health() -> dict[str, str]:
    """The process is up (does not touch the database)."""
    return {"status": "ok"}


@health_router.get("/ready", responses={503: {"model": ErrorBody}})
def ready(session: SessionDep) -> JSONResponse:
    """The database is reachable and migrated (our head revision and Optuna's tables)."""
    try:
        session.execute(text("SELECT 1"))
        problem = check_migrated(session.get_bind())  # type: ignore[arg-type]
    except (DBAPIError, PoolTimeoutError) as exc:
        problem = f"database unreachable, retry later ({_root_cause_type(exc)})"
    if problem is not None:
        return JSONResponse(
            {"status": "not ready", "detail": problem},
            status_code=503,
            headers={"Retry-After": "10"},
        )
    return JSONResponse({"status": "ready"})
