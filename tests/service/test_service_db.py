"""The study-wide budget counter and status updates of :mod:`service.lifecycle`."""

from __future__ import annotations

from collections.abc import Callable

from service.db import make_engine, session_scope
from service.lifecycle import claim_slot, release_slot, transition
from service.models import Study
from service.spec import parse_spec
from service.studies import create_study, make_optuna_storage


def test_claims_stop_at_the_budget(database_url: str, unique_name: Callable[..., str]) -> None:
    engine = make_engine(database_url)
    storage = make_optuna_storage(database_url)
    spec = parse_spec({"name": unique_name("budget"), "optimizer": "bop", "n_trials": 2})
    with session_scope(engine) as session:
        study_id = create_study(session, storage, spec).id
    claims = []
    for _ in range(3):
        with session_scope(engine) as session:
            claims.append(claim_slot(session, study_id))
    assert claims == [0, 1, None]  # each claim's index, then the budget is used up
    with session_scope(engine) as session:
        row = session.get(Study, study_id)
        assert row is not None
        assert (row.status, row.n_claimed, row.started_at is not None) == ("running", 2, True)
        release_slot(session, study_id)
    with session_scope(engine) as session:
        assert transition(session, study_id, "stopping")
    with session_scope(engine) as session:
        assert claim_slot(session, study_id) is None  # only queued/running studies hand out
        assert transition(session, study_id, "stopped")
    with session_scope(engine) as session:
        row = session.get(Study, study_id)
        assert row is not None and row.n_claimed == 1
        assert row.status == "stopped" and row.finished_at is not None
        assert row.finished_at.tzinfo is not None
    storage.engine.dispose()
    engine.dispose()
