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
    if max_retry is None:
        return RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs=kwargs,
            skip_table_creation=True,
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
    return check_migrated(engine)
