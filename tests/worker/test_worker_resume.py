"""A failed study, its cause fixed, resumed: the real worker loop (PostgreSQL, a stand-in
trainer) runs exactly its failed trials again and the study completes; the budget invariant
holds across the resume."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState
from worker_helpers import fake_train, new_study, study_row, study_trials, worker_settings

from service.db import make_engine, session_scope
from service.lifecycle import resume
from worker.loop import run_study

pytestmark = pytest.mark.postgres


def test_failed_study_resumed_runs_its_failed_trials_again(postgres_url: str) -> None:
    study_id = new_study(postgres_url, n_trials=3)

    def missing(config: object) -> BaseException | None:
        return FileNotFoundError("no data set in /data/digits")

    run_study(study_id, worker_settings(postgres_url), train_fn=fake_train(fail=missing))
    row = study_row(postgres_url, study_id)
    assert row.status == "failed" and "no data set" in (row.error or "")
    failed = study_trials(postgres_url, study_id)
    assert len(failed) == 3 and {t.state for t in failed} == {TrialState.FAIL}  # not retried

    engine = make_engine(postgres_url)
    with session_scope(engine) as session:
        assert resume(session, row, None) == 3  # the 3 failed slots come back
    engine.dispose()
    run_study(study_id, worker_settings(postgres_url), train_fn=fake_train())

    row = study_row(postgres_url, study_id)
    trials = study_trials(postgres_url, study_id)
    assert (row.status, row.error, row.n_trials, row.n_claimed) == ("completed", None, 6, 6)
    new = trials[len(failed) :]
    assert len(new) == 3 and {t.state for t in new} == {TrialState.COMPLETE}
    assert len(new) + len(failed) == row.n_claimed  # COMPLETE + finally-FAILED == claims
