"""Helpers for the worker tests: create studies through the service code, fake trainers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from optuna.trial import FrozenTrial
from sqlalchemy.orm import Session

from bnn_core.config import EpochMetrics, TrainConfig, TrainResult
from service.db import make_engine
from service.models import Study
from service.spec import parse_spec
from service.studies import create_study, make_optuna_storage
from service.trial_views import load_trials
from worker.settings import WorkerSettings

TINY = {
    "optimizer": "bop",
    "model": "mlp",
    "dataset": "digits",
    "epochs": 2,
    "batch_size": 50,
    "max_train_samples": 300,
    "n_trials": 4,
}


def unique_name(prefix: str = "w") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_study(url: str, **overrides: Any) -> int:
    """Create a study (row + Optuna study) the way the API does; return its id."""
    spec = parse_spec({"name": unique_name("w"), **TINY, **overrides})
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return create_study(session, make_optuna_storage(url), spec).id
    finally:
        engine.dispose()


def study_row(url: str, study_id: int) -> Study:
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as session:
            row = session.get(Study, study_id)
            assert row is not None
            return row
    finally:
        engine.dispose()


def study_trials(url: str, study_id: int) -> list[FrozenTrial]:
    storage = make_optuna_storage(url)
    try:
        return load_trials(storage, study_row(url, study_id))
    finally:
        storage.engine.dispose()


def worker_settings(url: str, **overrides: Any) -> WorkerSettings:
    base: dict[str, Any] = {
        "database_url": url,
        "device": "cpu",
        "poll_interval_s": 0.1,
        "heartbeat_interval_s": 1,
        "grace_period_s": 3,
        "once": True,
    }
    return WorkerSettings(**{**base, **overrides})


def fake_train(
    seconds_per_epoch: float = 0.0,
    fail: Callable[[TrainConfig], BaseException | None] | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> Callable[..., TrainResult]:
    """A stand-in for ``bnn_core.train.train``: val_accuracy grows with real_lr, no torch."""

    def train(config: TrainConfig, on_epoch_end: Any = None) -> TrainResult:
        if fail is not None and (exc := fail(config)) is not None:
            raise exc
        history = []
        for epoch in range(1, config.epochs + 1):
            time.sleep(seconds_per_epoch)
            if on_epoch is not None:
                on_epoch(epoch)
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=1.0 / epoch,
                train_accuracy=0.5,
                val_loss=1.0 / epoch,
                val_accuracy=min(1.0, config.optimizer.real_lr * 10 * epoch),
                flip_ratio=0.01,
                flip_ratio_per_layer={"0": 0.01},
                hyperparameters={"gamma": config.optimizer.gamma},
                seconds=seconds_per_epoch,
            )
            history.append(metrics)
            if on_epoch_end is not None and on_epoch_end(metrics):
                return TrainResult(config, history, stopped_early=True)
        return TrainResult(config, history, seconds=seconds_per_epoch * len(history))

    return train


def final_count(trials: list[FrozenTrial]) -> int:
    """COMPLETE + PRUNED + FAIL trials that no retry superseded (what the budget counts)."""
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    retried |= {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials if t.state.is_finished() and t.number not in retried)
