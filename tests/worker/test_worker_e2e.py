"""End to end with real processes: a uvicorn API server and two ``python -m worker`` processes
against a fresh PostgreSQL database. Budget across workers, SIGKILL of a worker mid-trial
(stale trial -> FAIL -> retried elsewhere), and a database outage through a TCP proxy."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from worker_helpers import TINY, new_study, study_trials, unique_name

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT = {
    "BNN_TUNE_HEARTBEAT_INTERVAL_S": "1",
    "BNN_TUNE_GRACE_PERIOD_S": "3",
    "BNN_TUNE_ORPHAN_AFTER_S": "10",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "BNN_TUNE_DATABASE_URL": url,
        "BNN_TUNE_DEVICE": "cpu",
        "BNN_TUNE_POLL_INTERVAL_S": "0.2",
        "OMP_NUM_THREADS": "1",
        **HEARTBEAT,
        **extra,
    }


@pytest.fixture(scope="module")
def database(postgres_databases: Any) -> str:
    return postgres_databases.create()


@pytest.fixture(scope="module")
def api(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = (tmp_path_factory.mktemp("api") / "uvicorn.log").open("w")
    cmd = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(database), stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _ok(f"{base}/health"), 30, "the API server did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(condition: Any, timeout: float, message: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.2)
    raise AssertionError(message() if callable(message) else message)


@contextmanager
def workers(url: str, count: int, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = []
    for i in range(count):
        log = (tmp_path / f"worker{i}.log").open("w")
        env = _env(url, BNN_TUNE_WORKER_ID=f"e2e-{i}")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "worker"], cwd=ROOT, env=env, stdout=log, stderr=log
            )
        )
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _submit(api: str, **overrides: Any) -> int:
    spec = {"name": unique_name("e2e"), **TINY, **overrides}
    response = httpx.post(f"{api}/api/v1/studies", json=spec, timeout=10)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _study(api: str, study_id: int) -> dict[str, Any]:
    return httpx.get(f"{api}/api/v1/studies/{study_id}", timeout=10).json()


def _trials(api: str, study_id: int) -> list[dict[str, Any]]:
    response = httpx.get(f"{api}/api/v1/studies/{study_id}/trials?limit=1000", timeout=10)
    return response.json()["data"]


def _wait_done(api: str, study_id: int, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        study = _study(api, study_id)
        return study if study["status"] in ("completed", "failed", "stopped") else None

    def why() -> str:
        trials = [(t["number"], t["state"], t["retry_of"]) for t in _trials(api, study_id)]
        return f"study {study_id} did not finish: {_study(api, study_id)}\ntrials: {trials}"

    return _wait(done, timeout, why)


def _check_budget(api: str, study_id: int, n_trials: int) -> list[dict[str, Any]]:
    study = _wait_done(api, study_id, 90)
    assert study["status"] == "completed"
    assert study["budget"]["n_claimed"] == n_trials
    assert study["progress"]["n_running"] == 0
    assert study["best_trial"] is not None and study["best_trial"]["params"]
    trials = _trials(api, study_id)
    states = [t["state"] for t in trials]
    assert "RUNNING" not in states
    superseded = {n for t in trials for n in t["retry_history"]}
    finished = [t for t in trials if t["number"] not in superseded and t["state"] != "WAITING"]
    assert len(finished) == n_trials, states
    return trials


def test_two_workers_share_the_budget_and_survive_a_sigkill(
    api: str, database: str, tmp_path: Path
) -> None:
    n_trials = 8
    study_id = _submit(api, n_trials=n_trials, epochs=4, max_train_samples=1000)
    with workers(database, 2, tmp_path) as procs:

        def running_trial() -> dict[str, Any] | None:
            for trial in _trials(api, study_id):
                owner = trial["user_attrs"].get("worker_id")
                # Kill it while it trains, i.e. once all its params are sampled; a kill during
                # sampling leaves a partial param set, which the retry completes by sampling.
                sampled = "train_config" in trial["user_attrs"]
                if trial["state"] == "RUNNING" and owner == "e2e-0" and sampled:
                    return trial
            return None

        victim = _wait(running_trial, 60, "worker 0 never ran a trial")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=10)
        trials = _check_budget(api, study_id, n_trials)
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=20) == 0
    killed = next(t for t in trials if t["number"] == victim["number"])
    assert killed["state"] == "FAIL"
    retries = [t for t in trials if t["retry_of"] == victim["number"]]
    assert retries and retries[-1]["state"] == "COMPLETE"
    assert retries[-1]["params"] == killed["params"]
    assert {t["user_attrs"].get("worker_id") for t in retries} == {"e2e-1"}


class TcpProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL; ``cut()`` drops every connection and refuses
    new ones until ``restore()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self._open = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._open.set()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        self._open.clear()
        assert self._listener is not None
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self._open.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in selector.select(timeout=1):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            selector.close()
            a.close()
            b.close()


def test_workers_ride_out_a_database_outage(api: str, database: str, tmp_path: Path) -> None:
    n_trials = 8
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxied = database.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    assert proxied != database
    study_id = _submit(api, n_trials=n_trials, epochs=15, max_train_samples=1000)
    with workers(proxied, 2, tmp_path) as procs:

        def some_done() -> bool:
            return _study(api, study_id)["progress"]["n_complete"] >= 1

        _wait(some_done, 60, "no trial completed before the outage")
        assert _study(api, study_id)["status"] == "running"
        proxy.cut()
        time.sleep(4)
        proxy.restore()
        trials = _check_budget(api, study_id, n_trials)
        assert all(proc.poll() is None for proc in procs), "a worker died during the outage"
    finals = [t for t in trials if t["state"] == "COMPLETE"]
    assert all(len(t["epochs"]) == 15 for t in finals)
    logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
    assert "unavailable" in logs or "heartbeat of trial" in logs


def test_sigterm_mid_trial_records_the_epoch_fails_for_retry_and_exits_0(
    fresh_sqlite_url: str, tmp_path: Path
) -> None:
    study_id = new_study(fresh_sqlite_url, n_trials=2, epochs=50, max_train_samples=1000)
    with workers(fresh_sqlite_url, 1, tmp_path) as procs:

        def training() -> bool:
            trials = study_trials(fresh_sqlite_url, study_id)
            return any(t.user_attrs.get("epochs") for t in trials)

        _wait(training, 60, "the worker never finished an epoch")
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(timeout=30) == 0
    failed, retry = study_trials(fresh_sqlite_url, study_id)
    assert failed.state.name == "FAIL" and failed.user_attrs["error"] == "worker terminated"
    assert 1 <= len(failed.user_attrs["epochs"]) < 50
    assert len(failed.intermediate_values) == len(failed.user_attrs["epochs"])
    assert retry.state.name == "WAITING" and retry.system_attrs["failed_trial"] == failed.number
    assert retry.params == failed.params
