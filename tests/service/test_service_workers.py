"""The worker registry (bnn_workers): migration, the can_train rule, live flags, waiting_reason,
and GET /workers + a study's waiting_reason through a real server, on SQLite and PostgreSQL.

Each test gets a fresh database: the registry is global (every worker of a database counts), so
rows of other tests in a session database would change the answers."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import func, inspect, select, update
from sqlalchemy.orm import Session

from service.app import create_app
from service.db import make_engine, session_scope
from service.migrate import _alembic_config, check_migrated
from service.migrate import upgrade as migrate_upgrade
from service.models import Study, WorkerRecord
from service.settings import Settings
from service.spec import parse_spec
from service.studies import create_study, make_optuna_storage
from service.workers import (
    can_train,
    forget_old_workers,
    list_workers,
    live_after_s,
    mark_worker_stopped,
    reason_to_wait,
    register_worker,
    update_worker,
    waiting_reason,
)

LIVE_AFTER = 30.0
CPU_ONLY = "no live worker can train on cuda (live workers: 1 on cpu)"


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"fresh_{request.param}_url")


@pytest.fixture
def engine(fresh_url: str) -> Iterator[Any]:
    engine = make_engine(fresh_url)
    yield engine
    engine.dispose()


def _register(engine: Any, worker_id: str, device: str, **kwargs: Any) -> None:
    with session_scope(engine) as session:
        register_worker(
            session,
            worker_id=worker_id,
            hostname="host",
            pid=123,
            device=device,
            device_name="NVIDIA H200" if device.startswith("cuda") else "cpu",
            **kwargs,
        )


def _age(engine: Any, worker_id: str, seconds: float) -> None:
    """Move ``last_seen`` ``seconds`` into the past (by the database's clock)."""
    with session_scope(engine) as session:
        now = session.scalar(select(func.current_timestamp()))
        session.execute(
            update(WorkerRecord)
            .where(WorkerRecord.worker_id == worker_id)
            .values(last_seen=now - timedelta(seconds=seconds))
        )


def _new_study(url: str, **overrides: Any) -> int:
    spec = parse_spec(
        {
            "name": f"reg-{uuid.uuid4().hex[:10]}",
            "optimizer": "bop",
            "n_trials": 2,
            "epochs": 1,
            **overrides,
        }
    )
    engine = make_engine(url)
    storage = make_optuna_storage(url)
    try:
        with Session(engine) as session:
            return create_study(session, storage, spec).id
    finally:
        storage.engine.dispose()
        engine.dispose()


def _reason(engine: Any, study_id: int) -> str | None:
    with Session(engine) as session:
        study = session.get(Study, study_id)
        assert study is not None
        return waiting_reason(session, study, LIVE_AFTER)


@pytest.mark.parametrize(
    ("worker", "study", "expected"),
    [
        ("cpu", "auto", True),
        ("cpu", "cpu", True),
        ("cpu", "cuda", False),
        ("cpu", "cuda:1", False),
        ("cpu", "mps", False),
        ("cuda", "auto", True),
        ("cuda", "cpu", True),
        ("cuda", "cuda", True),
        ("cuda", "cuda:1", True),  # which GPU is the worker's choice (CUDA_VISIBLE_DEVICES)
        ("cuda:1", "cuda", True),
        ("cuda:0", "cuda:3", True),
        ("cuda", "mps", False),
    ],
)
def test_can_train_truth_table(worker: str, study: str, expected: bool) -> None:
    assert can_train(worker, study) is expected


def test_reason_to_wait_without_a_database() -> None:
    assert reason_to_wait("queued", "cuda", []) == "no live worker"
    assert reason_to_wait("queued", "auto", []) == "no live worker"
    assert reason_to_wait("running", "cuda", ["cpu", "cpu", "cuda:1"]) is None
    expected = "no live worker can train on cuda:1 (live workers: 2 on cpu)"
    assert reason_to_wait("running", "cuda:1", ["cpu", "cpu"]) == expected
    for status in ("stopping", "stopped", "completed", "failed", "deleted"):
        assert reason_to_wait(status, "cuda", []) is None


def test_live_after_is_the_grace_period_or_two_heartbeats() -> None:
    assert live_after_s(Settings(grace_period_s=30, heartbeat_interval_s=10)) == 30
    assert live_after_s(Settings(grace_period_s=5, heartbeat_interval_s=10)) == 20


def test_migrations_0002_and_0003_create_and_drop_bnn_workers(fresh_url: str) -> None:
    engine = make_engine(fresh_url)
    try:
        config = _alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0001")
        with engine.connect() as connection:
            assert "bnn_workers" not in inspect(connection).get_table_names()
        assert "0001" in (check_migrated(engine) or "")
        migrate_upgrade(fresh_url)
        assert check_migrated(engine) is None
        with engine.connect() as connection:
            columns = {c["name"]: c for c in inspect(connection).get_columns("bnn_workers")}
            primary = inspect(connection).get_pk_constraint("bnn_workers")
    finally:
        engine.dispose()
    assert set(columns) == {
        "worker_id",
        "hostname",
        "pid",
        "device",
        "device_name",
        "started_at",
        "last_seen",
        "current_study_id",
        "trials_finished",
        "state",
        "lacking",  # 0003
    }
    assert columns["lacking"]["nullable"]
    assert primary["constrained_columns"] == ["worker_id"]
    assert columns["current_study_id"]["nullable"] and not columns["last_seen"]["nullable"]


def test_cpu_worker_and_cuda_study_then_a_gpu_worker(fresh_url: str, engine: Any) -> None:
    cuda = _new_study(fresh_url, device="cuda")
    anywhere = _new_study(fresh_url, device="auto")
    assert _reason(engine, cuda) == "no live worker"
    assert _reason(engine, anywhere) == "no live worker"
    _register(engine, "cpu-1", "cpu")
    assert _reason(engine, cuda) == CPU_ONLY
    assert _reason(engine, anywhere) is None
    _register(engine, "gpu-1", "cuda:1")
    assert _reason(engine, cuda) is None
    _age(engine, "gpu-1", LIVE_AFTER + 5)  # its worker died: not live any more
    assert _reason(engine, cuda) == CPU_ONLY
    with session_scope(engine) as session:  # it is back
        assert update_worker(
            session, "gpu-1", state="training", current_study_id=cuda, trials_finished=3
        )
    assert _reason(engine, cuda) is None
    with session_scope(engine) as session:
        assert mark_worker_stopped(session, "gpu-1", trials_finished=4)
        assert not mark_worker_stopped(session, "never-registered", trials_finished=0)
        session.execute(update(Study).where(Study.id == cuda).values(status="completed"))
    assert _reason(engine, cuda) is None  # no work left: nothing to wait for


def test_list_workers_live_flags(engine: Any) -> None:
    _register(engine, "b-stale", "cuda")
    _register(engine, "c-live", "cpu", state="training", current_study_id=7, trials_finished=2)
    _register(engine, "a-stopped", "cpu")
    _age(engine, "b-stale", LIVE_AFTER + 5)
    with session_scope(engine) as session:
        mark_worker_stopped(session, "a-stopped", trials_finished=1)
    with Session(engine) as session:
        workers = list_workers(session, LIVE_AFTER)
    assert [(w.worker_id, w.live) for w in workers] == [
        ("c-live", True),
        ("a-stopped", False),
        ("b-stale", False),
    ]
    live = workers[0]
    assert (live.state, live.current_study_id, live.trials_finished) == ("training", 7, 2)
    assert live.seen_s_ago < 5 and live.last_seen.tzinfo is not None
    assert LIVE_AFTER < workers[2].seen_s_ago < LIVE_AFTER + 10


def test_registering_again_resets_the_row_and_old_rows_are_forgotten(engine: Any) -> None:
    _register(engine, "w", "cpu", state="training", current_study_id=1, trials_finished=9)
    _register(engine, "w", "cuda")  # a restart with the same worker id
    _register(engine, "ancient", "cpu")
    _age(engine, "ancient", 8 * 24 * 3600)
    with session_scope(engine) as session:
        assert forget_old_workers(session) == 1
    with Session(engine) as session:
        (row,) = session.scalars(select(WorkerRecord)).all()
    assert (row.worker_id, row.device, row.state, row.trials_finished) == ("w", "cuda", "idle", 0)
    assert row.current_study_id is None


def test_workers_and_waiting_reason_through_the_api(
    fresh_url: str, engine: Any, live_server: Callable[..., AbstractContextManager[str]]
) -> None:
    cuda = _new_study(fresh_url, device="cuda")
    done = _new_study(fresh_url, device="cuda")
    with session_scope(engine) as session:
        session.execute(update(Study).where(Study.id == done).values(status="stopped"))
    _register(engine, "cpu-1", "cpu", state="training", current_study_id=cuda, trials_finished=1)
    _register(engine, "gone", "cuda")
    _age(engine, "gone", 3600)
    app = create_app(Settings(database_url=fresh_url, reaper_interval_s=0))
    with live_server(app) as base, httpx.Client(base_url=f"{base}/api/v1") as client:
        workers = client.get("/workers").json()
        study = client.get(f"/studies/{cuda}").json()
        listed = {s["id"]: s for s in client.get("/studies").json()["data"]}
        stopped = client.get(f"/studies/{done}").json()
    assert workers["count"] == 2
    first, second = workers["data"]
    assert (first["worker_id"], first["live"], first["device"]) == ("cpu-1", True, "cpu")
    assert (first["state"], first["current_study_id"], first["trials_finished"]) == (
        "training",
        cuda,
        1,
    )
    assert (second["worker_id"], second["live"], second["device_name"]) == (
        "gone",
        False,
        "NVIDIA H200",
    )
    assert study["waiting_reason"] == CPU_ONLY
    assert listed[cuda]["waiting_reason"] == CPU_ONLY
    assert stopped["waiting_reason"] is None and listed[done]["waiting_reason"] is None
