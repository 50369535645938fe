"""Database outage: a TCP proxy between the app and PostgreSQL is cut, then restored.

The shared PostgreSQL server is never stopped; only our proxy's connections are.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from service.spec import SPEC_EXAMPLES


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``cut()`` drops and refuses connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_event = threading.Event()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_event.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def cut(self) -> None:
        self.cut_event.set()
        with self.lock:
            live = list(self.sockets)
        for sock in live:
            self._close(sock)

    def restore(self) -> None:
        self.cut_event.clear()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


@pytest.fixture
def proxied(
    postgres_url: str, live_server: Callable[..., AbstractContextManager[str]]
) -> Iterator[tuple[TcpProxy, httpx.Client]]:
    parts = urlsplit(postgres_url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
    url = urlunsplit(parts._replace(netloc=netloc))
    try:
        with live_server(create_app(Settings(database_url=url))) as base:
            with httpx.Client(base_url=base, timeout=30) as http:
                yield proxy, http
    finally:
        proxy.close()


def test_outage_is_503_then_recovers_without_losing_data(
    proxied: tuple[TcpProxy, httpx.Client], unique_name: Callable[..., str]
) -> None:
    proxy, http = proxied
    spec = {**SPEC_EXAMPLES["latent-sgd"], "name": unique_name("outage")}
    created = http.post("/api/v1/studies", json=spec)
    assert created.status_code == 201, created.text
    path = created.json()["links"]["self"]
    before = http.get(path).json()

    proxy.cut()
    for request in (
        ("GET", "/ready"),
        ("GET", path),
        ("GET", f"{path}/trials"),
        ("GET", "/api/v1/studies"),
    ):
        response = http.request(*request)
        assert response.status_code == 503, (request, response.text)
        assert response.headers["content-type"] == "application/json"
        detail = response.json()["detail"]
        wanted = "database unreachable" if request[1] == "/ready" else "database unavailable"
        assert wanted in detail, (request, detail)
        assert int(response.headers["Retry-After"]) > 0
    assert http.get("/health").status_code == 200  # the process itself is fine

    proxy.restore()
    assert http.get("/ready").status_code == 200
    after = http.get(path)
    assert after.status_code == 200
    assert after.json()["spec"] == before["spec"] and after.json()["status"] == "queued"
    assert unique_name  # names are unique, so the study must be there exactly once
    listed = http.get("/api/v1/studies", params={"limit": 1000}).json()["data"]
    assert [s["name"] for s in listed].count(spec["name"]) == 1


def test_database_down_from_the_start_is_503_with_the_cause(
    live_server: Callable[..., AbstractContextManager[str]],
) -> None:
    """A server whose database was never reachable (a closed port): /ready says "not ready"
    and why, without the address; the API says "database unavailable", not Optuna's text."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere"
    settings = Settings(database_url=url, reaper_interval_s=0)
    with live_server(create_app(settings)) as base, httpx.Client(base_url=base) as http:
        assert http.get("/health").status_code == 200
        ready = http.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not ready"
        assert "database unreachable" in ready.json()["detail"]
        assert str(port) not in ready.json()["detail"]
        for path in ("/api/v1/studies", "/api/v1/studies/1", "/api/v1/studies/1/trials"):
            response = http.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["detail"].startswith("database unavailable"), response.text
            assert "max length" not in response.json()["detail"]
            assert int(response.headers["Retry-After"]) > 0


def test_reaper_does_not_fail_live_trials_after_an_outage(
    postgres_url: str,
    live_server: Callable[..., AbstractContextManager[str]],
    unique_name: Callable[..., str],
) -> None:
    """Heartbeats cannot reach a database that is down. When it comes back, the API's reaper
    must give workers a grace period to beat again instead of failing their live trials."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    from service.db import make_engine, session_scope
    from service.lifecycle import transition

    parts = urlsplit(postgres_url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    settings = Settings(
        database_url=url, heartbeat_interval_s=1, grace_period_s=2, reaper_interval_s=0.2
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        worker = RDBStorage(postgres_url, heartbeat_interval=1, grace_period=2)  # not proxied
    try:
        with live_server(create_app(settings)) as base, httpx.Client(base_url=base) as http:
            spec = {**SPEC_EXAMPLES["bop"], "name": unique_name("beat")}
            created = http.post("/api/v1/studies", json=spec).json()
            engine = make_engine(postgres_url)
            with session_scope(engine) as session:
                transition(session, created["id"], "running")
            engine.dispose()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = optuna.load_study(study_name=created["optuna_study_name"], storage=worker)
                trial_id = trial.ask()._trial_id

            def beat_for(seconds: float) -> None:  # a live worker: a beat every 0.5 s
                for _ in range(int(seconds / 0.5)):
                    worker.record_heartbeat(trial_id)
                    time.sleep(0.5)

            beat_for(3.0)  # meanwhile the reaper got armed (reachable for a grace period)
            assert worker.get_trial(trial_id).state == TrialState.RUNNING

            proxy.cut()  # the worker's beats stop too (they cannot reach the database)
            time.sleep(3.0)
            proxy.restore()
            time.sleep(1.0)  # the reaper passes again; the worker beats at its next interval
            assert worker.get_trial(trial_id).state == TrialState.RUNNING
            beat_for(3.0)
            assert worker.get_trial(trial_id).state == TrialState.RUNNING

            deadline = time.monotonic() + 10  # a worker that stays silent is still reaped
            while worker.get_trial(trial_id).state == TrialState.RUNNING:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert worker.get_trial(trial_id).state == TrialState.FAIL
    finally:
        worker.engine.dispose()
        proxy.close()
