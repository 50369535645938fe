"""Read endpoints on a study with a few hundred trials (counts and pages come from SQL).

Every answer is also checked against the reference: the old implementation, which loaded all
trials with ``load_trials`` and counted/sliced them in Python.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy.orm import Session

from service import studies as ops
from service import trial_views as views
from service.db import make_engine
from service.models import Study
from service.spec import SPEC_EXAMPLES

N_TRIALS = 300
# by number % 10; RUNNING and WAITING trials are created in between, see _make_trial
STATES = [TrialState.COMPLETE] * 6 + [
    TrialState.PRUNED,
    TrialState.FAIL,
    TrialState.RUNNING,
    TrialState.WAITING,
]
INF_TRIAL = 20  # a COMPLETE trial with value +inf: never the best (only finite values count)
DIST = {"gamma": FloatDistribution(1e-6, 1e-2, log=True)}


def _make_trial(number: int) -> FrozenTrial:
    state = STATES[number % len(STATES)]
    epochs = [{"epoch": e, "val_accuracy": 0.01 * e + number * 1e-4} for e in (1, 2)]
    kwargs: dict[str, Any] = {}
    if state == TrialState.COMPLETE:
        # ties on purpose (the lowest number wins), the best finite value is 0.96
        kwargs["value"] = float("inf") if number == INF_TRIAL else (number % 25) / 25
        kwargs["user_attrs"] = {"epochs": epochs, "seed": number}
        kwargs["intermediate_values"] = {e["epoch"]: e["val_accuracy"] for e in epochs}
    elif state == TrialState.FAIL:
        kwargs["user_attrs"] = {"error": f"RuntimeError('boom {number}')"}
        kwargs["system_attrs"] = {"failed_trial": number - 1, "retry_history": [number - 1]}
    elif state == TrialState.PRUNED:
        kwargs["intermediate_values"] = {1: 0.1}
    params = {} if state == TrialState.WAITING else {"gamma": 1e-5 * (1 + number % 7)}
    return create_trial(
        state=state,
        params=params,
        distributions={k: DIST[k] for k in params},
        **kwargs,
    )


@pytest.fixture(scope="module")
def large(
    backend_url: str, server: str, unique_name: Callable[..., str]
) -> Iterator[dict[str, Any]]:
    """One study per backend with N_TRIALS trials in every state, created through Optuna."""
    spec = {**SPEC_EXAMPLES["bop"], "name": unique_name("large")}
    with httpx.Client(base_url=server, timeout=60) as http:
        response = http.post("/api/v1/studies", json=spec)
    assert response.status_code == 201, response.text
    created = response.json()
    study = optuna.load_study(study_name=created["optuna_study_name"], storage=backend_url)
    study.add_trials([_make_trial(n) for n in range(N_TRIALS)])
    yield created


@pytest.fixture(scope="module")
def reference(backend_url: str, large: dict[str, Any]) -> Iterator[list[FrozenTrial]]:
    """All trials as the old implementation loaded them."""
    engine, storage = make_engine(backend_url), ops.make_optuna_storage(backend_url)
    try:
        with Session(engine) as session:
            row = session.get(Study, large["id"])
            assert row is not None
            yield views.load_trials(storage, row)
    finally:
        engine.dispose()
        storage.engine.dispose()


def _json(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """What the API sends for these trials (in JSON, an infinite value reads null)."""
    return [json.loads(views.trial_public(t).model_dump_json()) for t in trials]


def _page(client: httpx.Client, created: dict[str, Any], **params: Any) -> dict[str, Any]:
    response = client.get(created["links"]["trials"], params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_progress_and_best(
    client: httpx.Client, large: dict[str, Any], reference: list[FrozenTrial]
) -> None:
    assert len(reference) == N_TRIALS
    body = client.get(large["links"]["self"]).json()
    per_state = N_TRIALS // len(STATES)
    assert body["progress"] == {
        "n_complete": 6 * per_state,
        "n_pruned": per_state,
        "n_failed": per_state,
        "n_running": per_state,
        "n_waiting": per_state,
        "n_total": N_TRIALS,
    }
    assert body["progress"] == views.study_progress(reference).model_dump()
    # value 24/25 first at number 24 (COMPLETE: 24 % 10 = 4); 20 has +inf and does not count
    assert body["best_trial"]["number"] == 24 and body["best_value"] == 0.96
    best = views.best_trials(reference, ["maximize"])
    assert body["best_trial"] == best[0].model_dump(mode="json")
    assert body["pareto_front"] is None


def test_best_of_matches_the_python_rule(
    backend_url: str, large: dict[str, Any], reference: list[FrozenTrial]
) -> None:
    """Minimize too (the API has no minimizing single objective yet) and multi-objective."""
    engine, storage = make_engine(backend_url), ops.make_optuna_storage(backend_url)
    try:
        with Session(engine) as session:
            row = session.get(Study, large["id"])
            assert row is not None
            optuna_id = views.optuna_study_id(session, row)
            for directions in (["maximize"], ["minimize"]):
                got = views.best_of(session, storage, optuna_id, directions)
                assert got == views.best_trials(reference, directions), directions
            assert [b.number for b in got] == [0]  # value 0.0, the lowest number of the ties
            assert views.best_of(session, storage, None, ["maximize"]) == []
    finally:
        engine.dispose()
        storage.engine.dispose()


def test_pages_match_the_old_slicing(
    client: httpx.Client, large: dict[str, Any], reference: list[FrozenTrial]
) -> None:
    everything = _page(client, large, limit=1000)  # one page holds all: loaded in one go
    assert everything["count"] == N_TRIALS
    assert [t["number"] for t in everything["data"]] == list(range(N_TRIALS))
    assert everything["data"] == _json(reference)

    paged: list[dict[str, Any]] = []  # small pages: each trial loaded by id
    for skip in range(0, N_TRIALS, 50):
        page = _page(client, large, skip=skip, limit=50)
        assert page["count"] == N_TRIALS and len(page["data"]) == 50
        paged += page["data"]
    assert paged == everything["data"]


@pytest.mark.parametrize(
    ("skip", "limit", "numbers"),
    [
        (0, 1, [0]),
        (1, 1, [1]),
        (N_TRIALS - 1, 1, [N_TRIALS - 1]),
        (N_TRIALS - 2, 10, [N_TRIALS - 2, N_TRIALS - 1]),
        (N_TRIALS, 10, []),
        (N_TRIALS + 1000, 1, []),
        (137, 3, [137, 138, 139]),
    ],
)
def test_pagination_edges(
    client: httpx.Client,
    large: dict[str, Any],
    reference: list[FrozenTrial],
    skip: int,
    limit: int,
    numbers: list[int],
) -> None:
    page = _page(client, large, skip=skip, limit=limit)
    assert page["count"] == N_TRIALS
    assert [t["number"] for t in page["data"]] == numbers
    assert page["data"] == _json(reference[skip : skip + limit])


@pytest.mark.parametrize("state", ["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"])
def test_state_filter_with_pagination(
    client: httpx.Client, large: dict[str, Any], reference: list[FrozenTrial], state: str
) -> None:
    matching = [t for t in reference if t.state.name == state]
    for skip, limit in [(0, 1), (0, 7), (5, 7), (len(matching) - 1, 7), (len(matching), 7)]:
        page = _page(client, large, state=state, skip=skip, limit=limit)
        assert page["count"] == len(matching), (skip, limit)
        assert page["data"] == _json(matching[skip : skip + limit]), (skip, limit)
        assert all(t["state"] == state for t in page["data"])
    whole = _page(client, large, state=state, limit=1000)
    assert whole["data"] == _json(matching)


def test_failed_trials_keep_error_and_retry_info(
    client: httpx.Client, large: dict[str, Any]
) -> None:
    page = _page(client, large, state="FAIL", skip=2, limit=2)
    assert [t["number"] for t in page["data"]] == [27, 37]
    first = page["data"][0]
    assert first["error"] == "RuntimeError('boom 27')"
    assert first["retry_of"] == 26 and first["retry_history"] == [26]
    complete = _page(client, large, state="COMPLETE", skip=1, limit=1)["data"][0]
    assert complete["number"] == 1 and complete["user_attrs"] == {"seed": 1}
    assert [e["epoch"] for e in complete["epochs"]] == [1, 2]


def test_unknown_study_and_bad_queries(client: httpx.Client, large: dict[str, Any]) -> None:
    assert client.get("/api/v1/studies/987655/trials").status_code == 404
    trials = large["links"]["trials"]
    assert client.get(trials, params={"limit": 1001}).status_code == 422
    assert client.get(trials, params={"skip": -1}).status_code == 422
    assert client.get(trials, params={"state": "BOGUS"}).status_code == 422


def test_an_empty_study_reads_as_before(
    client: httpx.Client, unique_name: Callable[..., str]
) -> None:
    response = client.post(
        "/api/v1/studies", json={**SPEC_EXAMPLES["bop"], "name": unique_name("empty")}
    )
    created = response.json()
    assert _page(client, created, skip=5) == {"data": [], "count": 0}
    assert _page(client, created, state="FAIL") == {"data": [], "count": 0}
    body = client.get(created["links"]["self"]).json()
    assert body["progress"]["n_total"] == 0 and body["best_trial"] is None
