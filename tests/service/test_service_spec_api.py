"""The API side of cutoffs and the evaluation protocol, on a real uvicorn over SQLite and
PostgreSQL: 422s naming the fields, the study view's eval_protocol, trials' derived rates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

SPACE = {"gamma_cutoff": {"low": 1e-6, "high": 1e-2, "log": True}, "threshold": 1e-8}


def _spec(name: str, **overrides: Any) -> dict[str, Any]:
    base = {"name": name, "optimizer": "bop", "model": "mlp", "dataset": "digits"}
    return {**base, "n_trials": 3, "search_space": SPACE, **overrides}


def test_rate_and_cutoff_together_is_a_422_naming_both(
    client: httpx.Client, unique_name: Callable
) -> None:
    spec = _spec(unique_name("both"), search_space={"gamma": 1e-3, "gamma_cutoff": 1e-4})
    response = client.post("/api/v1/studies", json=spec)
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "search_space.gamma_cutoff"
    assert "give gamma or gamma_cutoff" in error["message"]


def test_out_of_range_cutoff_is_a_422(client: httpx.Client, unique_name: Callable) -> None:
    spec = _spec(unique_name("nyq"), search_space={"gamma_cutoff": {"low": 1e-3, "high": 0.9}})
    response = client.post("/api/v1/studies", json=spec)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "search_space.gamma_cutoff.high"


def test_study_view_shows_eval_protocol_and_trials_their_rates(
    client: httpx.Client, backend_url: str, unique_name: Callable
) -> None:
    created = client.post("/api/v1/studies", json=_spec(unique_name("cut"), eval_protocol="test"))
    assert created.status_code == 201, created.text
    body = client.get(created.json()["links"]["self"]).json()
    assert body["eval_protocol"] == "test" and body["spec"]["eval_protocol"] == "test"
    study = optuna.load_study(study_name=body["optuna_study_name"], storage=backend_url)
    dist = {"gamma_cutoff": FloatDistribution(1e-6, 1e-2, log=True)}
    for cutoff, rate, acc in [(1e-4, 6.3e-4, 0.7), (1e-3, 6.3e-3, 0.8)]:
        study.add_trial(
            create_trial(
                params={"gamma_cutoff": cutoff},
                distributions=dist,
                values=[acc],
                user_attrs={"rates": {"gamma": rate}},
            )
        )
    body = client.get(created.json()["links"]["self"]).json()
    assert body["best_trial"]["params"] == {"gamma_cutoff": 1e-3}
    assert body["best_trial"]["rates"] == {"gamma": 6.3e-3}
    trials = client.get(f"{created.json()['links']['self']}/trials").json()["data"]
    assert [t["rates"] for t in trials] == [{"gamma": 6.3e-4}, {"gamma": 6.3e-3}]
    default = client.post("/api/v1/studies", json=_spec(unique_name("hold"))).json()
    assert client.get(default["links"]["self"]).json()["eval_protocol"] == "holdout"
