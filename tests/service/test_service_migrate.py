"""migrate(): idempotent, both version tables, /ready reports an unmigrated database."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect, text

from service.app import create_app
from service.db import make_engine
from service.migrate import OPTUNA_VERSION_TABLE, VERSION_TABLE, check_migrated, head_revision
from service.migrate import upgrade as migrate_upgrade
from service.settings import Settings


def _version_rows(url: str) -> tuple[set[str], list[str], list[str]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            ours = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
            theirs = (
                conn.execute(text(f"SELECT version_num FROM {OPTUNA_VERSION_TABLE}"))
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    return tables, list(ours), list(theirs)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migrate_is_idempotent_and_keeps_both_version_tables(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(f"fresh_{backend}_url")  # already migrated once
    migrate_upgrade(url)
    migrate_upgrade(url)
    tables, ours, theirs = _version_rows(url)
    assert {"bnn_studies", VERSION_TABLE, OPTUNA_VERSION_TABLE, "studies", "trials"} <= tables
    assert ours == [head_revision()]
    assert len(theirs) == 1 and theirs[0] != head_revision()
    engine = make_engine(url)
    assert check_migrated(engine) is None
    engine.dispose()


def test_migrate_accepts_plain_postgresql_scheme(fresh_postgres_url: str) -> None:
    plain = fresh_postgres_url.replace("postgresql+psycopg://", "postgresql://")
    migrate_upgrade(plain)
    assert _version_rows(fresh_postgres_url)[1] == [head_revision()]


def test_ready_is_503_until_migrated(
    tmp_path: Path, live_server: Callable[..., AbstractContextManager[str]]
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with live_server(create_app(Settings(database_url=url))) as base:
        response = httpx.get(f"{base}/ready")
        assert response.status_code == 503
        assert "migrate" in response.json()["detail"]
        assert httpx.get(f"{base}/health").status_code == 200
        migrate_upgrade(url)
        assert httpx.get(f"{base}/ready").json() == {"status": "ready"}


def test_app_does_not_migrate_at_startup(
    tmp_path: Path, live_server: Callable[..., AbstractContextManager[str]]
) -> None:
    url = f"sqlite:///{tmp_path / 'untouched.db'}"
    with live_server(create_app(Settings(database_url=url))) as base:
        httpx.get(f"{base}/health")
    engine = make_engine(url)
    with engine.connect() as conn:
        assert inspect(conn).get_table_names() == []
    engine.dispose()


def test_database_problem_reports_an_old_optuna_schema(fresh_sqlite_url: str) -> None:
    """make_storage skips Optuna's per-open schema check, so database_problem must catch an
    Optuna schema older than the installed Optuna (as Optuna's own check would)."""
    from sqlalchemy import text

    from service.db import make_engine
    from service.lifecycle import database_problem

    engine = make_engine(fresh_sqlite_url)
    try:
        assert database_problem(fresh_sqlite_url, engine) is None
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = 'v3.0.0.d'"))
        problem = database_problem(fresh_sqlite_url, engine)
    finally:
        engine.dispose()
    assert problem is not None
    assert "v3.0.0.d" in problem and "bnn-tune migrate" in problem
