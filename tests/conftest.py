"""Shared pytest fixtures (service, worker and CLI tests reuse them).

Databases (every URL is already migrated: our Alembic head + Optuna's tables):

* ``postgres_url`` (session): a fresh database ``bnn_tune_test_<random>`` on the shared server
  ``TEST_POSTGRES_ADMIN_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``), dropped at
  the end of the session. Skipped when the server is unreachable, unless ``CI`` is set: then the
  test FAILS instead. The URL uses the ``postgresql+psycopg://`` driver.
* ``fresh_postgres_url`` (function): same, but a new database for this one test.
* ``sqlite_url`` (session) / ``fresh_sqlite_url`` (function): a migrated SQLite file in tmp.
* ``database_url``: parametrized over ``sqlite`` and ``postgres`` (session-scoped databases, so
  tests must use unique study names: the ``unique_name`` fixture).
* ``migrated`` (fixture): ``migrated(url) -> url`` migrates a URL you built yourself.

Server:

* ``live_server(app) -> base_url`` (session fixture returning a context manager): runs a real
  uvicorn server on 127.0.0.1 in a background thread, e.g.
  ``with live_server(create_app(Settings(database_url=url))) as base: httpx.get(f"{base}/health")``
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def make_unique_name(prefix: str = "study") -> str:
    """A study name that is unique across tests sharing a database."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def unique_name() -> Callable[..., str]:
    """``unique_name("bop")`` -> ``"bop-1a2b3c4d5e"`` (tests share session databases)."""
    return make_unique_name


def migrated(url: str) -> str:
    """Run ``service.migrate.upgrade`` on ``url`` and return it."""
    from service.migrate import upgrade

    upgrade(url)
    return url


def _admin_conninfo() -> str:
    return ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")


def _postgres_available() -> str | None:
    """None when the server answers, else the reason."""
    import psycopg

    try:
        with psycopg.connect(_admin_conninfo(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip()
    return None


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)


class _PostgresDatabases:
    """Creates throw-away databases on the shared server and drops them at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def create(self) -> str:
        import psycopg

        name = f"bnn_tune_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return migrated(_with_database(ADMIN_URL, name))

    def drop_all(self) -> None:
        import psycopg

        with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
            for name in self.names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.names.clear()


@pytest.fixture(name="migrated", scope="session")
def migrated_fixture() -> Callable[[str], str]:
    return migrated


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[_PostgresDatabases]:
    reason = _postgres_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {reason}")
        pytest.skip(f"PostgreSQL unreachable: {reason}")
    databases = _PostgresDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def postgres_url(postgres_databases: _PostgresDatabases) -> str:
    """A fresh, migrated PostgreSQL database for the whole session."""
    return postgres_databases.create()


@pytest.fixture
def fresh_postgres_url(postgres_databases: _PostgresDatabases) -> str:
    """A fresh, migrated PostgreSQL database for one test."""
    return postgres_databases.create()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite database file for the whole session."""
    path: Path = tmp_path_factory.mktemp("sqlite") / "bnn_tune.db"
    return migrated(f"sqlite:///{path}")


@pytest.fixture
def fresh_sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database file for one test."""
    return migrated(f"sqlite:///{tmp_path / 'bnn_tune.db'}")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test runs once on SQLite and once on PostgreSQL (session databases)."""
    marker = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(marker)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def run_uvicorn(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server in a thread; yield its base URL."""
    import uvicorn

    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server() -> Callable[..., AbstractContextManager[str]]:
    """``with live_server(app) as base_url: ...`` (a real uvicorn server on loopback)."""
    return run_uvicorn
