"""Recovery of trials whose worker is gone: one stale rule and one grace policy for everyone.

* Stale: a RUNNING trial whose heartbeat is older than ``grace_period_s`` -> FAIL plus a WAITING
  retry with the same params while retries are left (``optuna.storages.fail_stale_trials``
  with :class:`CleanRetryCallback`).
* Orphaned: a RUNNING trial that never got its ``worker_id`` attr nor a heartbeat (its worker
  died between ``ask()`` and its first beat, which ``fail_stale_trials`` cannot see), older than
  ``orphan_after_s`` -> the same FAIL plus retry.
* Grace (:class:`StaleClock`): heartbeats cannot be written while the database is down, so a
  process judges nothing stale while it sees the database down, nor within one grace period
  after it came back. A process that has seen no outage judges at once, as Optuna does.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import warnings
from datetime import datetime
from typing import TYPE_CHECKING

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from service.lifecycle.storage import StudyContext

__all__ = [
    "VOLATILE_ATTRS",
    "STOPPED_ERROR",
    "ORPHAN_ERROR",
    "CleanRetryCallback",
    "StaleClock",
    "fail_waiting_trials",
    "recover",
]

logger = logging.getLogger(__name__)

# User attrs that describe one attempt of a trial; a retry starts without them.
VOLATILE_ATTRS = (
    "epochs",
    "error",
    "stop_reason",
    "seconds",
    "worker_id",
    "worker",
    "device",
    "flip_ratio",
    "epochs_run",
)
STOPPED_ERROR = "study stopped before the retry ran"
ORPHAN_ERROR = "orphaned: never started"


class CleanRetryCallback(RetryHeartbeatStaleTrialCallback):
    """Optuna's stale-trial retry (WAITING copy with the same params, ``failed_trial`` and
    ``retry_history`` system attrs, ``max_retry``), minus the user attrs that describe the failed
    attempt (its epochs, worker, error), so a retry starts clean."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in VOLATILE_ATTRS}
        super().__call__(study, trial)


class StaleClock:
    """Whether this process may judge trials stale now (see the module docstring). Told by
    every database call that matters (the loop, the heartbeat threads) whether it got through."""

    def __init__(self, grace_period_s: float) -> None:
        self.grace_period_s = grace_period_s
        self._down = False
        self._back_at: float | None = None  # monotonic time the database came back
        self._lock = threading.Lock()

    def reached(self, reached: bool) -> None:
        with self._lock:
            if not reached:
                self._down = True
            elif self._down:
                self._down = False
                self._back_at = time.monotonic()

    def may_fail_stale(self) -> bool:
        with self._lock:
            if self._down:
                return False
            back = self._back_at
        return back is None or time.monotonic() - back >= self.grace_period_s


def fail_waiting_trials(storage: RDBStorage, optuna_study_id: int, reason: str) -> list[int]:
    """FAIL every WAITING trial of a study (with user attr ``error = reason``); the numbers of
    the trials this call failed (a worker that popped one first keeps it RUNNING). The attr is
    written first: Optuna refuses attrs on finished trials."""
    failed = []
    for frozen in storage.get_all_trials(optuna_study_id, states=(TrialState.WAITING,)):
        try:
            storage.set_trial_user_attr(frozen._trial_id, "error", reason)
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL):
                failed.append(frozen.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # popped (RUNNING) or finished by someone else meanwhile
    return failed


def recover(ctx: StudyContext, clock: StaleClock, orphan_after_s: float | None) -> None:
    """Stale trials -> FAIL + retry (when ``clock`` allows), then orphaned ones (when
    ``orphan_after_s`` is given)."""
    if clock.may_fail_stale():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(ctx.study)
    if orphan_after_s is not None:
        _fail_orphans(ctx, orphan_after_s)


def _fail_orphans(ctx: StudyContext, orphan_after_s: float) -> None:
    """``datetime_start`` is the claiming worker's local time, like Optuna's own."""
    now = datetime.now()
    storage = ctx.storage
    for frozen in ctx.trials(TrialState.RUNNING):
        start = frozen.datetime_start
        if "worker_id" in frozen.user_attrs or start is None:
            continue
        if (now - start).total_seconds() < orphan_after_s:
            continue
        storage.set_trial_user_attr(frozen._trial_id, "error", ORPHAN_ERROR)
        if storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL):
            logger.warning("study %s: failed orphaned trial %s", ctx.id, frozen.number)
            ctx.retry_callback(ctx.study, storage.get_trial(frozen._trial_id))
