"""Studies API through a real uvicorn server, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from service.db import make_engine, session_scope
from service.lifecycle import claim_slot, transition
from service.spec import SPEC_EXAMPLES


def _spec(name: str, family: str = "bop", **overrides: Any) -> dict[str, Any]:
    return {**SPEC_EXAMPLES[family], "name": name, **overrides}


def _create(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/v1/studies", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def test_health_and_ready(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_create_and_get(client: httpx.Client, backend_url: str, unique_name: Callable) -> None:
    name = unique_name("bop")
    created = _create(client, _spec(name))
    assert created["status"] == "queued" and created["name"] == name
    assert created["optuna_study_name"] == name  # optuna-dashboard lists it by the spec's name
    assert created["links"]["self"] == f"/api/v1/studies/{created['id']}"

    body = client.get(created["links"]["self"]).json()
    assert body["spec"]["optimizer"] == "bop"
    assert body["spec"]["search_space"]["gamma"]["log"] is True
    assert body["directions"] == ["maximize"]
    assert body["budget"] == {"n_trials": 30, "n_claimed": 0, "n_remaining": 30}
    assert body["progress"]["n_total"] == 0 and body["best_trial"] is None

    study = optuna.load_study(study_name=created["optuna_study_name"], storage=backend_url)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    assert study.metric_names == ["val_accuracy"]
    from optuna_dashboard import get_note

    note = get_note(study)  # the spec, as YAML, in the study's note
    assert note.startswith(f"## {name}\n") and "```yaml\n" in note
    assert f"name: {name}\n" in note and "optimizer: bop\n" in note
    assert study.user_attrs == {
        "bnn_tune_study_id": created["id"],
        "name": name,
        "optimizer": "bop",
        "model": "binarynet",
        "dataset": "cifar10",
    }


def test_multi_objective_directions(
    client: httpx.Client, backend_url: str, unique_name: Callable
) -> None:
    created = _create(client, _spec(unique_name("filter"), "filter"))
    study = optuna.load_study(study_name=created["optuna_study_name"], storage=backend_url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    dist = {"alpha": FloatDistribution(1e-7, 1e-2, log=True)}
    for i, (acc, flips) in enumerate([(0.9, 0.1), (0.8, 0.01), (0.7, 0.2)]):
        study.add_trial(
            create_trial(params={"alpha": 1e-4 * (i + 1)}, distributions=dist, values=[acc, flips])
        )
    body = client.get(created["links"]["self"]).json()
    assert body["best_trial"] is None
    assert sorted(t["number"] for t in body["pareto_front"]) == [0, 1]


def test_duplicate_name_is_409(client: httpx.Client, unique_name: Callable) -> None:
    spec = _spec(unique_name("dup"))
    _create(client, spec)
    response = client.post("/api/v1/studies", json=spec)
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]


def test_unknown_study_is_404(client: httpx.Client) -> None:
    for path in ("", "/trials", "/plots/curves"):
        response = client.get(f"/api/v1/studies/987654{path}")
        assert response.status_code == 404, path
        assert response.json()["detail"] == "study 987654 not found"
    assert client.post("/api/v1/studies/987654/stop", json={}).status_code == 404
    assert client.delete("/api/v1/studies/987654").status_code == 404


def test_list_pagination_and_status_filter(client: httpx.Client, unique_name: Callable) -> None:
    owner = unique_name("owner")
    ids = [_create(client, _spec(unique_name("page"), owner=owner))["id"] for _ in range(3)]
    first = client.get("/api/v1/studies", params={"limit": 2}).json()
    assert len(first["data"]) == 2 and first["count"] >= 3
    assert first["data"][0]["id"] > first["data"][1]["id"]  # newest first
    second = client.get("/api/v1/studies", params={"skip": 2, "limit": 2}).json()
    assert {s["id"] for s in first["data"]}.isdisjoint({s["id"] for s in second["data"]})

    client.post(f"/api/v1/studies/{ids[0]}/stop", json={})
    stopped = client.get("/api/v1/studies", params={"status": "stopped", "limit": 1000}).json()
    assert ids[0] in {s["id"] for s in stopped["data"]}
    assert all(s["status"] == "stopped" for s in stopped["data"])
    queued = client.get("/api/v1/studies", params={"status": "queued", "limit": 1000}).json()
    assert {ids[1], ids[2]} <= {s["id"] for s in queued["data"]}
    assert ids[0] not in {s["id"] for s in queued["data"]}
    assert client.get("/api/v1/studies", params={"status": "bogus"}).status_code == 422
    assert client.get("/api/v1/studies", params={"limit": 0}).status_code == 422


def _add_trials(backend_url: str, optuna_name: str) -> None:
    study = optuna.load_study(study_name=optuna_name, storage=backend_url)
    dist = {
        "gamma": FloatDistribution(1e-6, 1e-2, log=True),
        "threshold": FloatDistribution(1e-10, 1e-5, log=True),
    }
    for i, acc in enumerate([0.55, 0.81, 0.67]):
        epochs = [
            {
                "epoch": e,
                "train_loss": 1.0 / e,
                "train_accuracy": acc * e / 3,
                "val_loss": 1.1 / e,
                "val_accuracy": acc * e / 3,
                "flip_ratio": 1e-3 / e,
                "flip_ratio_per_layer": [1e-3 / e, 2e-3 / e],
                "hyperparameters": {"gamma": 1e-4},
                "seconds": 0.5,
            }
            for e in (1, 2, 3)
        ]
        study.add_trial(
            create_trial(
                params={"gamma": 10 ** (-5 + i), "threshold": 10 ** (-8 + i)},
                distributions=dist,
                value=acc,
                user_attrs={"epochs": epochs},
                intermediate_values={e["epoch"]: e["val_accuracy"] for e in epochs},
            )
        )
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={},
            distributions={},
            user_attrs={"error": "RuntimeError('CUDA out of memory')"},
            system_attrs={"failed_trial": 1, "retry_history": [1]},
        )
    )
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED, params={}, distributions={}, intermediate_values={1: 0.1}
        )
    )


def test_trials_progress_and_best(
    client: httpx.Client, backend_url: str, unique_name: Callable
) -> None:
    created = _create(client, _spec(unique_name("trials")))
    _add_trials(backend_url, created["optuna_study_name"])
    study = optuna.load_study(study_name=created["optuna_study_name"], storage=backend_url)
    study.ask()  # one RUNNING trial

    body = client.get(created["links"]["self"]).json()
    assert body["progress"] == {
        "n_complete": 3,
        "n_pruned": 1,
        "n_failed": 1,
        "n_running": 1,
        "n_waiting": 0,
        "n_total": 6,
    }
    assert body["best_trial"]["number"] == 1 and body["best_value"] == 0.81
    assert body["best_trial"]["params"]["gamma"] == 1e-4

    page = client.get(created["links"]["trials"], params={"limit": 2}).json()
    assert page["count"] == 6 and [t["number"] for t in page["data"]] == [0, 1]
    trial = page["data"][1]
    assert trial["state"] == "COMPLETE" and trial["values"] == [0.81]
    assert [e["epoch"] for e in trial["epochs"]] == [1, 2, 3]
    assert trial["epochs"][2]["flip_ratio_per_layer"] == [1e-3 / 3, 2e-3 / 3]
    assert trial["intermediate_values"] == {"1": 0.27, "2": 0.54, "3": 0.81}

    failed = client.get(created["links"]["trials"], params={"state": "FAIL"}).json()
    assert failed["count"] == 1
    assert failed["data"][0]["error"] == "RuntimeError('CUDA out of memory')"
    assert failed["data"][0]["retry_of"] == 1 and failed["data"][0]["retry_history"] == [1]
    rest = client.get(created["links"]["trials"], params={"skip": 4}).json()
    assert [t["state"] for t in rest["data"]] == ["PRUNED", "RUNNING"]


def test_stop_rules(client: httpx.Client, backend_url: str, unique_name: Callable) -> None:
    never_started = _create(client, _spec(unique_name("stop")))
    response = client.post(never_started["links"]["stop"])
    assert response.status_code == 200 and response.json()["status"] == "stopped"
    assert client.post(never_started["links"]["stop"]).json()["status"] == "stopped"

    running = _create(client, _spec(unique_name("stop")))
    engine = make_engine(backend_url)
    with session_scope(engine) as session:
        assert claim_slot(session, running["id"]) is not None
    assert client.get(running["links"]["self"]).json()["status"] == "running"
    assert client.post(running["links"]["stop"]).json()["status"] == "stopping"

    done = _create(client, _spec(unique_name("stop")))
    with session_scope(engine) as session:
        transition(session, done["id"], "completed")
    engine.dispose()
    response = client.post(done["links"]["stop"])
    assert response.status_code == 409 and "completed" in response.json()["detail"]


def test_delete_rules(client: httpx.Client, backend_url: str, unique_name: Callable) -> None:
    created = _create(client, _spec(unique_name("del")))
    study = optuna.load_study(study_name=created["optuna_study_name"], storage=backend_url)
    trial = study.ask()
    response = client.delete(created["links"]["self"])
    assert response.status_code == 409 and "running trial" in response.json()["detail"]

    study.tell(trial, 0.5)
    response = client.delete(created["links"]["self"])
    assert response.status_code == 200 and response.json()["status"] == "deleted"
    assert client.get(created["links"]["self"]).status_code == 404
    names = {s.study_name for s in optuna.get_all_study_summaries(backend_url)}
    assert created["optuna_study_name"] not in names  # gone from optuna-dashboard
    listed = client.get("/api/v1/studies", params={"limit": 1000}).json()["data"]
    assert created["id"] not in {s["id"] for s in listed}
    deleted = client.get("/api/v1/studies", params={"status": "deleted", "limit": 1000}).json()
    assert created["id"] in {s["id"] for s in deleted["data"]}
    again = client.post("/api/v1/studies", json=_spec(created["name"]))
    assert again.status_code == 409  # the hidden, deleted study still owns the name: say so
    assert f"id {created['id']}, deleted" in again.json()["detail"]
    assert f"bnn-tune delete {created['id']} --purge" in again.json()["detail"]
    purged = client.delete(created["links"]["self"], params={"purge": "true"})
    assert purged.status_code == 200, purged.text
    deleted = client.get("/api/v1/studies", params={"status": "deleted", "limit": 1000}).json()
    assert created["id"] not in {s["id"] for s in deleted["data"]}
    reborn = _create(client, _spec(created["name"]))  # the name is free again, a new id
    assert reborn["id"] > created["id"] and reborn["optuna_study_name"] == created["name"]
    assert client.delete(created["links"]["self"], params={"purge": "true"}).status_code == 404

    busy = _create(client, _spec(unique_name("del")))
    engine = make_engine(backend_url)
    with session_scope(engine) as session:
        claim_slot(session, busy["id"])
    engine.dispose()
    response = client.delete(busy["links"]["self"])
    assert response.status_code == 409 and "running" in response.json()["detail"]


def test_plots(client: httpx.Client, backend_url: str, unique_name: Callable) -> None:
    created = _create(client, _spec(unique_name("plot")))
    empty = client.get(f"{created['links']['self']}/plots/params")
    assert empty.status_code == 200 and empty.content.startswith(b"\x89PNG")
    _add_trials(backend_url, created["optuna_study_name"])
    for kind in ("params", "curves", "flips"):
        png = client.get(f"{created['links']['self']}/plots/{kind}")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG")
        svg = client.get(f"{created['links']['self']}/plots/{kind}", params={"format": "svg"})
        assert svg.headers["content-type"] == "image/svg+xml" and b"<svg" in svg.content
    unknown = client.get(f"{created['links']['self']}/plots/violin")
    assert unknown.status_code == 404 and "violin" in unknown.json()["detail"]
    bad_format = client.get(f"{created['links']['self']}/plots/curves", params={"format": "gif"})
    assert bad_format.status_code == 422


def test_a_stored_spec_that_newer_checks_reject_stays_readable(
    client: httpx.Client, backend_url: str, unique_name: Callable
) -> None:
    """binarynet on digits was accepted before the spec refused it: such studies must not 500."""
    from sqlalchemy.orm import Session

    from service.spec import stored_spec
    from service.studies import create_study, make_optuna_storage

    spec = stored_spec(_spec(unique_name("old"), model="binarynet", dataset="digits"))
    engine, storage = make_engine(backend_url), make_optuna_storage(backend_url)
    try:
        with Session(engine) as session:
            study_id = create_study(session, storage, spec).id
    finally:
        engine.dispose()
        storage.engine.dispose()
    for path in ("", "/trials", "/plots/params"):
        response = client.get(f"/api/v1/studies/{study_id}{path}")
        assert response.status_code == 200, (path, response.text)
    new = _spec(unique_name("new"), model="binarynet", dataset="digits")
    assert client.post("/api/v1/studies", json=new).status_code == 422
