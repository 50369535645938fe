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
import pytest
from optuna.storages import RDBStorage

from service.app import create_app
from service.db import make_engine, session_scope
from service.lifecycle import claim_slot, final_status, transition
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


def _mark_running(url: str, study_id: int) -> None:
    """What a worker's first claim does to the study row."""
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            transition(session, study_id, "running")
    finally:
        engine.dispose()


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
        _mark_running(database_url, study_id)
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
        assert (
            client.post(f"/api/v1/studies/{study_id}/stop", json={}).json()["status"] == "stopping"
        )
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
        _mark_running(sqlite_url, created["id"])
        time.sleep(2.0)
        assert [t["state"] for t in _trials(client, created["id"])] == ["RUNNING"]


def _completed_trial(url: str, optuna_name: str) -> None:
    storage = RDBStorage(url, skip_table_creation=True)
    try:
        study = optuna.load_study(study_name=optuna_name, storage=storage)
        trial = study.ask()
        study.tell(trial, 0.5)
    finally:
        storage.engine.dispose()


@pytest.mark.parametrize("one_completed", [False, True], ids=["all-failed", "one-completed"])
def test_reaper_finishes_a_study_whose_last_worker_died_without_retries(
    one_completed: bool,
    database_url: str,
    live_server: Callable[..., AbstractContextManager[str]],
    unique_name: Callable[..., str],
) -> None:
    # Every trial FAILED -> failed with a summary; one COMPLETE trial -> completed.
    settings = Settings(
        database_url=database_url, heartbeat_interval_s=1, grace_period_s=1, reaper_interval_s=0.3
    )
    n_trials = 2 if one_completed else 1
    with live_server(create_app(settings)) as base, httpx.Client(base_url=base) as client:
        spec = {**SPEC_EXAMPLES["bop"], "name": unique_name("last"), "n_trials": n_trials}
        created = client.post("/api/v1/studies", json={**spec, "max_retries": 0}).json()
        engine = make_engine(database_url)
        try:
            with session_scope(engine) as session:  # what a worker does before ask()
                for _ in range(n_trials):
                    assert claim_slot(session, created["id"]) is not None
        finally:
            engine.dispose()
        if one_completed:
            _completed_trial(database_url, created["optuna_study_name"])
        _dead_worker_trial(database_url, created["optuna_study_name"])

        path = f"/api/v1/studies/{created['id']}"
        expected = "completed" if one_completed else "failed"
        _wait(lambda: client.get(path).json()["status"] == expected)
        body = client.get(path).json()
        assert body["progress"]["n_failed"] == 1 and body["progress"]["n_total"] == n_trials
        assert body["finished_at"] is not None
        if one_completed:
            assert body["error"] is None
        else:
            assert body["error"].startswith("the only trial failed; first error: no heartbeat")


def test_final_status_rule() -> None:
    """The worker loop's and the reaper's one rule (service.lifecycle.final_status)."""
    from optuna.trial import TrialState, create_trial

    def trial(number: int, state: TrialState, **attrs: Any) -> optuna.trial.FrozenTrial:
        value = 0.5 if state == TrialState.COMPLETE else None
        made = create_trial(state=state, value=value, user_attrs=attrs)
        made.number = number
        return made

    fail_1 = trial(1, TrialState.FAIL, error="RuntimeError: second")
    fail_0 = trial(0, TrialState.FAIL, error="ConfigError: first")
    retry = trial(2, TrialState.FAIL)
    retry.system_attrs = {"failed_trial": 0}
    assert final_status([fail_1, fail_0, retry]) == (
        "failed",
        "all 2 trials failed (1 retries too); first error: ConfigError: first",
    )
    assert final_status([fail_0, trial(1, TrialState.PRUNED)]) == ("completed", None)
    assert final_status([fail_0, trial(1, TrialState.COMPLETE)]) == ("completed", None)
    assert final_status([]) == ("completed", None)
    long = trial(0, TrialState.FAIL, error="x" * 1000)
    status, error = final_status([long])
    assert status == "failed" and error is not None and len(error) < 400
    assert error.startswith("the only trial failed; first error: xxx") and error.endswith("...")


def test_reaper_fails_a_poisoned_study_once_and_goes_on(
    fresh_postgres_url: str, unique_name: Callable[..., str]
) -> None:
    # The only trial failed with a NUL byte in its error; the study's error is made of it, and
    # PostgreSQL refuses NUL in text. The reaper stores it made safe (not a retried "outage"),
    # and a second, healthy study in the same pass is finished as well.
    from service.lifecycle import Lifecycle
    from service.models import Study
    from service.spec import parse_spec
    from service.studies import create_study, make_optuna_storage

    postgres_url = fresh_postgres_url  # a database of its own: reap_once counts every study
    engine = make_engine(postgres_url)
    storage = make_optuna_storage(postgres_url)
    ids = []
    for name, error in (("poison", "no such folder data\x00/x"), ("healthy", None)):
        spec = parse_spec({"name": unique_name(name), "optimizer": "bop", "n_trials": 1})
        with session_scope(engine) as session:
            study = create_study(session, storage, spec)
        with session_scope(engine) as session:
            assert claim_slot(session, study.id) == 0
        optuna_study = optuna.load_study(study_name=study.optuna_study_name, storage=storage)
        trial = optuna_study.ask()
        if error is None:
            optuna_study.tell(trial, 0.5)
        else:
            trial.set_user_attr("error", error)
            optuna_study.tell(trial, state=optuna.trial.TrialState.FAIL)
        ids.append(study.id)
    storage.engine.dispose()
    lifecycle = Lifecycle(Settings(database_url=postgres_url), engine)
    try:
        assert lifecycle.reap_once() == 2
        assert lifecycle.reap_once() == 0  # both finished: nothing to look at again
    finally:
        lifecycle.close()
    with session_scope(engine) as session:
        poisoned, healthy = (session.get(Study, i) for i in ids)
        assert poisoned is not None and healthy is not None
        assert poisoned.status == "failed"
        assert poisoned.error == "the only trial failed; first error: no such folder data?/x"
        assert (healthy.status, healthy.error) == ("completed", None)
    engine.dispose()
