"""Running one claimed Optuna trial: sample, train, report every epoch, tell the outcome.

Outcomes (what the trial looks like in Optuna and the dashboard):

* trained to the end -> COMPLETE with ``values`` = final val_accuracy (+ ``flip_ratio`` of the
  last epoch or wall ``time`` in seconds when the spec has a second objective);
* ``trial.should_prune()`` -> PRUNED (Optuna takes the last reported val_accuracy);
* the study is ``stopping`` -> PRUNED within ``stop_check_steps`` steps of the worker seeing
  it (its status is read every ``status_check_s``, 1 s by default), the unfinished epoch
  dropped, user attr ``stop_reason = "study stopped"`` (PRUNED keeps its learning curve
  visible and usable by the sampler; nothing is retried: a resume grows the budget instead);
* the study's ``timeout_s`` passed -> PRUNED the same way, user attr
  ``stop_reason = "study timed out"``;
* the worker got SIGTERM -> FAIL after the current epoch with ``error = "worker terminated"``,
  and a WAITING retry is enqueued exactly like a heartbeat-stale trial (same
  ``RetryHeartbeatStaleTrialCallback``, same ``max_retry``), so another worker runs it;
* any exception in training (divergence/NaN, CUDA OOM, ``ConfigError``,
  anything else) -> FAIL with ``error = "<Type>: <message>"``; the worker goes on;
* sampled values that violate a constraint (filter alpha > gamma) -> PRUNED without training.

User attrs that are numbers optuna-dashboard can sort and plot: ``flip_ratio`` (of the latest
epoch), ``epochs_run`` (both updated after every epoch, so a running trial shows them too),
``seconds`` (wall time, set when the trial ends), and ``worker`` (its id; also ``worker_id``).

Every database write of a trial is retried while the database is briefly unreachable
(:func:`retry_db`), so an outage of a few seconds does not lose an epoch or the final tell.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState

from bnn_core.config import EpochMetrics, TrainConfig, TrainResult
from service.lifecycle import VOLATILE_ATTRS, db_error_text, is_connectivity_error
from service.spec import StudySpec
from worker import metrics as worker_metrics
from worker.objective import (
    InfeasibleParams,
    build_train_config,
    filter_attr,
    train_config_dict,
)

__all__ = [
    "TrialOutcome",
    "EpochRecorder",
    "retry_db",
    "objective_values",
    "epoch_record",
    "prepare_trial",
    "train_trial",
    "tell_outcome",
    "enqueue_retry",
    "db_error_text",
    "outcome_of",
    "error_text",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
StopCheck = Callable[[], str | None]
WORKER_TERMINATED = "worker terminated"
STUDY_STOPPED = "study stopped"


def retry_db(fn: Callable[[], T], what: str, timeout_s: float = 300.0) -> T:
    """Call ``fn`` until it stops raising a connectivity error (backoff 0.5 s -> 5 s); re-raise
    after ``timeout_s``, and any other database error at once (it would fail every time)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_connectivity_error(exc) or time.monotonic() + delay > deadline:
                raise
            logger.warning(
                "%s: database unavailable (%s); retrying in %.1fs", what, db_error_text(exc), delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@dataclass
class TrialOutcome:
    """How a trial ended; ``values`` only for COMPLETE."""

    state: TrialState
    values: list[float] | None = None
    error: str | None = None
    stop_reason: str | None = None
    retry: bool = False  # enqueue a WAITING retry (SIGTERM)
    seconds: float = 0.0
    epochs: list[dict[str, Any]] = field(default_factory=list)


def epoch_record(metrics: EpochMetrics) -> dict[str, Any]:
    """The JSON dict stored per epoch in the user attr ``epochs``."""
    record = asdict(metrics)
    for key, value in record.items():  # NaN/inf are not JSON: store them as strings
        if isinstance(value, float) and not math.isfinite(value):
            record[key] = str(value)
    return record


def _set_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    retry_db(lambda: trial.set_user_attr(key, value), f"trial {trial.number} {key}")


class EpochRecorder:
    """The ``on_epoch_end`` callback of one trial: record the epoch, report val_accuracy for
    pruning, and ask training to stop when pruned, stopped or terminated (truthy return)."""

    def __init__(self, trial: optuna.Trial, should_stop: StopCheck, report: bool) -> None:
        self.trial = trial
        self._should_stop = should_stop
        self.report = report
        self.epochs: list[dict[str, Any]] = []
        self.pruned = False
        self.stop_reason: str | None = None
        self.last: EpochMetrics | None = None
        # should_prune() reads the trial back; skip that round trip when nothing can prune
        self.can_prune = not isinstance(trial.study.pruner, optuna.pruners.NopPruner)

    def __call__(self, metrics: EpochMetrics) -> bool:
        worker_metrics.epoch_ended(metrics.seconds)
        self.last = metrics
        self.epochs.append(epoch_record(metrics))
        _set_attr(self.trial, "epochs", self.epochs)
        _set_attr(self.trial, "epochs_run", len(self.epochs))
        if math.isfinite(metrics.flip_ratio):
            _set_attr(self.trial, "flip_ratio", float(metrics.flip_ratio))
        if self.report and math.isfinite(metrics.val_accuracy):
            step = metrics.epoch
            retry_db(lambda: self.trial.report(metrics.val_accuracy, step), "report")
            if self.can_prune and retry_db(self.trial.should_prune, "should_prune"):
                self.pruned = True
                return True
        return self.should_stop() is not None

    def should_stop(self) -> str | None:
        """Whether to stop now, remembering the reason for the outcome; also polled by the
        stacked trainer every ``stop_check_steps`` steps, so a stop ends a slot mid-epoch."""
        reason = self._should_stop()
        if reason is not None:
            self.stop_reason = reason
        return reason


def objective_values(spec: StudySpec, result: TrainResult) -> list[float]:
    """Final values in the order of ``spec.objectives``."""
    last = result.epochs[-1]
    by_name = {
        "val_accuracy": last.val_accuracy,
        "flip_ratio": last.flip_ratio,
        "time": result.seconds,
    }
    values = [float(by_name[name]) for name in spec.objectives]
    if not all(math.isfinite(v) for v in values):
        raise FloatingPointError(f"non-finite objective values {values} (training diverged)")
    return values


def prepare_trial(
    spec: StudySpec,
    trial: optuna.Trial,
    *,
    worker_id: str,
    device: str,
    data_root: str | None = None,
    download: bool = False,
    compile: bool = False,
    train_images: int | None = None,
) -> TrainConfig:
    """Sample the trial's config and record ``train_config``, ``worker_id`` and ``device``, and
    with ``train_images`` (the data set's training images) its filter view ``filter``
    (:func:`worker.objective.filter_attr`; None for latent Adam).
    Raises :class:`InfeasibleParams` or ``ConfigError`` for configs that cannot train."""
    _set_attr(trial, "worker_id", worker_id)
    _set_attr(trial, "worker", worker_id)
    _set_attr(trial, "device", device)
    config = retry_db(
        lambda: build_train_config(
            spec, trial, device=device, data_root=data_root, download=download, compile=compile
        ),
        "sample",
    )
    _set_attr(trial, "train_config", train_config_dict(config))
    if train_images is not None:
        _set_attr(trial, "filter", filter_attr(config, train_images))
    return config


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def outcome_of(
    spec: StudySpec, recorder: EpochRecorder, result: TrainResult, seconds: float
) -> TrialOutcome:
    if recorder.stop_reason == WORKER_TERMINATED:
        return TrialOutcome(
            TrialState.FAIL, error=WORKER_TERMINATED, retry=True, stop_reason=WORKER_TERMINATED
        )
    if recorder.stop_reason is not None:
        return TrialOutcome(TrialState.PRUNED, stop_reason=recorder.stop_reason)
    if recorder.pruned:
        return TrialOutcome(TrialState.PRUNED, stop_reason="pruned")
    if not result.epochs:
        return TrialOutcome(TrialState.FAIL, error="training produced no epoch")
    return TrialOutcome(TrialState.COMPLETE, values=objective_values(spec, result))


def train_trial(
    spec: StudySpec,
    trial: optuna.Trial,
    config_factory: Callable[[], TrainConfig],
    should_stop: StopCheck,
    train_fn: Callable[..., TrainResult] | None = None,
) -> TrialOutcome:
    """Build the config and train; map every way a trial can end to a :class:`TrialOutcome`.
    Never raises for training errors (only for a database that stays down)."""
    started = time.perf_counter()
    recorder = EpochRecorder(trial, should_stop, report=not spec.is_multi_objective)
    try:
        config = config_factory()
        if train_fn is None:
            from bnn_core.train import train

            result = train(config, on_epoch_end=recorder, should_stop=recorder.should_stop)
        else:
            result = train_fn(config, on_epoch_end=recorder)
        outcome = outcome_of(spec, recorder, result, time.perf_counter() - started)
    except InfeasibleParams as exc:
        outcome = TrialOutcome(TrialState.PRUNED, error=str(exc), stop_reason="infeasible")
    except Exception as exc:  # noqa: BLE001 - a failing trial must never stop the worker
        if is_connectivity_error(exc):
            raise  # not the trial's fault: the loop waits for the database
        logger.warning("trial %s failed: %s", trial.number, error_text(exc))
        outcome = TrialOutcome(TrialState.FAIL, error=error_text(exc))
        _free_cuda_memory()
    outcome.seconds = time.perf_counter() - started
    outcome.epochs = recorder.epochs
    return outcome


def _free_cuda_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort after an OOM
        logger.debug("could not empty the CUDA cache", exc_info=True)


RetryCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def tell_outcome(
    study: optuna.Study,
    trial: optuna.Trial,
    outcome: TrialOutcome,
    retry_callback: RetryCallback | None = None,
) -> bool:
    """Record the outcome (user attrs, then ``study.tell``); enqueue a retry when asked.
    Returns False when the trial had already been finished elsewhere (e.g. failed as stale by
    another worker after a long database outage)."""
    try:
        _set_attr(trial, "seconds", round(outcome.seconds, 3))
        _set_attr(trial, "epochs_run", len(outcome.epochs))
        flip_ratio = outcome.epochs[-1].get("flip_ratio") if outcome.epochs else None
        if isinstance(flip_ratio, int | float) and math.isfinite(flip_ratio):
            _set_attr(trial, "flip_ratio", float(flip_ratio))
        if outcome.error is not None:
            _set_attr(trial, "error", outcome.error)
        if outcome.stop_reason is not None:
            _set_attr(trial, "stop_reason", outcome.stop_reason)
        retry_db(
            lambda: study.tell(trial, outcome.values, state=outcome.state, skip_if_finished=True),
            f"tell trial {trial.number}",
        )
    except (ValueError, RuntimeError) as exc:  # UpdateFinishedTrialError is a RuntimeError
        logger.warning("could not tell trial %s: %s", trial.number, exc)
        return False
    if outcome.retry and retry_callback is not None:
        enqueue_retry(study, trial._trial_id, retry_callback)
    return True


def enqueue_retry(study: optuna.Study, trial_id: int, retry_callback: RetryCallback) -> None:
    """Enqueue a WAITING copy of a failed trial through the stale-trial retry callback (same
    params, ``system_attrs["failed_trial"]``, ``max_retry`` honoured), without the attrs that
    describe the failed attempt."""
    frozen = retry_db(lambda: study._storage.get_trial(trial_id), "get trial")
    frozen = copy.deepcopy(frozen)
    frozen.user_attrs = {k: v for k, v in frozen.user_attrs.items() if k not in VOLATILE_ATTRS}
    retry_db(lambda: retry_callback(study, frozen), f"retry trial {frozen.number}")
