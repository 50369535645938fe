"""Engine and session helpers shared by the API and the workers.

Functions that touch our tables take a :class:`~sqlalchemy.orm.Session` and never commit; the
caller owns the transaction (``with session_scope(engine) as session: ...``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "make_engine",
    "make_session_factory",
    "session_scope",
    "optuna_engine_kwargs",
]


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def optuna_engine_kwargs(url: str) -> dict[str, Any]:
    """Engine options for our engines and for ``optuna.storages.RDBStorage(engine_kwargs=...)``.

    PostgreSQL: pre-ping (Optuna only sets it for MySQL, optuna#5600), recycle, TCP keepalives
    and a short connect timeout so an outage surfaces as an error within seconds.
    """
    if _is_sqlite(url):
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": 1800}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {
            "connect_timeout": 5,
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
    return kwargs


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with ``pool_pre_ping=True`` (and sane SQLite options)."""
    options = {"pool_pre_ping": True, **optuna_engine_kwargs(url), **kwargs}
    engine = create_engine(url, **options)
    if _is_sqlite(url):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
