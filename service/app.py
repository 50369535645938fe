"""The FastAPI app factory: ``create_app(settings) -> FastAPI``.

Run with ``uvicorn service.app:create_app --factory``, ``uvicorn service.app:app`` (built on
first access from the environment) or ``bnn-tune serve``. Startup does not
migrate the database; ``GET /ready`` says whether it is reachable and migrated. The lifespan runs
the stale-trial reaper (:mod:`service.reaper`) every ``reaper_interval_s``.

Before any route runs, :class:`service.guards.RequestGuard` caps the body (413) and admits only
JSON state changes (415). ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from assets that
the ``fastapi-offline`` package ships and this app serves itself, so they work without internet
access (an air-gapped GPU host).

Errors become one status each: :class:`service.errors.ServiceError` its own, invalid input 422,
a stored spec that today's rules refuse 409,
a database that cannot be reached 503 (with Retry-After), and a database that refuses the
request's data (``DataError``, ``IntegrityError``) 422, since retrying it would fail the same
way; the one rule telling outages apart is ``service.lifecycle.errors.is_connectivity_error``.
Any other database error (a missing table: not migrated) stays a 503 for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from service.api import api_router, health_router, key_matches
from service.db import make_engine, make_session_factory
from service.errors import InvalidSpecError, ServiceError
from service.guards import RequestGuard
from service.lifecycle.errors import db_error_text, is_connectivity_error
from service.logtext import loggable
from service.metrics import install_metrics
from service.reaper import Reaper
from service.settings import Settings, get_settings
from service.spec import SpecError, spec_errors

__all__ = ["create_app", "RETRY_AFTER_S"]

logger = logging.getLogger(__name__)
RETRY_AFTER_S = 5
# Where the Swagger UI / ReDoc scripts, stylesheet and icon are served from.
DOCS_ASSETS_URL = "/docs-assets"
REAPER_SHUTDOWN_S = 10.0


def _unique_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine = make_engine(settings.database_url)
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.storage = None  # Optuna storage, created on first use (see service.api)
    app.state.storage_lock = threading.Lock()
    reaper = _start_reaper(settings, engine)
    try:
        yield
    finally:
        await _stop_reaper(reaper)
        storage = app.state.storage
        if storage is not None:
            storage.engine.dispose()
        engine.dispose()


@dataclass
class _RunningReaper:
    reaper: Reaper
    stop: asyncio.Event
    task: asyncio.Task[None]


def _start_reaper(settings: Settings, engine: Engine) -> _RunningReaper | None:
    if settings.reaper_interval_s <= 0:
        return None
    reaper, stop = Reaper(settings, engine), asyncio.Event()
    task = asyncio.create_task(_reap_forever(reaper, settings.reaper_interval_s, stop))
    return _RunningReaper(reaper, stop, task)


async def _reap_forever(reaper: Reaper, interval_s: float, stop: asyncio.Event) -> None:
    """Every ``interval_s``: one reaper pass in a thread (it blocks on the database). Errors
    (database down) are logged and the next pass tries again."""
    while not stop.is_set():
        try:
            await asyncio.to_thread(reaper.reap_once)
        except Exception as exc:  # noqa: BLE001 - the API must outlive database outages
            logger.warning("stale-trial reaper: %s", loggable(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def _stop_reaper(running: _RunningReaper | None) -> None:
    """Let a pass in progress finish (its thread cannot be cancelled) before closing."""
    if running is None:
        return
    running.stop.set()
    try:
        await asyncio.wait_for(running.task, REAPER_SHUTDOWN_S)
    except TimeoutError:
        logger.warning("stale-trial reaper busy for %ss; closing anyway", REAPER_SHUTDOWN_S)
    running.reaper.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (default: :func:`service.settings.get_settings`)."""
    settings = settings or get_settings()
    app = FastAPIOffline(
        title="BNN-Tune",
        summary="Hyperparameter tuning for binary neural networks (Bop, Bop2, filter, latent).",
        version="0.1.0",
        lifespan=_lifespan,
        generate_unique_id_function=_unique_id,
        static_url=DOCS_ASSETS_URL,
    )
    app.state.settings = settings
    app.include_router(health_router)
    app.include_router(api_router)
    install_metrics(app)  # /metrics and request counters (service.metrics)
    _add_exception_handlers(app)
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_request_bytes)
    return app


def _add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(SpecError, _stored_spec_invalid)  # type: ignore[arg-type]
    for exc_type in (OperationalError, DBAPIError, PoolTimeoutError):
        app.add_exception_handler(exc_type, _database_error)
    app.add_exception_handler(optuna.exceptions.StorageInternalError, _database_error)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    body: dict[str, object] = {"detail": exc.message}
    headers = {}
    if isinstance(exc, InvalidSpecError):
        body["errors"] = exc.errors
    if exc.status_code == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "APIKey"
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    if not _key_ok(request):  # FastAPI decodes a JSON body before it runs the key dependency
        return JSONResponse(
            {"detail": "missing or wrong X-API-Key header"},
            status_code=401,
            headers={"WWW-Authenticate": "APIKey"},
        )
    flat = spec_errors(exc)  # type: ignore[arg-type]
    errors = [_body_error(raw, e) for raw, e in zip(exc.errors(), flat, strict=True)]
    fields = ", ".join(e["field"] for e in errors)
    return JSONResponse({"detail": f"invalid input ({fields})", "errors": errors}, 422)


async def _stored_spec_invalid(request: Request, exc: SpecError) -> JSONResponse:
    """A study stored by an older version whose spec today's rules refuse (``stored_spec`` is
    the only reader of stored specs; request bodies fail earlier, as RequestValidationError)."""
    fields = ", ".join(e["field"] for e in exc.errors)
    detail = f"this study's stored spec is not valid any more ({fields}); delete it"
    return JSONResponse({"detail": detail, "errors": exc.errors}, status_code=409)


def _key_ok(request: Request) -> bool:
    """Whether the request may see /api/v1 answers (no key configured, or the right one)."""
    key = request.app.state.settings.api_key
    if not key or not request.url.path.startswith("/api/"):
        return True
    return key_matches(request.headers.get("X-API-Key"), key)


def _body_error(raw: Any, error: dict[str, str]) -> dict[str, str]:
    """Errors about the body as a whole: malformed JSON (FastAPI's loc is the character
    offset, not a field) and a missing body."""
    loc = tuple(raw.get("loc", ()))
    if raw.get("type") == "json_invalid":
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        reason = (raw.get("ctx") or {}).get("error") or raw.get("msg")
        return {**error, "field": "<body>", "message": f"malformed JSON{where}: {reason}"}
    if raw.get("type") == "missing" and loc == ("body",):
        return {**error, "field": "<body>", "message": "a JSON study spec is required"}
    return error


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """503 + Retry-After when the database cannot be reached; 422 when it refused the data."""
    where = f"{request.method} {loggable(request.url.path)}"
    if _refused_data(exc):
        logger.info("database refused the data of %s: %s", where, loggable(db_error_text(exc)))
        return JSONResponse(
            {"detail": "the database refused this request's data; check its strings and numbers"},
            status_code=422,
        )
    logger.warning("database unavailable on %s: %s", where, loggable(exc))
    return JSONResponse(
        {"detail": "database unavailable, retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def _refused_data(exc: BaseException) -> bool:
    """The database refused the values it was given (NUL byte, too long, a constraint)."""
    if is_connectivity_error(exc):
        return False
    current: BaseException | None = exc
    for _ in range(20):  # the cause chain (Optuna wraps driver errors)
        if current is None:
            return False
        if isinstance(current, DataError | IntegrityError):
            return True
        current = current.__cause__ or current.__context__
    return False


def __getattr__(name: str) -> FastAPI:
    """``service.app.app``: an app from the environment's settings, built on first access."""
    if name == "app":
        app = create_app(get_settings())
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
