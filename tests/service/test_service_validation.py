"""Bad input -> 422 naming the field; API key on/off. Over HTTP against a real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.app import create_app
from service.settings import Settings
from service.spec import SPEC_EXAMPLES
from service.vocabulary import OPTIMIZER_FAMILIES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MAX_TRIALS, MAX_EPOCHS = 500, 200  # the limits of the `server` fixture (tests/service/conftest.py)


def _spec(**overrides: Any) -> dict[str, Any]:
    return {**SPEC_EXAMPLES["bop"], "name": "never-created", **overrides}


BAD_SPECS = {
    "unknown top-level field": (_spec(learning_rate=0.1), "learning_rate", "not permitted"),
    "unknown nested field": (
        _spec(sampler={"name": "tpe", "sed": 1}),
        "sampler.sed",
        "not permitted",
    ),
    "unknown optimizer": (_spec(optimizer="adamw"), "optimizer", "bop"),
    "param not in family": (
        _spec(search_space={"momentum": 0.9}),
        "search_space.momentum",
        "not a parameter of optimizer 'bop'",
    ),
    "low >= high": (
        _spec(search_space={"gamma": {"low": 1e-2, "high": 1e-4}}),
        "search_space.gamma",
        "must be < high",
    ),
    "log with low <= 0": (
        _spec(search_space={"gamma": {"low": 0, "high": 1e-2, "log": True}}),
        "search_space.gamma",
        "low > 0",
    ),
    "n_trials over the limit": (_spec(n_trials=MAX_TRIALS + 1), "n_trials", "max_trials"),
    "epochs over the limit": (_spec(epochs=MAX_EPOCHS + 1), "epochs", "max_epochs"),
    "wrong type": (_spec(epochs="ten"), "epochs", "integer"),
    "wrong type in a range": (
        _spec(search_space={"gamma": {"low": "small", "high": 1e-2}}),
        "search_space.gamma.low",
        "number",
    ),
    "include_zero on gamma": (
        _spec(search_space={"gamma": {"low": 1e-6, "high": 1e-2, "include_zero": True}}),
        "search_space.gamma.include_zero",
        "threshold and weight_decay",
    ),
    "value outside the parameter's domain": (
        _spec(search_space={"gamma": 2.0}),
        "search_space.gamma",
        "outside",
    ),
    "unknown schedule": (
        _spec(search_space={"gamma_schedule": "exponential"}),
        "search_space.gamma_schedule",
        "unknown schedule",
    ),
    "bias_correction outside bop2": (
        _spec(search_space={"bias_correction": True}),
        "search_space.bias_correction",
        "not a parameter of optimizer 'bop'",
    ),
    "sigma_schedule outside bop2": (
        {**SPEC_EXAMPLES["filter"], "search_space": {"sigma_schedule": "cosine"}},
        "search_space.sigma_schedule",
        "not a parameter of optimizer 'filter'",
    ),
    "bias_correction not a bool": (
        {**SPEC_EXAMPLES["bop2"], "search_space": {"bias_correction": 1}},
        "search_space.bias_correction",
        "true, false",
    ),
    "filter alpha > gamma": (
        {
            **SPEC_EXAMPLES["filter"],
            "search_space": {"alpha": 0.5, "gamma": 0.1, "alpha_schedule": "constant"},
        },
        "search_space.alpha",
        "alpha <= gamma",
    ),
    "model too deep for the dataset": (
        _spec(model="binarynet", dataset="digits"),
        "model",
        "8x8 digits",
    ),
    "bad slug": (_spec(name="Not A Slug"), "name", "pattern"),
    "missing name": ({"optimizer": "bop"}, "name", "required"),
    "pruner with two objectives": (
        _spec(objectives=["val_accuracy", "time"], pruner={"name": "median"}),
        "pruner.name",
        "single objective",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SPECS), ids=list(BAD_SPECS))
def test_bad_spec_is_422_naming_the_field(client: httpx.Client, case: str) -> None:
    spec, field, fragment = BAD_SPECS[case]
    response = client.post("/api/v1/studies", json=spec)
    assert response.status_code == 422, response.text
    body = response.json()
    fields = {e["field"]: e["message"] for e in body["errors"]}
    assert field in fields, body
    assert fragment in fields[field], body
    assert field in body["detail"]


def test_malformed_json_is_422(client: httpx.Client) -> None:
    response = client.post(
        "/api/v1/studies", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["type"] == "json_invalid" and error["field"] == "<body>"
    assert error["message"].startswith("malformed JSON at character 1: ")


def test_empty_body_is_422_asking_for_a_spec(client: httpx.Client) -> None:
    response = client.post("/api/v1/studies", headers={"content-type": "application/json"})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "<body>" and "spec is required" in error["message"]


@pytest.fixture
def keyed_server(
    sqlite_url: str, live_server: Callable[..., AbstractContextManager[str]]
) -> Iterator[str]:
    with live_server(create_app(Settings(database_url=sqlite_url, api_key="s3cret"))) as base:
        yield base


def test_api_key_required_when_set(keyed_server: str) -> None:
    with httpx.Client(base_url=keyed_server) as http:
        assert http.get("/health").status_code == 200  # probes stay open
        assert http.get("/ready").status_code == 200
        missing = http.get("/api/v1/studies")
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        wrong = http.get("/api/v1/studies", headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        assert http.post("/api/v1/studies", json=_spec()).status_code == 401
        malformed = {"content-type": "application/json"}
        assert http.post("/api/v1/studies", content=b"{", headers=malformed).status_code == 401
        keyed = {**malformed, "X-API-Key": "s3cret"}
        assert http.post("/api/v1/studies", content=b"{", headers=keyed).status_code == 422
        ok = http.get("/api/v1/studies", headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200 and "data" in ok.json()


def test_api_key_not_needed_when_unset(client: httpx.Client) -> None:
    assert client.get("/api/v1/studies").status_code == 200


def test_openapi_examples_are_the_example_files(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/api/v1/studies"]["post"]
    assert post["operationId"] == "studies-create_study"
    examples = post["requestBody"]["content"]["application/json"]["examples"]
    files = {path.stem: yaml.safe_load(path.read_text()) for path in EXAMPLES.glob("*.yaml")}
    assert {name: e["value"] for name, e in examples.items()} == files
    assert {e["value"]["optimizer"] for e in examples.values()} == set(OPTIMIZER_FAMILIES)
    assert "X-API-Key" in str(schema["components"]["securitySchemes"])


def test_every_error_is_reported_at_once(client: httpx.Client) -> None:
    """An unknown field does not hide a parameter of the wrong family (or a bad value)."""
    spec = _spec(learning_rate=0.1, epochs=0, search_space={"alpha": 0.1, "lr": 0.01})
    response = client.post("/api/v1/studies", json=spec)
    assert response.status_code == 422, response.text
    fields = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert set(fields) == {"learning_rate", "epochs", "search_space.alpha"}, fields
    assert "not a parameter of optimizer 'bop' (nor are lr)" in fields["search_space.alpha"]
