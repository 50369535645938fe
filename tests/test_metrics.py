"""Prometheus metrics over real servers: the API's ``/metrics`` (real uvicorn, real PostgreSQL:
request counts and latencies per route template, studies by status, trials by state, live
workers by device, queue depth; an unreachable database is reported, not a 500) and a real
worker process' ``--metrics-port`` endpoint (trials finished, epoch time)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import optuna
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from service.app import create_app
from service.db import make_engine, session_scope
from service.settings import Settings
from service.spec import parse_spec
from service.studies import create_study, make_optuna_storage
from service.workers import register_worker

ROOT = Path(__file__).resolve().parent.parent
LiveServer = Callable[..., AbstractContextManager[str]]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _spec(name: str, n_trials: int) -> dict:
    return {
        "name": name,
        "optimizer": "bop",
        "model": "mlp",
        "dataset": "digits",
        "epochs": 2,
        "n_trials": n_trials,
        "sampler": {"name": "random", "seed": 0},
    }


def _create(url: str, name: str, n_trials: int) -> int:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            study = create_study(
                session, make_optuna_storage(url), parse_spec(_spec(name, n_trials))
            )
            session.commit()
            return int(study.id)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_api_metrics(fresh_postgres_url: str, live_server: LiveServer) -> None:
    url = fresh_postgres_url
    _create(url, "metrics-a", 5)
    storage = make_optuna_storage(url)
    optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage).ask()
    storage.engine.dispose()
    engine = make_engine(url)
    with session_scope(engine) as session:
        for i, (device, name) in enumerate([("cuda", "NVIDIA H200")] * 2 + [("cpu", "cpu")]):
            register_worker(
                session, worker_id=f"w{i}", hostname="box", pid=i, device=device, device_name=name
            )
    engine.dispose()
    app = create_app(Settings(database_url=url, reaper_interval_s=0))
    with live_server(app) as base:
        assert httpx.get(f"{base}/api/v1/studies/424242", timeout=10).status_code in (401, 404)
        response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples[("bnn_tune_database_up", ())] == 1
    assert samples[("bnn_tune_studies", (("status", "queued"),))] == 1
    assert samples[("bnn_tune_studies", (("status", "completed"),))] == 0
    assert samples[("bnn_tune_trials", (("state", "RUNNING"),))] == 1
    assert samples[("bnn_tune_queue_depth", ())] == 5  # the ask above claimed no budget
    cuda = (("device", "cuda"), ("device_name", "NVIDIA H200"))
    assert samples[("bnn_tune_live_workers", cuda)] == 2
    assert samples[("bnn_tune_live_workers", (("device", "cpu"), ("device_name", "cpu")))] == 1
    requests = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "bnn_tune_http_requests_total"
    }
    route = dict(next(iter(requests)))["route"]
    assert route == "/api/v1/studies/{study_id}", requests  # a template, never the id
    assert sum(requests.values()) == 1
    assert any(name == "bnn_tune_http_request_duration_seconds_count" for name, _ in samples)


def test_api_metrics_without_database(live_server: LiveServer) -> None:
    app = create_app(
        Settings(database_url="postgresql://nobody@127.0.0.1:1/none", reaper_interval_s=0)
    )
    with live_server(app) as base:
        response = httpx.get(f"{base}/metrics", timeout=30)
    assert response.status_code == 200
    samples = _samples(response.text)
    assert samples[("bnn_tune_database_up", ())] == 0
    assert not any(name == "bnn_tune_studies" for name, _ in samples)


@pytest.mark.slow
def test_worker_metrics_endpoint(fresh_sqlite_url: str) -> None:
    """A real worker trains one digits trial (2 epochs); its endpoint counts it and its epochs."""
    pytest.importorskip("torch")
    from service.cli.processes import free_port

    _create(fresh_sqlite_url, "metrics-w", 1)
    port = free_port()
    env = {**os.environ, "BNN_TUNE_DATABASE_URL": fresh_sqlite_url, "BNN_TUNE_DEVICE": "cpu"}
    env["BNN_TUNE_METRICS_ADDR"] = "127.0.0.1"
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker", "--metrics-port", str(port), "--poll-interval", "0.2"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        samples: dict = {}
        while time.monotonic() < deadline:
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            try:
                samples = _samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
            except httpx.TransportError:
                samples = {}
            if samples.get(("bnn_tune_worker_trials_finished_total", (("state", "COMPLETE"),))):
                break
            time.sleep(0.3)
        assert samples[("bnn_tune_worker_trials_finished_total", (("state", "COMPLETE"),))] == 1
        assert samples[("bnn_tune_worker_epoch_seconds_count", ())] == 2
        assert samples[("bnn_tune_worker_epoch_seconds_sum", ())] > 0
        assert not any(name.startswith("bnn_tune_worker_gpu") for name, _ in samples)  # CPU
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    assert worker.returncode == 0
