"""``POST /api/v1/studies/{id}/resume`` through a real uvicorn server (SQLite and PostgreSQL):
which studies resume, how their budget grows, and the 4xx for everything else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import optuna
from optuna.trial import TrialState

from service.db import make_engine, session_scope
from service.lifecycle import claim_slot, transition
from service.spec import SPEC_EXAMPLES

MAX_TRIALS = 500  # the test server's max_trials (tests/service/conftest.py)


def _create(client: httpx.Client, name: str, **overrides: Any) -> dict[str, Any]:
    response = client.post(
        "/api/v1/studies", json={**SPEC_EXAMPLES["bop"], "name": name, **overrides}
    )
    assert response.status_code == 201, response.text
    return response.json()


def _run_trials(url: str, created: dict[str, Any], states: list[TrialState]) -> None:
    """What workers do: claim a budget slot, ask, tell ``state`` (a value for COMPLETE)."""
    study = optuna.load_study(study_name=created["optuna_study_name"], storage=url)
    engine = make_engine(url)
    for state in states:
        with session_scope(engine) as session:
            assert claim_slot(session, created["id"]) is not None
        trial = study.ask()
        if state == TrialState.FAIL:
            trial.set_user_attr("error", "FileNotFoundError: no data set")
        study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    engine.dispose()


def _end(url: str, study_id: int, status: str, error: str | None = None) -> None:
    engine = make_engine(url)
    with session_scope(engine) as session:
        assert transition(session, study_id, status, error=error)
    engine.dispose()


def _resume(client: httpx.Client, study_id: int, **body: Any) -> httpx.Response:
    return client.post(f"/api/v1/studies/{study_id}/resume", json=body)


def test_failed_study_with_its_budget_spent_runs_its_failed_trials_again(
    client: httpx.Client, backend_url: str, unique_name: Callable[..., str]
) -> None:
    created = _create(client, unique_name("resume-failed"), n_trials=3)
    _run_trials(backend_url, created, [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL])
    _end(backend_url, created["id"], "failed", error="2 trials failed: no data set")

    response = _resume(client, created["id"])
    assert response.status_code == 200, response.text
    study = response.json()
    assert study["status"] == "queued" and study["error"] is None and study["finished_at"] is None
    # the two failed slots come back; the complete one is kept and not rerun
    assert study["budget"] == {"n_trials": 5, "n_claimed": 3, "n_remaining": 2}
    assert study["progress"]["n_failed"] == 2 and study["best_value"] == 0.5


def test_stopped_study_goes_on_with_the_rest_of_its_budget(
    client: httpx.Client, backend_url: str, unique_name: Callable[..., str]
) -> None:
    created = _create(client, unique_name("resume-stopped"), n_trials=4)
    _run_trials(backend_url, created, [TrialState.COMPLETE])
    assert client.post(f"/api/v1/studies/{created['id']}/stop").json()["status"] == "stopping"
    _end(backend_url, created["id"], "stopped")

    study = _resume(client, created["id"]).json()
    assert study["status"] == "queued"
    assert study["budget"] == {"n_trials": 4, "n_claimed": 1, "n_remaining": 3}
    grown = _create(client, unique_name("resume-grown"), n_trials=2)
    client.post(f"/api/v1/studies/{grown['id']}/stop")  # never started: stopped at once
    body = _resume(client, grown["id"], add_trials=3).json()
    assert body["n_trials"] == 5 and body["budget"]["n_remaining"] == 5


def test_completed_study_needs_add_trials(
    client: httpx.Client, backend_url: str, unique_name: Callable[..., str]
) -> None:
    created = _create(client, unique_name("resume-done"), n_trials=1)
    _run_trials(backend_url, created, [TrialState.COMPLETE])
    _end(backend_url, created["id"], "completed")

    refused = _resume(client, created["id"])
    assert refused.status_code == 409
    assert "whole budget" in refused.json()["detail"] and "add_trials" in refused.json()["detail"]
    study = _resume(client, created["id"], add_trials=2).json()
    assert study["status"] == "queued" and study["budget"]["n_remaining"] == 2


def test_only_finished_studies_resume_and_add_trials_is_checked(
    client: httpx.Client, backend_url: str, unique_name: Callable[..., str]
) -> None:
    queued = _create(client, unique_name("resume-queued"))
    response = _resume(client, queued["id"])
    assert response.status_code == 409 and "is queued" in response.json()["detail"]
    _run_trials(backend_url, queued, [])
    engine = make_engine(backend_url)
    with session_scope(engine) as session:
        claim_slot(session, queued["id"])
    engine.dispose()
    response = _resume(client, queued["id"])
    assert response.status_code == 409 and "is running" in response.json()["detail"]

    stopped = _create(client, unique_name("resume-bad"))
    client.post(f"/api/v1/studies/{stopped['id']}/stop")
    for bad in (0, -1, True, "3", 1.5, 10**7):
        response = _resume(client, stopped["id"], add_trials=bad)
        assert response.status_code == 422, (bad, response.text)
        assert "add_trials" in response.text
    over = _resume(client, stopped["id"], add_trials=MAX_TRIALS)
    assert over.status_code == 422 and "max_trials" in over.text
    extra = _resume(client, stopped["id"], add_trials=1, more=1)
    assert extra.status_code == 422
    assert client.get(f"/api/v1/studies/{stopped['id']}").json()["status"] == "stopped"

    client.delete(f"/api/v1/studies/{stopped['id']}")
    assert _resume(client, stopped["id"]).status_code == 404
    assert client.post("/api/v1/studies/2147483647/resume", json={}).status_code == 404
