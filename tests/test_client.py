"""``service.client.Client`` against a real uvicorn server on PostgreSQL.

Trials are written with Optuna itself into the study's Optuna study (what a worker does), so the
client's views (rows, DataFrame, best params, progress) are checked against Optuna's own."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from service.client import ApiError, Client, ClientError, ConnectionFailed, check_api_url
from service.client_views import finished_count

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parent.parent
GAMMA = optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)
ZERO = optuna.distributions.CategoricalDistribution([False, True])


def spec_dict(name: str, **changes: Any) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "examples" / "digits-bop.yaml").read_text())
    data.update(name=name, **changes)
    return data


@pytest.fixture(scope="module")
def server(
    postgres_databases: Any, live_server: Callable[..., AbstractContextManager[str]]
) -> Iterator[tuple[str, str]]:
    """(base URL, database URL): one server on a fresh database, reaper every 0.2 s."""
    from service.app import create_app
    from service.settings import Settings

    url = postgres_databases.create()
    settings = Settings(database_url=url, max_trials=50, reaper_interval_s=0.2)
    with live_server(create_app(settings)) as base:
        yield base, url


@pytest.fixture
def client(server: tuple[str, str]) -> Iterator[Client]:
    with Client(server[0]) as c:
        yield c


def add_trials(db_url: str, study: dict[str, Any], trials: list[optuna.trial.FrozenTrial]) -> None:
    """Write finished trials into the study's Optuna study, as a worker would."""
    optuna_study = optuna.load_study(study_name=study["optuna_study_name"], storage=db_url)
    for trial in trials:
        optuna_study.add_trial(trial)


def trial(
    value: float | list[float], gamma: float, state: Any = None, **attrs: Any
) -> optuna.trial.FrozenTrial:
    values = value if isinstance(value, list) else [value]
    state = state or optuna.trial.TrialState.COMPLETE
    return optuna.trial.create_trial(
        state=state,
        values=values if state == optuna.trial.TrialState.COMPLETE else None,
        params={"gamma": gamma, "threshold_is_zero": True},
        distributions={"gamma": GAMMA, "threshold_is_zero": ZERO},
        user_attrs=attrs,
    )


def test_submit_a_dict_and_a_yaml_path(
    client: Client, unique_name: Callable[..., str], tmp_path: Path
) -> None:
    created = client.submit(spec_dict(unique_name("dict")))
    assert created["status"] == "queued" and created["id"] > 0
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(unique_name("path"))))
    second = client.submit(path)
    assert second["id"] == created["id"] + 1
    assert client.get(second["id"])["spec"]["n_trials"] == 10
    listed = [s["id"] for s in client.list_studies()]
    assert listed[:2] == [second["id"], created["id"]]  # newest first


def test_environment_gives_url_and_key(
    server: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BNN_TUNE_API_URL", server[0] + "/")
    monkeypatch.setenv("BNN_TUNE_API_KEY", "k")
    with Client() as c:
        assert c.url == server[0]
        assert c._http.headers["X-API-Key"] == "k"
        assert c.healthy()


def test_field_errors_are_carried(client: Client, unique_name: Callable[..., str]) -> None:
    with pytest.raises(ApiError) as info:
        client.submit(spec_dict(unique_name("big"), n_trials=500, epochs=0))
    error = info.value
    assert error.status_code == 422
    fields = {e["field"] for e in error.errors}
    assert {"n_trials", "epochs"} <= fields or "epochs" in fields, error.errors
    assert "epochs" in str(error)
    with pytest.raises(ApiError) as missing:
        client.get(987654)
    assert missing.value.status_code == 404 and "987654" in str(missing.value)
    with pytest.raises(ApiError) as conflict:
        name = unique_name("twice")
        client.submit(spec_dict(name))
        client.submit(spec_dict(name))
    assert conflict.value.status_code == 409


def test_bad_urls_and_unreachable_server() -> None:
    with pytest.raises(ClientError, match="use 'http://localhost:8000'"):
        check_api_url("localhost:8000")
    with pytest.raises(ClientError, match="use 'http://h:8000'"):
        Client("http://h:8000/api/v1/")
    with Client("http://127.0.0.1:9") as c, pytest.raises(ConnectionFailed):
        c.list_studies()
    with pytest.raises(ClientError, match="printable ASCII"):
        Client("http://127.0.0.1:9", api_key="clé")
    with pytest.raises(ClientError, match="cannot read spec"):
        Client("http://127.0.0.1:9").submit("/nonexistent/spec.yaml")


def test_trials_rows_dataframe_and_best_params(
    client: Client, server: tuple[str, str], unique_name: Callable[..., str]
) -> None:
    study = client.submit(spec_dict(unique_name("rows")))
    epochs = [{"epoch": 1, "val_accuracy": 0.5, "flip_ratio": 0.01}]
    add_trials(
        server[1],
        client.get(study["id"]),
        [
            trial(0.91, 1e-3, seconds=2.5, worker_id="w1", epochs=epochs),
            trial(0.95, 1e-4, seconds=3.0, worker_id="w2", flip_ratio=0.002, epochs_run=6),
            trial(0.0, 1e-2, state=optuna.trial.TrialState.FAIL, error="boom"),
        ],
    )
    trials = client.trials(study["id"])
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert [t["number"] for t in client.trials(study["id"], state="fail")] == [2]

    rows = client.trial_rows(study["id"])
    assert rows[0] == {
        "number": 0,
        "state": "COMPLETE",
        "value_val_accuracy": 0.91,
        "params_gamma": 1e-3,
        "params_threshold": 0.0,  # include_zero's choice read as the value 0
        "flip_ratio": 0.01,  # from the last epoch
        "epochs": 1,
        "seconds": 2.5,
        "worker": "w1",
        "error": None,
    }
    assert rows[1]["flip_ratio"] == 0.002 and rows[1]["epochs"] == 6  # user attrs win
    assert rows[2]["state"] == "FAIL" and rows[2]["error"] == "boom"

    frame = client.trials_dataframe(study["id"])
    reference = optuna.load_study(
        study_name=client.get(study["id"])["optuna_study_name"], storage=server[1]
    ).trials_dataframe()
    assert list(frame.index) == list(reference["number"])
    assert list(frame["params_gamma"]) == list(reference["params_gamma"])
    accuracy = "value_val_accuracy"  # Optuna's column for a study with metric names
    assert frame[accuracy].tolist()[:2] == reference[accuracy].tolist()[:2]
    assert frame["state"].tolist() == reference["state"].tolist()

    assert client.best_params(study["id"]) == {"gamma": 1e-4, "threshold": 0.0}


def test_dataframe_without_pandas_names_the_extra(
    client: Client, unique_name: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    study = client.submit(spec_dict(unique_name("nopandas")))
    monkeypatch.setitem(sys.modules, "pandas", None)  # what a missing package looks like
    with pytest.raises(ImportError, match=r"pip install 'bnn-tune\[client\]'"):
        client.trials_dataframe(study["id"])


def test_best_params_of_an_empty_and_a_two_objective_study(
    client: Client, server: tuple[str, str], unique_name: Callable[..., str]
) -> None:
    empty = client.submit(spec_dict(unique_name("empty")))
    with pytest.raises(ClientError, match="no completed trial"):
        client.best_params(empty["id"])
    spec = spec_dict(unique_name("pareto"), objectives=["val_accuracy", "flip_ratio"])
    spec["pruner"] = {"name": "none"}
    two = client.submit(spec)
    add_trials(server[1], client.get(two["id"]), [trial([0.9, 0.01], 1e-3)])
    assert client.get(two["id"])["pareto_front"][0]["number"] == 0
    with pytest.raises(ClientError, match="pareto_front"):
        client.best_params(two["id"])


def test_plot_to_a_file(client: Client, unique_name: Callable[..., str], tmp_path: Path) -> None:
    study = client.submit(spec_dict(unique_name("plot")))
    data = client.plot(study["id"], "params", tmp_path / "out" / "p.svg")
    assert (tmp_path / "out" / "p.svg").read_bytes() == data
    assert b"<svg" in data[:500]
    assert client.plot(study["id"], "curves").startswith(b"\x89PNG")
    # trial and compare reach the route: a trial the study lacks is a 404 naming it.
    with pytest.raises(ApiError) as missing:
        client.plot(study["id"], "layer-flips", trial=7)
    assert missing.value.status_code == 404 and "trial" in str(missing.value)
    other = client.submit(spec_dict(unique_name("plot-other")))
    assert client.plot(study["id"], "filter", compare=other["id"]).startswith(b"\x89PNG")


def test_stop_wait_and_delete(
    client: Client, unique_name: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    study = client.submit(spec_dict(unique_name("stop")))
    assert client.stop(study["id"])["status"] in ("stopping", "stopped")
    final = client.wait(study["id"], progress=True, interval=0.2, timeout=30)
    assert final["status"] == "stopped"
    assert "0/10" in capsys.readouterr().err  # the bar, over the study's budget
    assert client.delete(study["id"])["status"] == "deleted"
    assert study["id"] not in [s["id"] for s in client.list_studies()]
    assert study["id"] in [s["id"] for s in client.list_studies(status="deleted")]


def test_resume_follows_the_contract(
    client: Client, server: tuple[str, str], unique_name: Callable[..., str]
) -> None:
    """POST /studies/{id}/resume {"add_trials": N} -> the study, budget grown by N."""
    study = client.submit(spec_dict(unique_name("resume")))
    client.stop(study["id"])
    client.wait(study["id"], progress=False, interval=0.2, timeout=30)
    resumed = client.resume(study["id"], add_trials=3)
    assert resumed["id"] == study["id"] and resumed["n_trials"] == 13
    assert resumed["status"] not in ("stopped", "stopping")


def test_progress_counts_budget_slots_not_retries() -> None:
    """A trial failed twice and retried counts once (through its last retry), capped."""
    trials = [
        {"number": 0, "state": "FAIL"},
        {"number": 1, "state": "FAIL", "retry_of": 0, "retry_history": [0]},
        {"number": 2, "state": "COMPLETE", "retry_of": 0, "retry_history": [0, 1]},
        {"number": 3, "state": "COMPLETE"},
        {"number": 4, "state": "RUNNING"},
        {"number": 5, "state": "FAIL"},
    ]
    assert finished_count(trials) == 3  # 2, 3 and 5
    assert finished_count(trials, budget=2) == 2
