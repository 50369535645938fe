"""service.lifecycle's rules against real databases: the transition table is the only way a
status changes, claims never pass the budget, and which database errors count as an outage."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from service.db import make_engine, session_scope
from service.lifecycle import (
    TRANSITIONS,
    claim_slot,
    is_connectivity_error,
    is_data_error,
    make_storage,
    request_stop,
    transition,
)
from service.models import STUDY_STATUSES, Study
from service.spec import parse_spec
from service.studies import create_study


def _new_study(url: str, name: str, n_trials: int = 2) -> int:
    engine = make_engine(url)
    storage = make_storage(url)
    spec = parse_spec({"name": name, "optimizer": "bop", "n_trials": n_trials})
    try:
        with session_scope(engine) as session:
            return create_study(session, storage, spec).id
    finally:
        storage.engine.dispose()
        engine.dispose()


def _status(url: str, study_id: int) -> str:
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            row = session.get(Study, study_id)
            assert row is not None
            return row.status
    finally:
        engine.dispose()


def test_the_table_covers_every_status_and_deleted_is_final() -> None:
    assert set(TRANSITIONS) == set(STUDY_STATUSES)
    assert all(targets <= set(STUDY_STATUSES) for targets in TRANSITIONS.values())
    assert TRANSITIONS["deleted"] == frozenset()
    assert "running" not in TRANSITIONS["completed"]  # a finished study never runs again


def test_transition_follows_the_table_only(
    database_url: str, unique_name: Callable[..., str]
) -> None:
    study_id = _new_study(database_url, unique_name("table"))
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            assert transition(session, study_id, "running")
            assert not transition(session, study_id, "running")  # running -> running: no edge
            assert transition(session, study_id, "completed")
            assert not transition(session, study_id, "stopping")
            with pytest.raises(ValueError, match="no transition to 'running'"):
                transition(session, study_id, "running", from_=("completed",))
            assert transition(session, study_id, "failed", error="bad\x00byte")
        assert _status(database_url, study_id) == "failed"
        with session_scope(engine) as session:
            row = session.get(Study, study_id)
            assert row is not None and row.error == "bad?byte" and row.finished_at is not None
    finally:
        engine.dispose()


def test_claims_stop_at_the_budget_and_stop_is_conditional(
    database_url: str, unique_name: Callable[..., str]
) -> None:
    fresh = _new_study(database_url, unique_name("stop-fresh"))
    claimed = _new_study(database_url, unique_name("stop-claimed"), n_trials=1)
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            assert claim_slot(session, claimed) == 0
            assert claim_slot(session, claimed) is None  # n_claimed never exceeds n_trials
            assert request_stop(session, fresh)  # no claim yet: stopped at once
            assert request_stop(session, claimed)  # a claim: its worker ends it
            assert not request_stop(session, fresh)
        assert (_status(database_url, fresh), _status(database_url, claimed)) == (
            "stopped",
            "stopping",
        )
    finally:
        engine.dispose()


def test_only_lost_connections_count_as_an_outage(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        with pytest.raises(DataError) as nul, engine.connect() as connection:
            connection.execute(text("SELECT CAST(:v AS text)"), {"v": "a\x00b"})
        with pytest.raises(DataError) as overflow, engine.connect() as connection:
            connection.execute(text("SELECT CAST(:v AS integer)"), {"v": 2**40})
        with pytest.raises(IntegrityError) as duplicate, engine.begin() as connection:
            connection.execute(text("CREATE TEMP TABLE t (x int PRIMARY KEY)"))
            connection.execute(text("INSERT INTO t VALUES (1), (1)"))
    finally:
        engine.dispose()
    closed = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/x", connect_args={"connect_timeout": 2}
    )
    with pytest.raises(OperationalError) as unreachable:
        closed.connect()
    closed.dispose()
    for data_fault in (nul.value, overflow.value, duplicate.value):
        assert not is_connectivity_error(data_fault)
        wrapped = optuna.exceptions.StorageInternalError("commit failed")
        wrapped.__cause__ = data_fault  # how Optuna's RDBStorage reports it
        assert not is_connectivity_error(wrapped)
        assert is_data_error(data_fault) and is_data_error(wrapped)
    assert is_connectivity_error(unreachable.value) and not is_data_error(unreachable.value)
    assert is_connectivity_error(ConnectionResetError())
    assert not is_connectivity_error(ValueError("not a database error"))
    assert not is_data_error(ValueError("not a database error"))
