"""The API's stale-trial reaper: a study whose only worker died is cleaned without any worker.

Real uvicorn server, real database; the "dead worker" is an Optuna client that asks a trial,
records one heartbeat and goes away (what a worker does before it dies mid-trial).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import optuna
from optuna.storages import RDBStorage

from service.app import create_app
from service.db import claim_trial_slot, make_engine, session_scope, set_study_status
from service.settings import Settings
from service.spec import SPEC_EXAMPLES


def _dead_worker_trial(url: str, optuna_name: str) -> int:
    """A RUNNING trial with one heartbeat whose worker is gone; returns its number."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(url, skip_table_creation=True, heartbeat_interval=1, grace_period=1)
    try:
        study = optuna.load_study(study_name=optuna_name, storage=storage)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        trial.suggest_float("gamma", 1e-6, 1e-2, log=True)
        storage.record_heartbeat(trial._trial_id)
        return trial.number
    finally:
        storage.engine.dispose()


def _trials(client: httpx.Client, study_id: int) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/studies/{study_id}/trials")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _wait(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_reaper_fails_stale_trials_and_finishes_a_stopping_study(
    database_url: str,
    live_server: Callable[..., AbstractContextManager[str]],
    unique_name: Callable[..., str],
) -> None:
    settings = Settings(
        database_url=database_url, heartbeat_interval_s=1, grace_period_s=1, reaper_interval_s=0.3
    )
    with live_server(create_app(settings)) as base, httpx.Client(base_url=base) as client:
        spec = {**SPEC_EXAMPLES["bop"], "name": unique_name("reap"), "max_retries": 1}
        created = client.post("/api/v1/studies", json=spec).json()
        study_id = created["id"]
        engine = make_engine(database_url)
        try:
            with session_scope(engine) as session:
                set_study_status(session, study_id, "running")
        finally:
            engine.dispose()
        number = _dead_worker_trial(database_url, created["optuna_study_name"])

        # No worker polls this study: the API's reaper fails the trial and queues its retry.
        _wait(lambda: {t["state"] for t in _trials(client, study_id)} == {"FAIL", "WAITING"})
        failed, retry = _trials(client, study_id)
        assert failed["number"] == number and retry["retry_of"] == number
        assert "no heartbeat" in failed["error"] and retry["error"] is None
        waiting = client.get(f"/api/v1/studies/{study_id}/trials", params={"state": "WAITING"})
        assert [t["number"] for t in waiting.json()["data"]] == [retry["number"]]
        assert waiting.json()["count"] == 1
        assert client.get(f"/api/v1/studies/{study_id}").json()["status"] == "running"

        # Stopping it: the WAITING retry is failed (never resumed) and the study ends stopped.
        assert client.post(f"/api/v1/studies/{study_id}/stop").json()["status"] == "stopping"
        _wait(lambda: client.get(f"/api/v1/studies/{study_id}").json()["status"] == "stopped")
        trials = _trials(client, study_id)
        assert [t["state"] for t in trials] == ["FAIL", "FAIL"]
        assert trials[1]["error"] == "study stopped before the retry ran"
        body = client.get(f"/api/v1/studies/{study_id}").json()
        assert body["progress"]["n_waiting"] == 0 and body["finished_at"] is not None


def test_reaper_can_be_turned_off(
    sqlite_url: str,
    live_server: Callable[..., AbstractContextManager[str]],
    unique_name: Callable[..., str],
) -> None:
    settings = Settings(
        database_url=sqlite_url, heartbeat_interval_s=1, grace_period_s=1, reaper_interval_s=0
    )
    with live_server(create_app(settings)) as base, httpx.Client(base_url=base) as client:
        created = client.post(
            "/api/v1/studies", json={**SPEC_EXAMPLES["bop"], "name": unique_name("noreap")}
        ).json()
        _dead_worker_trial(sqlite_url, created["optuna_study_name"])
        engine = make_engine(sqlite_url)
        try:
            with session_scope(engine) as session:
                set_study_status(session, created["id"], "running")
        finally:
            engine.dispose()
        time.sleep(2.0)
        assert [t["state"] for t in _trials(client, created["id"])] == ["RUNNING"]


def test_reaper_completes_a_study_whose_last_worker_died_without_retries(
    database_url: str,
    live_server: Callable[..., AbstractContextManager[str]],
    unique_name: Callable[..., str],
) -> None:
    settings = Settings(
        database_url=database_url, heartbeat_interval_s=1, grace_period_s=1, reaper_interval_s=0.3
    )
    with live_server(create_app(settings)) as base, httpx.Client(base_url=base) as client:
        spec = {**SPEC_EXAMPLES["bop"], "name": unique_name("last"), "n_trials": 1}
        created = client.post("/api/v1/studies", json={**spec, "max_retries": 0}).json()
        engine = make_engine(database_url)
        try:
            with session_scope(engine) as session:  # what a worker does before ask()
                assert claim_trial_slot(session, created["id"])
        finally:
            engine.dispose()
        _dead_worker_trial(database_url, created["optuna_study_name"])

        path = f"/api/v1/studies/{created['id']}"
        _wait(lambda: client.get(path).json()["status"] == "completed")
        body = client.get(path).json()
        assert body["progress"]["n_failed"] == 1 and body["progress"]["n_total"] == 1
        assert body["finished_at"] is not None
