"""The worker on the study lifecycle's edges, on PostgreSQL where the database decides:
seeded workers, a poisoned study, a missing data set, Optuna studies changed behind our back
(optuna-dashboard), stored specs of an older version, an unmigrated database."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from worker_helpers import fake_train, new_study, study_row, study_trials, worker_settings

from bnn_core.config import TrainConfig
from service.db import make_engine, session_scope
from service.lifecycle import Lifecycle
from service.models import Study, WorkerRecord
from service.settings import Settings
from service.studies import make_optuna_storage
from service.workers import waiting_reason
from worker.__main__ import main as worker_main
from worker.loop import run_study, run_worker
from worker.objective import claim_seed

optuna.logging.set_verbosity(optuna.logging.WARNING)

CONTINUOUS = {
    "gamma": {"low": 1e-6, "high": 1e-2, "log": True},
    "threshold": {"low": 1e-8, "high": 1e-4, "log": True},
}


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_seeded_workers_draw_distinct_yet_reproducible_params(
    postgres_url: str, sampler: str
) -> None:
    # Three workers on one seeded study: each fresh trial is sampled with the seed of its claim,
    # so no two trials share a parameter set (the same sampler seed in every worker drew 8
    # duplicates out of 12 before), and the seed each trial used is on the trial.
    study_id = new_study(
        postgres_url,
        n_trials=12,
        epochs=1,
        search_space=CONTINUOUS,
        sampler={"name": sampler, "seed": 0},
    )
    barrier = threading.Barrier(3)

    def work(index: int) -> None:
        settings = worker_settings(postgres_url, worker_id=f"seeded-{index}")
        barrier.wait()
        run_worker(settings, study_ids=[study_id], train_fn=fake_train(0.05))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trials = study_trials(postgres_url, study_id)
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(trials) == 12 and len(set(params)) == 12
    seeds = sorted(t.user_attrs["sampler_seed"] for t in trials)
    assert seeds == sorted(claim_seed(0, index) for index in range(12))
    if sampler == "random":  # the sampler seeded like a claim draws that trial's params again
        trial = trials[5]
        again = optuna.create_study(
            sampler=optuna.samplers.RandomSampler(seed=trial.user_attrs["sampler_seed"])
        ).ask()
        gamma = again.suggest_float("gamma", 1e-6, 1e-2, log=True)
        threshold = again.suggest_float("threshold", 1e-8, 1e-4, log=True)
        assert (gamma, threshold) == (trial.params["gamma"], trial.params["threshold"])


def test_a_poisoned_study_fails_and_never_stalls_the_next_one(postgres_url: str) -> None:
    # Every trial of the first study fails with a NUL byte in its error; PostgreSQL refuses NUL
    # in text, so the study's error write (made of the first trial's error) used to fail with a
    # DataError, which the worker retried forever as an outage: the second study never ran.
    poisoned = new_study(postgres_url, n_trials=2, max_retries=0)
    second = new_study(postgres_url, n_trials=2, epochs=3)

    def fail(config: TrainConfig) -> BaseException | None:
        return RuntimeError("no such folder data\x00/x") if config.epochs == 2 else None

    stop = threading.Event()
    timer = threading.Timer(60, stop.set)  # before the fix: a stall, ended here
    timer.start()
    try:
        settings = worker_settings(postgres_url)
        stats = run_worker(
            settings, stop, study_ids=[poisoned, second], train_fn=fake_train(fail=fail)
        )
    finally:
        timer.cancel()
    assert not stop.is_set(), "the worker stalled"
    assert stats.db_errors == 0
    row = study_row(postgres_url, poisoned)
    assert row.status == "failed"
    assert row.error is not None and "no such folder data?/x" in row.error
    assert study_row(postgres_url, second).status == "completed"


def test_a_worker_without_the_data_set_leaves_its_trials_to_others(
    postgres_url: str, tmp_path: Path
) -> None:
    study_id = new_study(postgres_url, n_trials=2, dataset="mnist", data_subdir="mnist-v2")
    stop = threading.Event()
    settings = worker_settings(
        postgres_url, once=False, worker_id="no-data", data_root=str(tmp_path)
    )
    thread = threading.Thread(
        target=run_worker, args=(settings, stop), kwargs={"study_ids": [study_id]}
    )
    thread.start()
    try:
        engine = make_engine(postgres_url)
        deadline = time.monotonic() + 20
        while True:
            with Session(engine) as session:
                record = session.scalars(
                    select(WorkerRecord).where(WorkerRecord.worker_id == "no-data")
                ).first()
                lacking = (record.lacking or {}) if record is not None else {}
                if lacking:
                    study = session.get(Study, study_id)
                    assert study is not None
                    reason = waiting_reason(session, study, live_after=30)
                    break
            assert time.monotonic() < deadline, "the worker never said what it lacks"
            time.sleep(0.2)
        engine.dispose()
    finally:
        stop.set()
        thread.join()
    assert list(lacking) == ["mnist in mnist-v2"]
    assert (
        "mnist-v2" in lacking["mnist in mnist-v2"]
        and "BNN_TUNE_DATA_ROOT" in lacking["mnist in mnist-v2"]
    )
    assert reason is not None and reason.startswith(
        "no live worker has data set mnist in mnist-v2"
    )
    row = study_row(postgres_url, study_id)
    assert (row.status, row.n_claimed) == ("queued", 0)  # no trial failed, no budget used
    assert study_trials(postgres_url, study_id) == []


def _delete_optuna_study(url: str, study_id: int) -> None:
    storage = make_optuna_storage(url)
    name = study_row(url, study_id).optuna_study_name
    storage.delete_study(storage.get_study_id_from_name(name))
    storage.engine.dispose()


def _rename_optuna_study(url: str, study_id: int) -> None:
    """What optuna-dashboard's rename does: a copy under the new name, the original deleted."""
    storage = make_optuna_storage(url)
    name = study_row(url, study_id).optuna_study_name
    optuna.copy_study(
        from_study_name=name,
        from_storage=storage,
        to_storage=storage,
        to_study_name=f"{name}-renamed",
    )
    storage.delete_study(storage.get_study_id_from_name(name))
    storage.engine.dispose()


@pytest.mark.parametrize("change", [_rename_optuna_study, _delete_optuna_study])
def test_an_optuna_study_changed_in_the_dashboard_fails_the_study(
    postgres_url: str, change: object
) -> None:
    queued = new_study(postgres_url, n_trials=2)
    done = new_study(postgres_url, n_trials=1)
    run_study(done, worker_settings(postgres_url), train_fn=fake_train())
    assert study_row(postgres_url, done).status == "completed"
    for study_id in (queued, done):
        change(postgres_url, study_id)  # type: ignore[operator]
    settings = worker_settings(postgres_url, grace_period_s=1)
    time.sleep(1.1)  # older than a grace period: not a study whose Optuna study is on its way
    stats = run_study(queued, settings, train_fn=fake_train())  # the worker detects it
    assert stats.trials == 0
    for study_id in (queued, done):
        row = study_row(postgres_url, study_id)
        assert row.status == "failed" and row.finished_at is not None
        assert row.error is not None and "optuna-dashboard" in row.error


def test_the_reaper_fails_a_running_study_whose_optuna_study_was_deleted(
    postgres_url: str,
) -> None:
    study_id = new_study(postgres_url, n_trials=3)
    run_worker(
        worker_settings(postgres_url, worker_max_trials=1),
        study_ids=[study_id],
        train_fn=fake_train(),
    )
    assert study_row(postgres_url, study_id).status == "running"
    _delete_optuna_study(postgres_url, study_id)
    time.sleep(1.1)  # older than a grace period: not a study whose Optuna study is on its way
    engine = make_engine(postgres_url)
    lifecycle = Lifecycle(Settings(database_url=postgres_url, grace_period_s=1), engine)
    try:
        lifecycle.reap_once()
        lifecycle.reap_once()  # and no loop on it afterwards
    finally:
        lifecycle.close()
        engine.dispose()
    row = study_row(postgres_url, study_id)
    assert row.status == "failed" and "is gone from the database" in (row.error or "")


def test_a_stored_spec_of_an_older_version_is_read_like_the_api_reads_it(sqlite_url: str) -> None:
    # Specs stored before data_dir/download were retired: stored_spec() drops those fields, so
    # the API shows the study; the worker re-validated with StudySpec.model_validate and failed
    # it as "invalid spec".
    study_id = new_study(sqlite_url, n_trials=1)
    engine = make_engine(sqlite_url)
    with session_scope(engine) as session:
        row = session.get(Study, study_id)
        assert row is not None
        row.spec = {**row.spec, "data_dir": "data", "download": False}
    engine.dispose()
    stats = run_study(study_id, worker_settings(sqlite_url), train_fn=fake_train())
    row = study_row(sqlite_url, study_id)
    assert (row.status, row.error, stats.trials) == ("completed", None, 1)


def test_an_unmigrated_database_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nowhere.db"
    code = worker_main(["--database-url", f"sqlite:///{missing}", "--once", "--device", "cpu"])
    assert code == 2 and not missing.exists()  # no empty database file left behind
    assert "bnn-tune migrate" in caplog.text
    empty = tmp_path / "empty.db"
    engine = make_engine(f"sqlite:///{empty}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE unrelated (x INTEGER)")
    engine.dispose()
    caplog.clear()
    code = worker_main(["--database-url", f"sqlite:///{empty}", "--once", "--device", "cpu"])
    assert code == 2 and "run `bnn-tune migrate`" in caplog.text
    assert "database unavailable" not in caplog.text
