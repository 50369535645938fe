"""Stale-trial reaper: what a worker does when it polls a study, run by the API too.

Workers fail the trials of dead workers (no heartbeat for ``grace_period_s``) when they poll a
study, so a study whose only worker died used to keep a RUNNING trial until some worker came
back. The API runs :func:`reap_once` every ``reaper_interval_s`` in a background task:

* running and stopping studies: ``optuna.storages.fail_stale_trials`` (stale RUNNING -> FAIL, plus
  a WAITING retry through :class:`CleanRetryCallback` while retries are left);
* stopping studies: WAITING trials are failed (:func:`fail_waiting_trials`, a stopped study is
  never resumed), and the study becomes ``stopped`` once nothing runs;
* running studies whose budget is used up with nothing RUNNING or WAITING (the last trial's
  worker died and no retry was left): ``completed``, or ``failed`` when every trial failed
  (:func:`service.studies.final_status`, the worker's rule too).

Heartbeats stop while the database is down, so after an outage (and after the API starts) the
reaper waits one grace period of reachable database before it judges trials stale. Workers use
the same :class:`CleanRetryCallback` and :func:`fail_waiting_trials`.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from datetime import UTC, datetime

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service.db import optuna_engine_kwargs
from service.models import Study, optuna_study_name
from service.settings import Settings
from service.studies import final_status

__all__ = [
    "VOLATILE_ATTRS",
    "STOPPED_ERROR",
    "CleanRetryCallback",
    "Reaper",
    "fail_waiting_trials",
]

logger = logging.getLogger(__name__)

# User attrs that describe one attempt of a trial; a retry starts without them.
VOLATILE_ATTRS = ("epochs", "error", "stop_reason", "seconds", "worker_id", "device")
STOPPED_ERROR = "study stopped before the retry ran"


class CleanRetryCallback(RetryHeartbeatStaleTrialCallback):
    """Optuna's stale-trial retry (WAITING copy with the same params, ``failed_trial`` and
    ``retry_history`` system attrs, ``max_retry``), minus the user attrs that describe the failed
    attempt (its epochs, worker, error), so a retry starts clean."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in VOLATILE_ATTRS}
        super().__call__(study, trial)


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


class Reaper:
    """One pass (:meth:`reap_once`) over the running and stopping studies of one database."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self._storages: dict[int, RDBStorage] = {}
        self._reachable_since: float | None = None  # monotonic; None: down or not seen yet

    def may_fail_stale(self) -> bool:
        """Heartbeats stop while the database is down; a trial is only judged stale once the
        database has been reachable for a whole grace period (since this API started, or since
        the last outage), so that live workers have beaten again."""
        since = self._reachable_since
        return since is not None and time.monotonic() - since >= self.settings.grace_period_s

    def storage(self, max_retry: int) -> RDBStorage:
        """One heartbeat-aware storage (one engine) per retry policy, as in the worker."""
        if max_retry not in self._storages:
            url = self.settings.database_url
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._storages[max_retry] = RDBStorage(
                    url,
                    engine_kwargs=optuna_engine_kwargs(url),
                    skip_table_creation=True,
                    heartbeat_interval=self.settings.heartbeat_interval_s,
                    grace_period=self.settings.grace_period_s,
                    heartbeat_stale_trial_callback=CleanRetryCallback(max_retry=max_retry),
                )
        return self._storages[max_retry]

    def close(self) -> None:
        for storage in self._storages.values():
            storage.remove_session()
            storage.engine.dispose()
        self._storages.clear()

    def reap_once(self) -> int:
        """Fail stale trials of running/stopping studies, finish stopping ones; returns how
        many studies were looked at. One study's error is logged and does not stop the pass."""
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                query = select(Study).where(Study.status.in_(("running", "stopping")))
                rows = list(session.scalars(query))
                session.expunge_all()
        except DBAPIError:
            self._reachable_since = None
            raise
        if self._reachable_since is None:
            self._reachable_since = time.monotonic()
        for row in rows:
            try:
                self.reap_study(row)
            except (DBAPIError, optuna.exceptions.StorageInternalError):
                self._reachable_since = None  # down again: end this pass, start the clock anew
                raise
            except Exception:  # noqa: BLE001 - the reaper never dies on one study
                logger.exception("reaper: study %s failed", row.id)
        return len(rows)

    def reap_study(self, row: Study) -> None:
        retries = row.spec.get("max_retries")
        storage = self.storage(self.settings.max_retries if retries is None else int(retries))
        name = row.optuna_study_name or optuna_study_name(row.id)
        try:
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
            )
        except KeyError:
            return
        if self.may_fail_stale():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)
        if row.status == "stopping":
            if failed := fail_waiting_trials(storage, study._study_id, STOPPED_ERROR):
                logger.info("reaper: study %s stopping; failed WAITING trials %s", row.id, failed)
            if not storage.get_all_trials(study._study_id, states=(TrialState.RUNNING,)):
                self.set_status(row, "stopped")
        elif self.budget_done(storage, study._study_id, row):
            trials = storage.get_all_trials(study._study_id, deepcopy=False)
            status, error = final_status(trials)
            self.set_status(row, status, error=error)

    @staticmethod
    def budget_done(storage: RDBStorage, optuna_study_id: int, row: Study) -> bool:
        """Every claim became a trial and nothing is RUNNING or WAITING (the worker's rule; a
        claim between its UPDATE and ``ask()`` has no trial yet, so it keeps the study open)."""
        if row.n_claimed < row.n_trials:
            return False
        busy = (TrialState.RUNNING, TrialState.WAITING)
        if storage.get_all_trials(optuna_study_id, deepcopy=False, states=busy):
            return False  # the usual case while the last trials train: no full load
        trials = storage.get_all_trials(optuna_study_id, deepcopy=False)
        if any(t.state in busy for t in trials):
            return False
        return sum("failed_trial" not in t.system_attrs for t in trials) >= row.n_claimed

    def set_status(self, row: Study, status: str, *, error: str | None = None) -> None:
        """``stopping -> stopped`` or ``running -> completed``/``failed`` (only if ``n_claimed``
        is unchanged, so a claim made meanwhile keeps the study running)."""
        now = datetime.now(UTC)
        values: dict[str, object] = {"status": status, "updated_at": now, "finished_at": now}
        if error is not None:
            values["error"] = error
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Study)
                .where(Study.id == row.id, Study.status == row.status)
                .where(Study.n_claimed == row.n_claimed)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        if result.rowcount == 1:
            logger.info("reaper: study %s -> %s", row.id, status)
