"""Service test fixtures: one real uvicorn server per database backend for the session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import optuna
import pytest

from service.app import create_app
from service.settings import Settings

optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_TRIALS = 500
MAX_EPOCHS = 200


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend_url(request: pytest.FixtureRequest) -> str:
    """The session database of each backend (tests must use unique study names)."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(scope="session")
def server(
    backend_url: str, live_server: Callable[..., AbstractContextManager[str]]
) -> Iterator[str]:
    """Base URL of a real uvicorn server over ``backend_url`` (no API key)."""
    settings = Settings(database_url=backend_url, max_trials=MAX_TRIALS, max_epochs=MAX_EPOCHS)
    with live_server(create_app(settings)) as base_url:
        yield base_url


# What every API client sends: state-changing requests must be JSON (415 otherwise), also
# the ones without a body such as POST .../stop.
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30, headers=JSON_HEADERS) as http:
        yield http
