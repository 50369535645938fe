"""A stop reaches a running trial within a bounded number of steps, not at the end of its epoch:
a real digits trial (bnn_core, CPU) on PostgreSQL, stopped while its second epoch trains."""

from __future__ import annotations

import threading
import time

import pytest
from optuna.trial import TrialState
from worker_helpers import new_study, study_row, study_trials, worker_settings

from service.db import make_engine, session_scope
from service.lifecycle import request_stop
from worker.loop import run_study

pytestmark = pytest.mark.postgres


def test_stop_ends_a_trial_mid_epoch_within_seconds(postgres_url: str) -> None:
    # batch_size 2 on 800 images: 400 steps (several seconds) per epoch, polled every 20 steps
    study_id = new_study(postgres_url, n_trials=1, epochs=3, batch_size=2, max_train_samples=800)
    worker = threading.Thread(target=run_study, args=(study_id, worker_settings(postgres_url)))
    worker.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait for epoch 1: epoch 2 is training now
            trials = study_trials(postgres_url, study_id)
            if trials and len(trials[0].user_attrs.get("epochs", [])) >= 1:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the trial never finished its first epoch")
        engine = make_engine(postgres_url)
        with session_scope(engine) as session:
            assert request_stop(session, study_id)
        engine.dispose()
        asked = time.monotonic()
        while time.monotonic() < asked + 60:
            (trial,) = study_trials(postgres_url, study_id)
            if trial.state != TrialState.RUNNING:
                break
            time.sleep(0.05)
        latency = time.monotonic() - asked
    finally:
        worker.join(timeout=120)
    epoch_s = trial.user_attrs["epochs"][0]["seconds"]
    print(f"stop latency {latency:.2f} s; one epoch takes {epoch_s:.2f} s")
    # stopped inside epoch 2 (at its end, epochs_run would be 2), recorded as stopped
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["stop_reason"] == "study stopped"
    assert trial.user_attrs["epochs_run"] == 1
    assert trial.intermediate_values == {1: trial.user_attrs["epochs"][0]["val_accuracy"]}
    assert latency < 10, latency
    assert study_row(postgres_url, study_id).status == "stopped"
