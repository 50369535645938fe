"""The one Optuna storage factory over BNN-Tune's database, and the check that the database
has BNN-Tune's current schema."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from sqlalchemy import Engine

from service.db import optuna_engine_kwargs
from service.lifecycle.recovery import (
    CleanRetryCallback,
)
from service.spec import StudySpec

__all__ = ["DatabaseNotReady", "make_storage", "database_problem"]

logger = logging.getLogger(__name__)

SamplerFactory = Callable[
    [StudySpec], tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]
]


def make_storage(
    url: str,
    *,
    max_retry: int | None = None,
    heartbeat_interval_s: int | None = None,
    grace_period_s: int | None = None,
    engine_kwargs: dict[str, Any] | None = None,
) -> RDBStorage:
    """The one way to open Optuna's storage over our database (tables must exist: run
    ``bnn-tune migrate``). With ``max_retry``: heartbeat-aware, stale trials retried through
    :class:`CleanRetryCallback`."""
    kwargs = {**optuna_engine_kwargs(url), **(engine_kwargs or {})}
    # Optuna's own schema check holds a transaction open on one connection while Alembic reads
    # the version on a second one; a fleet starting at once behind a connection pooler smaller
    # than the fleet then holds every server connection in that first transaction and waits
    # forever. database_problem() makes the same check once per process instead.
    if max_retry is None:
        return RDBStorage(
            url, engine_kwargs=kwargs, skip_table_creation=True, skip_compatibility_check=True
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs=kwargs,
            skip_table_creation=True,
            skip_compatibility_check=True,
            heartbeat_interval=heartbeat_interval_s,
            grace_period=grace_period_s,
            heartbeat_stale_trial_callback=CleanRetryCallback(max_retry=max_retry),
        )


class DatabaseNotReady(RuntimeError):
    """The database has no (or an old) BNN-Tune schema: run ``bnn-tune migrate``."""


def database_problem(url: str, engine: Engine) -> str | None:
    """None when the database has BNN-Tune's current schema, else what to do. A SQLite file
    that does not exist is reported before connecting (connecting would create it empty)."""
    from sqlalchemy.engine import make_url

    from service.migrate import check_migrated

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).exists():
            return (
                f"SQLite file {parsed.database} does not exist; run `bnn-tune migrate` or set "
                "BNN_TUNE_DATABASE_URL / --database-url to the service's database"
            )
    return check_migrated(engine) or _optuna_schema_problem(url)


def _optuna_schema_problem(url: str) -> str | None:
    """None when Optuna's tables have the schema this Optuna version needs (the check
    :func:`make_storage` skips), else what to do."""
    storage = RDBStorage(
        url,
        engine_kwargs=optuna_engine_kwargs(url),
        skip_table_creation=True,
        skip_compatibility_check=True,
    )
    try:
        current, head = storage.get_current_version(), storage.get_head_version()
    finally:
        storage.remove_session()
        storage.engine.dispose()
    if current != head:
        return (
            f"Optuna's tables are at schema {current}, this Optuna {optuna.__version__} needs "
            f"{head}; run `bnn-tune migrate`"
        )
    return None
