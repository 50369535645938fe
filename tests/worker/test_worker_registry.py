"""A real worker loop keeps its bnn_workers row: registered, fresh while a trial trains,
``stopped`` at the end; registry errors never reach the loop or a trial."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import optuna
import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from worker_helpers import fake_train, new_study, study_row, worker_settings

from service.db import make_engine
from service.models import Study, WorkerRecord
from service.workers import waiting_reason
from worker.loop import run_study, run_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)

CPU_ONLY = "no live worker can train on cuda (live workers: 1 on cpu)"


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"fresh_{request.param}_url")


def _rows(url: str) -> list[WorkerRecord]:
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            return list(session.scalars(select(WorkerRecord)))
    finally:
        engine.dispose()


def _reason(url: str, study_id: int) -> str | None:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            study = session.get(Study, study_id)
            assert study is not None
            return waiting_reason(session, study, live_after=30)
    finally:
        engine.dispose()


def test_a_worker_registers_stays_fresh_while_training_and_ends_stopped(fresh_url: str) -> None:
    cuda_study = new_study(fresh_url, n_trials=1, device="cuda")
    cpu_study = new_study(fresh_url, n_trials=1, epochs=3)
    seen: list[tuple[Any, ...]] = []

    def look(epoch: int) -> None:  # inside the trial: the registry thread has written meanwhile
        (row,) = _rows(fresh_url)
        reason = _reason(fresh_url, cuda_study)
        seen.append((row.state, row.current_study_id, row.last_seen, reason))

    settings = worker_settings(fresh_url, worker_id="reg-1")
    stats = run_worker(
        settings,
        study_ids=[cuda_study, cpu_study],
        train_fn=fake_train(seconds_per_epoch=0.6, on_epoch=look),
    )
    assert stats.trials == 1 and stats.errors == 0
    assert seen[-1][:2] == ("training", cpu_study)
    assert seen[-1][2] > seen[0][2]  # refreshed during the 1.8 s trial (heartbeat 1 s)
    assert {s[3] for s in seen} == {CPU_ONLY}  # the CPU worker is live; the cuda study waits
    (row,) = _rows(fresh_url)
    assert (row.worker_id, row.state, row.current_study_id) == ("reg-1", "stopped", None)
    assert (row.device, row.device_name, row.trials_finished) == ("cpu", "cpu", 1)
    assert (row.hostname, row.pid) == (socket.gethostname(), os.getpid())
    assert row.started_at <= row.last_seen
    assert _reason(fresh_url, cuda_study) == "no live worker"  # stopped workers do not count
    assert study_row(fresh_url, cuda_study).status == "queued"


def test_registry_errors_never_reach_the_loop_or_trials(
    fresh_sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(fresh_sqlite_url)
    with engine.begin() as connection:  # e.g. a database not migrated to the registry yet
        connection.execute(text("DROP TABLE bnn_workers"))
    engine.dispose()
    study_id = new_study(fresh_sqlite_url, n_trials=2)
    with caplog.at_level(logging.WARNING, logger="worker.registration"):
        stats = run_study(study_id, worker_settings(fresh_sqlite_url), train_fn=fake_train())
    assert stats.by_state == {"COMPLETE": 2} and stats.errors == 0
    assert study_row(fresh_sqlite_url, study_id).status == "completed"
    warnings = [r for r in caplog.records if "worker registry not updated" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not once per beat
