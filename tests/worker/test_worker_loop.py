"""The worker loop in-process, on SQLite and PostgreSQL: budget, failures, stop, SIGTERM, stale."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx
import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import update
from worker_helpers import (
    fake_train,
    final_count,
    new_study,
    study_row,
    study_trials,
    worker_settings,
)

from bnn_core.config import ConfigError
from service.app import create_app
from service.db import make_engine, session_scope
from service.lifecycle import ACTIVE
from service.models import Study
from service.settings import Settings
from service.studies import make_optuna_storage
from worker.loop import Worker, run_study, run_worker
from worker.settings import WorkerSettings

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _states(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _set_status(url: str, study_id: int, status: str) -> None:
    engine = make_engine(url)
    with session_scope(engine) as session:
        session.execute(update(Study).where(Study.id == study_id).values(status=status))
    engine.dispose()


def test_tiny_digits_study_completes_with_exactly_n_trials(database_url: str) -> None:
    study_id = new_study(database_url, n_trials=3)
    stats = run_study(study_id, worker_settings(database_url))
    trials = study_trials(database_url, study_id)
    row = study_row(database_url, study_id)
    assert stats.trials == 3 and _states(trials) == {"COMPLETE": 3}
    assert (row.status, row.n_claimed) == ("completed", 3) and row.finished_at is not None
    best = max(trials, key=lambda t: t.values[0])
    assert 0.3 < best.values[0] <= 1.0 and {"gamma", "real_lr"} <= set(best.params)
    attrs = best.user_attrs
    assert attrs["device"] == "cpu" and attrs["worker_id"] and attrs["seconds"] > 0
    assert attrs["train_config"]["optimizer"]["name"] == "bop"
    epochs = attrs["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert {"train_loss", "val_accuracy", "flip_ratio", "flip_ratio_per_layer"} <= set(epochs[0])
    assert best.intermediate_values == {1: epochs[0]["val_accuracy"], 2: best.values[0]}


def test_a_diverging_trial_fails_alone(sqlite_url: str) -> None:
    study_id = new_study(sqlite_url, n_trials=4, sampler={"name": "random", "seed": 0})
    calls = iter(range(100))

    def fail(config: object) -> BaseException | None:
        return FloatingPointError("loss is NaN") if next(calls) == 1 else None

    stats = run_study(study_id, worker_settings(sqlite_url), train_fn=fake_train(fail=fail))
    trials = study_trials(sqlite_url, study_id)
    assert stats.by_state == {"COMPLETE": 3, "FAIL": 1}
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.user_attrs["error"] == "FloatingPointError: loss is NaN"
    assert study_row(sqlite_url, study_id).status == "completed"


def test_a_study_whose_every_trial_fails_ends_failed_not_completed(
    database_url: str, live_server: Callable[..., AbstractContextManager[str]]
) -> None:
    # Every trial raises (a config bnn_core refuses): each fails, but not the worker.
    study_id = new_study(database_url, n_trials=2)
    refuse = fake_train(fail=lambda c: ConfigError("model", "cannot build it"))
    stats = run_study(study_id, worker_settings(database_url), train_fn=refuse)
    trials = study_trials(database_url, study_id)
    assert stats.by_state == {"FAIL": 2} and stats.errors == 0
    assert all("ConfigError" in t.user_attrs["error"] for t in trials)
    row = study_row(database_url, study_id)
    assert row.status == "failed" and row.finished_at is not None
    first = trials[0].user_attrs["error"]
    assert row.error == f"all 2 trials failed; first error: {first}"
    app = create_app(Settings(database_url=database_url, reaper_interval_s=0))
    with live_server(app) as base, httpx.Client(base_url=base) as client:
        body = client.get(f"/api/v1/studies/{study_id}").json()
    assert (body["status"], body["error"]) == ("failed", row.error)
    assert body["progress"]["n_failed"] == 2 and body["best_trial"] is None


def test_pruned_and_multi_objective_values(sqlite_url: str) -> None:
    study_id = new_study(
        sqlite_url, n_trials=2, epochs=3, objectives=["val_accuracy", "flip_ratio"]
    )
    run_study(study_id, worker_settings(sqlite_url), train_fn=fake_train())
    trials = study_trials(sqlite_url, study_id)
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in trials)
    assert all(t.values[1] == 0.01 for t in trials)


@pytest.mark.postgres
def test_concurrent_workers_respect_the_budget_exactly(postgres_url: str) -> None:
    study_id = new_study(postgres_url, n_trials=9)
    settings = worker_settings(postgres_url, once=False, poll_interval_s=0.05)
    stop = threading.Event()
    workers = [
        threading.Thread(
            target=run_worker,
            args=(settings.model_copy(update={"worker_id": f"w{i}"}), stop),
            kwargs={"study_ids": [study_id], "train_fn": fake_train(0.05)},
        )
        for i in range(3)
    ]
    for thread in workers:
        thread.start()
    deadline = time.monotonic() + 60
    while study_row(postgres_url, study_id).status != "completed":
        assert time.monotonic() < deadline, "study did not complete"
        time.sleep(0.1)
    stop.set()
    for thread in workers:
        thread.join(timeout=10)
    trials = study_trials(postgres_url, study_id)
    assert _states(trials) == {"COMPLETE": 9}
    assert len({t.user_attrs["worker_id"] for t in trials}) >= 2
    assert study_row(postgres_url, study_id).n_claimed == 9


def test_stop_prunes_the_running_trial_and_sets_stopped(sqlite_url: str) -> None:
    study_id = new_study(sqlite_url, n_trials=5, epochs=20)

    def on_epoch(epoch: int) -> None:
        if epoch == 2:
            _set_status(sqlite_url, study_id, "stopping")

    settings = worker_settings(sqlite_url)
    stats = run_study(study_id, settings, train_fn=fake_train(0.6, on_epoch=on_epoch))
    trials = study_trials(sqlite_url, study_id)
    assert stats.trials == 1 and _states(trials) == {"PRUNED": 1}
    assert trials[0].user_attrs["stop_reason"] == "study stopped"
    assert len(trials[0].user_attrs["epochs"]) < 20
    row = study_row(sqlite_url, study_id)
    assert row.status == "stopped" and row.finished_at is not None


def test_sigterm_fails_the_trial_and_enqueues_a_retry(sqlite_url: str) -> None:
    study_id = new_study(sqlite_url, n_trials=2, epochs=5)
    stop = threading.Event()

    def on_epoch(epoch: int) -> None:
        if epoch == 2:
            stop.set()  # what the SIGTERM handler does

    train = fake_train(0, on_epoch=on_epoch)
    first = run_study(study_id, worker_settings(sqlite_url), stop, train_fn=train)
    assert first.by_state == {"FAIL": 1}
    trials = study_trials(sqlite_url, study_id)
    assert _states(trials) == {"FAIL": 1, "WAITING": 1}
    failed, waiting = trials
    assert failed.user_attrs["error"] == "worker terminated"
    assert waiting.system_attrs["failed_trial"] == failed.number
    assert waiting.params == failed.params and "error" not in waiting.user_attrs
    second = run_study(study_id, worker_settings(sqlite_url), train_fn=fake_train())
    trials = study_trials(sqlite_url, study_id)
    assert second.by_state == {"COMPLETE": 2}
    assert _states(trials) == {"FAIL": 1, "COMPLETE": 2} and final_count(trials) == 2
    row = study_row(sqlite_url, study_id)
    assert (row.status, row.n_claimed) == ("completed", 2)


def _claim_then_die(settings: WorkerSettings, study_id: int) -> optuna.Trial:
    """A worker that claims a trial, sends one heartbeat and then "dies" (stops beating)."""
    dead = Worker(settings, study_ids=[study_id])
    (row,) = dead.lifecycle.studies(ACTIVE, [study_id])
    handle = dead.lifecycle.open(row)
    assert handle is not None
    claimed = dead.lifecycle.claim(handle)
    assert claimed is not None
    trial = claimed[0]
    handle.storage.record_heartbeat(trial._trial_id)
    dead.close()
    return trial


def test_a_stale_trial_of_a_dead_worker_is_failed_and_retried(database_url: str) -> None:
    study_id = new_study(database_url, n_trials=2, max_retries=1)
    settings = worker_settings(database_url, grace_period_s=1)
    trial = _claim_then_die(settings, study_id)
    time.sleep(2.5)
    stats = run_study(study_id, settings, train_fn=fake_train())
    trials = study_trials(database_url, study_id)
    assert stats.by_state == {"COMPLETE": 2}
    assert _states(trials) == {"FAIL": 1, "COMPLETE": 2} and final_count(trials) == 2
    retry = next(t for t in trials if "failed_trial" in t.system_attrs)
    assert retry.system_attrs["failed_trial"] == trial.number
    assert study_row(database_url, study_id).status == "completed"


def test_a_stale_trial_retried_while_stopping_leaves_no_waiting_trial(database_url: str) -> None:
    study_id = new_study(database_url, n_trials=2, max_retries=1)
    settings = worker_settings(database_url, grace_period_s=1)
    trial = _claim_then_die(settings, study_id)
    _set_status(database_url, study_id, "stopping")
    time.sleep(2.5)
    stats = run_study(study_id, settings, train_fn=fake_train())
    trials = study_trials(database_url, study_id)
    assert stats.trials == 0
    assert _states(trials) == {"FAIL": 2}  # the stale trial and its never-run retry
    assert trials[1].system_attrs["failed_trial"] == trial.number
    assert trials[1].user_attrs["error"] == "study stopped before the retry ran"
    assert study_row(database_url, study_id).status == "stopped"


def test_sigterm_in_a_stopping_study_does_not_enqueue_a_retry(sqlite_url: str) -> None:
    study_id = new_study(sqlite_url, n_trials=2, epochs=5)
    stop = threading.Event()

    def on_epoch(epoch: int) -> None:
        if epoch == 2:
            _set_status(sqlite_url, study_id, "stopping")
            stop.set()  # SIGTERM at the same time as the stop

    train = fake_train(0, on_epoch=on_epoch)
    stats = run_study(study_id, worker_settings(sqlite_url), stop, train_fn=train)
    trials = study_trials(sqlite_url, study_id)
    assert stats.by_state == {"PRUNED": 1} and _states(trials) == {"PRUNED": 1}
    assert trials[0].user_attrs["stop_reason"] == "study stopped"
    run_study(study_id, worker_settings(sqlite_url), train_fn=fake_train())
    assert study_row(sqlite_url, study_id).status == "stopped"


def test_after_an_outage_live_trials_get_a_grace_period_to_beat_again(database_url: str) -> None:
    study_id = new_study(database_url, n_trials=2, max_retries=1)
    settings = worker_settings(database_url, grace_period_s=1)
    other = Worker(settings, study_ids=[study_id])  # a live worker, training one trial
    (row,) = other.lifecycle.studies(ACTIVE, [study_id])
    theirs = other.lifecycle.open(row)
    assert theirs is not None
    claimed = other.lifecycle.claim(theirs)
    assert claimed is not None
    trial = claimed[0]
    theirs.storage.record_heartbeat(trial._trial_id)
    me = Worker(settings, study_ids=[study_id])
    (row,) = me.lifecycle.studies(ACTIVE, [study_id])
    mine = me.lifecycle.open(row)
    assert mine is not None
    me.lifecycle.clock.reached(False)  # the database goes down: nobody's beats get through
    time.sleep(1.5)
    me.lifecycle.recover(mine)
    me.lifecycle.clock.reached(True)  # it is back (what the loop and the heartbeat thread report)
    me.lifecycle.recover(mine)
    state = theirs.storage.get_trial(trial._trial_id).state
    assert state == TrialState.RUNNING  # its worker has not had the chance to beat again
    time.sleep(1.2)  # a whole grace period back, still no beat: that worker is gone
    me.lifecycle.recover(mine)
    assert theirs.storage.get_trial(trial._trial_id).state == TrialState.FAIL
    other.close()
    me.close()


def test_a_cpu_worker_leaves_cuda_studies_to_gpu_workers(sqlite_url: str) -> None:
    gpu_study = new_study(sqlite_url, n_trials=1, device="cuda:1")
    any_study = new_study(sqlite_url, n_trials=1, device="auto")
    stats = run_worker(
        worker_settings(sqlite_url, device="cpu"),
        study_ids=[gpu_study, any_study],
        train_fn=fake_train(),
    )
    assert stats.trials == 1
    assert study_trials(sqlite_url, gpu_study) == []
    row = study_row(sqlite_url, gpu_study)
    assert (row.status, row.n_claimed) == ("queued", 0)
    assert study_row(sqlite_url, any_study).status == "completed"


def test_timeout_stops_starting_trials(sqlite_url: str) -> None:
    study_id = new_study(sqlite_url, n_trials=50, timeout_s=0.5)
    stats = run_study(study_id, worker_settings(sqlite_url), train_fn=fake_train(0.2))
    assert 1 <= stats.trials < 50
    assert study_row(sqlite_url, study_id).status == "completed"


def test_timeout_ends_the_running_trial_at_its_next_epoch(sqlite_url: str) -> None:
    study_id = new_study(sqlite_url, n_trials=3, epochs=100, timeout_s=1.5)
    started = time.monotonic()
    stats = run_study(study_id, worker_settings(sqlite_url), train_fn=fake_train(0.05))
    assert time.monotonic() - started < 4.5  # not the 5 s of 100 epochs
    (trial,) = study_trials(sqlite_url, study_id)
    assert stats.by_state == {"PRUNED": 1}
    assert trial.user_attrs["stop_reason"] == "study timed out"
    assert 10 <= len(trial.user_attrs["epochs"]) < 100
    assert study_row(sqlite_url, study_id).status == "completed"


def test_an_infeasible_filter_sample_is_pruned_without_training(sqlite_url: str) -> None:
    space = {
        "alpha": {"choices": [0.5]},
        "gamma": {"choices": [0.1, 0.9]},
        "real_lr": 0.01,
        "alpha_schedule": "constant",  # alpha <= gamma is a symmetry only for a constant alpha
    }
    study_id = new_study(
        sqlite_url,
        optimizer="filter",
        search_space=space,
        n_trials=6,
        sampler={"name": "random", "seed": 0},
    )
    run_study(study_id, worker_settings(sqlite_url), train_fn=fake_train())
    for trial in study_trials(sqlite_url, study_id):
        if trial.params["gamma"] < 0.5:
            assert trial.state == TrialState.PRUNED
            assert trial.user_attrs["error"] == "alpha > gamma"
        else:
            assert trial.state == TrialState.COMPLETE


def test_config_error_is_recorded(sqlite_url: str) -> None:
    study_id = new_study(sqlite_url, n_trials=1)
    boom = fake_train(fail=lambda c: ConfigError("data_dir", "no such directory"))
    run_study(study_id, worker_settings(sqlite_url), train_fn=boom)
    (trial,) = study_trials(sqlite_url, study_id)
    assert trial.user_attrs["error"] == "ConfigError: data_dir: no such directory"
    storage = make_optuna_storage(sqlite_url)
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL
    storage.engine.dispose()


def test_an_orphaned_trial_without_heartbeat_is_failed_and_retried(sqlite_url: str) -> None:
    study_id = new_study(sqlite_url, n_trials=2)
    settings = worker_settings(sqlite_url, orphan_after_s=0.5)
    dead = Worker(settings, study_ids=[study_id])  # dies between ask() and its first heartbeat
    (row,) = dead.lifecycle.studies(ACTIVE, [study_id])
    handle = dead.lifecycle.open(row)
    assert handle is not None and dead.lifecycle.claim(handle) is not None
    dead.close()
    time.sleep(0.7)
    stats = run_study(study_id, settings, train_fn=fake_train())
    trials = study_trials(sqlite_url, study_id)
    assert stats.by_state == {"COMPLETE": 2} and final_count(trials) == 2
    orphan = trials[0]
    assert orphan.state == TrialState.FAIL and orphan.user_attrs["error"].startswith("orphaned")
    assert study_row(sqlite_url, study_id).status == "completed"


def test_a_leaked_claim_is_given_back(sqlite_url: str) -> None:
    study_id = new_study(sqlite_url, n_trials=2)
    engine = make_engine(sqlite_url)
    with session_scope(engine) as session:  # a claim whose worker died before ask()
        session.execute(update(Study).where(Study.id == study_id).values(n_claimed=1))
    engine.dispose()
    worker = Worker(worker_settings(sqlite_url, orphan_after_s=0.3), train_fn=fake_train())
    worker.study_ids = [study_id]
    assert worker.run().trials == 1  # the one claim left; then it sees 1 trial for 2 claims
    time.sleep(0.4)
    worker.run()  # gives the leaked claim back
    worker.run()  # runs the second trial and completes the study
    trials = study_trials(sqlite_url, study_id)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    row = study_row(sqlite_url, study_id)
    assert (row.status, row.n_claimed) == ("completed", 2)


def test_median_pruner_prunes_bad_trials(sqlite_url: str) -> None:
    study_id = new_study(
        sqlite_url,
        n_trials=8,
        epochs=4,
        search_space={"real_lr": {"choices": [0.001, 0.05]}},
        sampler={"name": "random", "seed": 5},  # the first two (startup) trials draw 0.05
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    )
    run_study(study_id, worker_settings(sqlite_url), train_fn=fake_train())
    trials = study_trials(sqlite_url, study_id)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.params["real_lr"] == 0.001 for t in pruned)
    assert all(t.user_attrs["stop_reason"] == "pruned" for t in pruned)
    assert final_count(trials) == 8


def test_stacked_trials_share_the_budget(sqlite_url: str) -> None:
    study_id = new_study(sqlite_url, n_trials=5, epochs=2, trials_per_gpu=3)
    stats = run_study(study_id, worker_settings(sqlite_url, stack_on_cpu=True))
    trials = study_trials(sqlite_url, study_id)
    assert stats.by_state == {"COMPLETE": 5} and len(trials) == 5
    assert all(len(t.user_attrs["epochs"]) == 2 for t in trials)
    assert all(t.intermediate_values and t.values[0] > 0 for t in trials)
    row = study_row(sqlite_url, study_id)
    assert (row.status, row.n_claimed) == ("completed", 5)


def test_stacked_trials_stop_with_the_study(sqlite_url: str) -> None:
    # Stop once the first epoch is reported (a fixed delay raced warm, fast trials); 200 epochs
    # outlast the worker's once-a-second status check by far.
    study_id = new_study(sqlite_url, n_trials=6, epochs=200, trials_per_gpu=2)

    def stopper() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(t.intermediate_values for t in study_trials(sqlite_url, study_id)):
                break
            time.sleep(0.05)
        _set_status(sqlite_url, study_id, "stopping")

    thread = threading.Thread(target=stopper)
    thread.start()
    run_study(study_id, worker_settings(sqlite_url, stack_on_cpu=True))
    thread.join()
    trials = study_trials(sqlite_url, study_id)
    assert trials and all(t.state == TrialState.PRUNED for t in trials)
    assert all(t.user_attrs["stop_reason"] == "study stopped" for t in trials)
    assert study_row(sqlite_url, study_id).status == "stopped"
