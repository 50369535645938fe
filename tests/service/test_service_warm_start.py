"""A spec's ``warm_start`` through a real uvicorn server (SQLite and PostgreSQL): the source
study is checked when the study is created (422 naming the field), and stored by id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import optuna

from service.db import make_engine, session_scope
from service.lifecycle import transition
from service.spec import SPEC_EXAMPLES


def _spec(name: str, family: str = "bop", **overrides: Any) -> dict[str, Any]:
    return {**SPEC_EXAMPLES[family], "name": name, "sampler": {"name": "tpe"}, **overrides}


def _post(client: httpx.Client, spec: dict[str, Any]) -> httpx.Response:
    return client.post("/api/v1/studies", json=spec)


def _field_error(response: httpx.Response, field: str, words: str) -> None:
    assert response.status_code == 422, response.text
    errors = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert field in errors and words in errors[field], errors


def test_warm_start_source_is_checked_and_stored_by_id(
    client: httpx.Client, backend_url: str, unique_name: Callable[..., str]
) -> None:
    source = _post(client, _spec(unique_name("src"))).json()
    ref = {"warm_start": {"study": source["name"]}}

    _field_error(
        _post(client, _spec(unique_name("w"), warm_start={"study": "no-such-study"})),
        "warm_start.study",
        "no study 'no-such-study'",
    )
    _field_error(_post(client, _spec(unique_name("w"), **ref)), "warm_start.study", "is queued")
    _field_error(
        _post(client, _spec(unique_name("w"), sampler={"name": "random"}, **ref)),
        "sampler.name",
        "does not learn",
    )

    engine = make_engine(backend_url)
    with session_scope(engine) as session:
        assert transition(session, source["id"], "completed")
    engine.dispose()
    _field_error(_post(client, _spec(unique_name("w"), **ref)), "warm_start.study", "no COMPLETE")
    study = optuna.load_study(study_name=source["optuna_study_name"], storage=backend_url)
    trial = study.ask()
    trial.suggest_float("gamma", 1e-6, 1e-2, log=True)
    study.tell(trial, 0.9)
    _field_error(
        _post(client, _spec(unique_name("w"), family="filter", **ref)),
        "warm_start.study",
        "tunes bop, not filter",
    )
    _field_error(
        _post(
            client,
            _spec(
                unique_name("w"),
                objectives=["val_accuracy", "flip_ratio"],
                pruner={"name": "none"},
                **ref,
            ),
        ),
        "warm_start.study",
        "objectives",
    )

    created = _post(client, _spec(unique_name("w"), **ref))
    assert created.status_code == 201, created.text
    body = client.get(created.json()["links"]["self"]).json()
    assert body["spec"]["warm_start"] == {"study": source["id"]}  # ids are never reused
    assert body["budget"]["n_claimed"] == 0 and body["progress"]["n_total"] == 0
    by_id = _post(client, _spec(unique_name("w"), warm_start={"study": source["id"]}))
    assert by_id.status_code == 201, by_id.text
