"""The worker loop: find active studies, claim a trial within the study-wide budget, train it.

Shape of Optuna's ``_run_trial``, one small function per step::

    while not stop:
        for study in active studies (queued/running/stopping, oldest first):
            stopping      -> finish_stopping (last worker to see no RUNNING trial sets 'stopped')
            timed out     -> no new trials, running ones end at their next epoch (PRUNED,
                             stop_reason 'study timed out'); 'completed' once nothing runs
            claim_trial   -> fail_stale_trials; a WAITING retry (no budget) or a budget claim + ask
            nothing left  -> maybe_complete ('completed' when the budget is used and nothing runs;
                             'failed' when every trial failed)
            else          -> run_claimed_trial (heartbeat thread, train, tell) and start over

Budget (exact across workers): a fresh trial is created only after
``UPDATE bnn_studies SET n_claimed = n_claimed + 1 WHERE id = :id AND n_claimed < n_trials``
matched a row. Retries (WAITING trials with ``system_attrs['failed_trial']``, enqueued by the
stale-trial callback or after SIGTERM) never consume budget; if ``study.ask()`` happens to pop a
retry after a claim, the claim is given back. Hence COMPLETE + PRUNED + finally-FAILED trials
(a FAIL with no retry after it) == n_trials when the study completes.

Registry: each worker keeps its row in ``bnn_workers`` (:class:`Registration`, a background
thread) fresh every heartbeat interval, also while a long trial trains: device, state
(``idle``/``training``), current study, trials finished; ``stopped`` on a clean exit. The API
lists it (``GET /workers``) and tells why a study waits. Registry errors are logged, never
raised into the loop or a trial.

Database outages never crash the loop: transient errors back off (1 s doubling to
``reconnect_max_s``) and the engines reconnect (``pool_pre_ping``). After an outage (seen by the
loop or a heartbeat) no trial is judged stale until the database has been back for a grace
period, since no worker could beat meanwhile. Writes inside a trial are
retried (see :func:`worker.trial.retry_db`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import TrialState
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from service.db import (
    claim_trial_slot,
    make_engine,
    optuna_engine_kwargs,
    release_trial_slot,
    session_scope,
)
from service.models import Study, optuna_study_name
from service.reaper import STOPPED_ERROR, CleanRetryCallback, fail_waiting_trials
from service.spec import StudySpec
from service.studies import final_status
from service.workers import can_train, forget_old_workers, register_worker, update_worker
from worker.control import Heartbeat, Repeater
from worker.objective import build_pruner, build_sampler
from worker.settings import WorkerSettings, resolve_device, use_compile
from worker.stacked import run_stacked, stacking_slots
from worker.trial import (
    STUDY_STOPPED,
    TRANSIENT_DB_ERRORS,
    WORKER_TERMINATED,
    TrialOutcome,
    db_error_text,
    prepare_trial,
    retry_db,
    tell_outcome,
    train_trial,
)

__all__ = [
    "Worker",
    "WorkerStats",
    "StudyHandle",
    "Registration",
    "device_name",
    "run_worker",
    "run_study",
]

logger = logging.getLogger(__name__)

ACTIVE = ("queued", "running", "stopping")
STATUS_CHECK_S = 1.0  # at most one status query per second per running trial
STUDY_TIMED_OUT = "study timed out"  # timeout_s passed: running trials end at their next epoch


@dataclass
class WorkerStats:
    """What a worker did (returned by :func:`run_worker`)."""

    trials: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    db_errors: int = 0
    errors: int = 0


@dataclass
class StudyHandle:
    """A study this worker has loaded: its row id, validated spec and Optuna study."""

    id: int
    spec: StudySpec
    storage: RDBStorage
    study: optuna.Study
    retry_callback: CleanRetryCallback


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite returns naive datetimes
        return value.replace(tzinfo=UTC)
    return value


def _fail_stale(study: optuna.Study) -> None:
    """``optuna.storages.fail_stale_trials`` (stale RUNNING -> FAIL + WAITING retry)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)


def is_retry(storage: RDBStorage, trial_id: int) -> bool:
    """A WAITING copy of a failed trial (``RetryHeartbeatStaleTrialCallback``)."""
    return "failed_trial" in storage.get_trial(trial_id).system_attrs


def device_name(device: str) -> str:
    """``NVIDIA H200`` for a CUDA device (the device string itself if torch cannot tell);
    ``cpu`` otherwise."""
    if not device.startswith("cuda"):
        return "cpu"
    try:
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    except Exception:  # noqa: BLE001 - a name for the registry, never a reason to fail
        return device


class Registration:
    """This worker's row in ``bnn_workers``: written by a :class:`~worker.control.Repeater`
    thread at start, every heartbeat interval and after each state change, and set to
    ``stopped`` by :meth:`stop`. A failed write is logged (once per outage) and retried at the
    next beat; it never reaches the loop or a trial."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.worker_id = worker.settings.worker_id
        self.status: tuple[str, int | None] = ("idle", None)  # (state, current study), atomic
        self._registered = False
        self._failing = False
        self._device_name: str | None = None  # asked of torch once, by the registry thread
        self._lock = threading.Lock()  # one write at a time (the thread, then stop())
        interval = worker.settings.heartbeat_interval_s
        self._thread = Repeater(self.publish, interval, f"registry-{self.worker_id}")

    def start(self) -> None:
        self._thread.start()

    def set(self, state: str, study_id: int | None) -> None:
        """Record a state change (written soon by the thread, not by the caller)."""
        self.status = (state, study_id)
        self._thread.poke()

    def stop(self) -> None:
        """Stop the thread and mark the row ``stopped`` (registering it if it never was)."""
        self._thread.stop()
        self.status = ("stopped", None)
        self.publish()

    def publish(self) -> bool:
        """Write the current state; False (logged) when the database did not take it."""
        with self._lock:
            state, study_id = self.status
            try:
                with session_scope(self.worker.engine) as session:
                    self._write(session, state, study_id)
            except Exception as exc:  # noqa: BLE001 - the registry never stops training
                if not self._failing:
                    logger.warning("worker registry not updated: %s", db_error_text(exc))
                self._failing = True
                return False
            if self._failing:
                logger.info("worker registry updated again")
            self._failing = False
            return True

    def _write(self, session: Session, state: str, study_id: int | None) -> None:
        trials = self.worker.stats.trials
        if self._registered and update_worker(
            session, self.worker_id, state=state, current_study_id=study_id, trials_finished=trials
        ):
            return
        if not self._registered:
            forget_old_workers(session)
        if self._device_name is None:
            self._device_name = device_name(self.worker.device)
        register_worker(
            session,
            worker_id=self.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            device=self.worker.device,
            device_name=self._device_name,
            state=state,
            current_study_id=study_id,
            trials_finished=trials,
        )
        self._registered = True


class Worker:
    """One worker process' state: engines, loaded studies, the stop event."""

    def __init__(
        self,
        settings: WorkerSettings,
        stop: threading.Event | None = None,
        *,
        study_ids: list[int] | None = None,
        train_fn: Callable[..., Any] | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.study_ids = study_ids
        self.train_fn = train_fn
        self.stats = WorkerStats()
        self.device = resolve_device(settings.device)
        self.engine: Engine = make_engine(settings.database_url, **self._pool())
        self._storages: dict[int, RDBStorage] = {}
        self._handles: dict[int, StudyHandle] = {}
        self._status_cache: dict[int, tuple[float, str, datetime | None]] = {}
        self._waiting_reason: dict[int, str | None] = {}
        self._leaks: dict[tuple[int, int, int], float] = {}
        self._dataset: tuple[tuple[Any, ...], Any] | None = None
        self._db_down = False
        self._skip_logged: set[str] = set()
        self._db_back_at: float | None = None  # monotonic time the database came back
        self.registration = Registration(self)

    def _pool(self) -> dict[str, Any]:
        if self.settings.database_url.startswith("sqlite"):
            return {}
        return {"pool_size": 2, "max_overflow": 2}

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        """Poll and train until stopped (SIGTERM), ``once`` finds no work, or the trial cap;
        registered in ``bnn_workers`` meanwhile, ``stopped`` there at the end."""
        logger.info("worker %s on %s polling %s", self.settings.worker_id, self.device, self._db)
        self.registration.start()
        try:
            self._poll()
        finally:
            self.registration.stop()
            self.close()
        return self.stats

    def _poll(self) -> None:
        delay = 1.0
        while not self.stop.is_set() and not self._cap_reached():
            try:
                worked = self.step()
                delay = 1.0
            except TRANSIENT_DB_ERRORS as exc:
                self.db_reached(False)
                self.stats.db_errors += 1
                logger.warning(
                    "database unavailable (%s); retrying in %.0fs", db_error_text(exc), delay
                )
                self.stop.wait(delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)
                continue
            except Exception:  # the loop edge: log, back off, never die on one study
                self.stats.errors += 1
                logger.exception("worker step failed; retrying in %.0fs", delay)
                self.stop.wait(delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)
                continue
            if not worked:
                if self.settings.once:
                    break
                self.stop.wait(self.settings.poll_interval_s)

    @property
    def _db(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def _cap_reached(self) -> bool:
        cap = self.settings.worker_max_trials
        return cap is not None and self.stats.trials >= cap

    def step(self) -> bool:
        """One pass over the active studies; True when a trial ran."""
        rows = self.active_studies()
        self.db_reached(True)
        for row in rows:
            handle = self.handle(row)
            if handle is None:
                continue
            if row.status == "stopping":
                self.finish_stopping(handle)
                continue
            if self.timed_out(handle, row):
                self.maybe_complete(handle, row, timed_out=True)
                continue
            if not self.can_serve(handle.spec):
                continue
            trial = self.claim_trial(handle)
            if trial is None:
                self.maybe_complete(handle, row)
                continue
            device = self.trial_device(handle.spec)
            self.registration.set("training", handle.id)
            try:
                if stacking_slots(handle.spec, device, self.settings.stack_on_cpu) > 1:
                    run_stacked(self, handle, trial)
                else:
                    self.run_claimed_trial(handle, trial)
            finally:
                self.registration.set("idle", None)
            return True
        return False

    def close(self) -> None:
        for storage in self._storages.values():
            storage.remove_session()
            storage.engine.dispose()
        self._storages.clear()
        self._handles.clear()
        self.engine.dispose()

    # -- studies ----------------------------------------------------------------------------

    def active_studies(self) -> list[Study]:
        query = select(Study).where(Study.status.in_(ACTIVE)).order_by(Study.created_at, Study.id)
        if self.study_ids is not None:
            query = query.where(Study.id.in_(self.study_ids))
        with session_scope(self.engine) as session:
            return list(session.scalars(query))

    def storage(self, max_retry: int) -> RDBStorage:
        """One RDBStorage (one engine) per retry policy, shared by all studies using it."""
        if max_retry not in self._storages:
            url = self.settings.database_url
            kwargs = {**optuna_engine_kwargs(url), **self._pool()}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._storages[max_retry] = RDBStorage(
                    url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=self.settings.heartbeat_interval_s,
                    grace_period=self.settings.grace_period_s,
                    heartbeat_stale_trial_callback=CleanRetryCallback(max_retry=max_retry),
                )
        return self._storages[max_retry]

    def handle(self, row: Study) -> StudyHandle | None:
        """Load (once) the Optuna study of ``row``; an unusable spec fails the study."""
        if row.id in self._handles:
            return self._handles[row.id]
        try:
            spec = StudySpec.model_validate(row.spec)
            sampler, pruner = build_sampler(spec), build_pruner(spec)
        except ValueError as exc:
            logger.error("study %s has an unusable spec: %s", row.id, exc)
            self.set_status(row.id, "failed", from_=ACTIVE, error=f"invalid spec: {exc}")
            return None
        max_retry = spec.max_retries if spec.max_retries is not None else self.settings.max_retries
        storage = self.storage(max_retry)
        name = row.optuna_study_name or optuna_study_name(row.id)
        try:
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:  # the API commits our row before it creates the Optuna study
            logger.info("study %s has no Optuna study %r yet", row.id, name)
            return None
        callback = storage.get_heartbeat_stale_trial_callback()
        assert isinstance(callback, CleanRetryCallback)
        handle = StudyHandle(row.id, spec, storage, study, callback)
        self._handles[row.id] = handle
        return handle

    def set_status(
        self, study_id: int, status: str, *, from_: tuple[str, ...], error: str | None = None
    ) -> bool:
        """Move a study to ``status`` only if it is still in one of ``from_`` (no lost stop or
        delete); final states get ``finished_at``."""
        now = datetime.now(UTC)
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if status in ("stopped", "completed", "failed"):
            values["finished_at"] = now
        if error is not None:
            values["error"] = error
        with session_scope(self.engine) as session:
            result = session.execute(
                update(Study)
                .where(Study.id == study_id, Study.status.in_(from_))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        changed = result.rowcount == 1
        if changed:
            logger.info("study %s -> %s", study_id, status)
            self._handles.pop(study_id, None)
        return changed

    def study_status(self, study_id: int) -> str | None:
        with session_scope(self.engine) as session:
            return session.scalar(select(Study.status).where(Study.id == study_id))

    def timed_out(self, handle: StudyHandle, row: Study) -> bool:
        started = _utc(row.started_at)
        timeout = handle.spec.timeout_s
        if timeout is None or started is None:
            return False
        return (datetime.now(UTC) - started).total_seconds() > timeout

    def _trials(self, handle: StudyHandle, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
        study_id = handle.study._study_id
        return handle.storage.get_all_trials(study_id, deepcopy=False, states=states or None)

    def maybe_complete(self, handle: StudyHandle, row: Study, timed_out: bool = False) -> None:
        """'completed' when nothing is RUNNING/WAITING and every claim became a trial (or the
        timeout passed and nothing runs); 'failed' instead when every trial failed."""
        self.recover(handle)
        reason = self._not_complete_reason(handle, row, timed_out)
        if reason is None:
            status, error = final_status(self._trials(handle))
            self.set_status(row.id, status, from_=("queued", "running"), error=error)
        elif reason != self._waiting_reason.get(handle.id):
            logger.info("study %s not complete yet: %s", handle.id, reason)
        self._waiting_reason[handle.id] = reason

    def _not_complete_reason(self, handle: StudyHandle, row: Study, timed_out: bool) -> str | None:
        running = self._trials(handle, TrialState.RUNNING)
        if running:
            return f"trials {[t.number for t in running]} RUNNING"
        if timed_out:
            return None
        if row.n_claimed < row.n_trials:
            return f"{row.n_claimed}/{row.n_trials} claimed"
        waiting = self._trials(handle, TrialState.WAITING)
        if waiting:
            return f"trials {[t.number for t in waiting]} WAITING"
        originals = sum(1 for t in self._trials(handle) if "failed_trial" not in t.system_attrs)
        if originals < row.n_claimed:  # a claim is between its UPDATE and ask()
            self.heal_leaked_claims(handle, row.n_claimed, originals)
            return f"{originals} trials for {row.n_claimed} claims"
        return None

    def heal_leaked_claims(self, handle: StudyHandle, claimed: int, originals: int) -> None:
        """A claim whose trial was never created (the worker died, or the database dropped
        between the UPDATE and ``ask()``) would block completion forever. When the same gap has
        lasted ``orphan_after_s``, give those claims back (only if ``n_claimed`` is unchanged)."""
        key = (handle.id, claimed, originals)
        first = self._leaks.setdefault(key, time.monotonic())
        if time.monotonic() - first < self.settings.orphan_after_s:
            return
        with session_scope(self.engine) as session:
            session.execute(
                update(Study)
                .where(Study.id == handle.id, Study.n_claimed == claimed)
                .values(n_claimed=originals)
                .execution_options(synchronize_session=False)
            )
        logger.warning("study %s: gave back %d leaked claim(s)", handle.id, claimed - originals)
        self._leaks.pop(key, None)

    def db_reached(self, reached: bool) -> None:
        """Told by the loop and the heartbeat thread whether the database answered."""
        if not reached:
            self._db_down = True
        elif self._db_down:
            self._db_down = False
            self._db_back_at = time.monotonic()

    def may_fail_stale(self) -> bool:
        """Heartbeats cannot be written while the database is down: after an outage this
        worker saw, trials are judged stale only once the database has been back for a grace
        period (time for their live workers to beat again)."""
        back = self._db_back_at
        if self._db_down:
            return False
        return back is None or time.monotonic() - back >= self.settings.grace_period_s

    def recover(self, handle: StudyHandle) -> None:
        """Trials of dead workers -> FAIL, each with a WAITING retry (if retries are left)."""
        if self.may_fail_stale():
            _fail_stale(handle.study)
        self.reap_orphans(handle)

    def reap_orphans(self, handle: StudyHandle) -> None:
        """FAIL (and retry) RUNNING trials that never got a heartbeat nor a worker: their worker
        died between ``ask()`` and its first heartbeat, which ``fail_stale_trials`` cannot see.
        ``datetime_start`` is the claiming worker's local time, like Optuna's own."""
        now = datetime.now()
        for frozen in self._trials(handle, TrialState.RUNNING):
            start = frozen.datetime_start
            if "worker_id" in frozen.user_attrs or start is None:
                continue
            if (now - start).total_seconds() < self.settings.orphan_after_s:
                continue
            storage = handle.storage
            storage.set_trial_user_attr(frozen._trial_id, "error", "orphaned: never started")
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL):
                logger.warning("study %s: failed orphaned trial %s", handle.id, frozen.number)
                handle.retry_callback(handle.study, storage.get_trial(frozen._trial_id))

    def finish_stopping(self, handle: StudyHandle) -> None:
        """Trials of a stopping study end at their next epoch; WAITING retries (of stale or
        terminated trials) are failed, since a stopped study is never resumed; the last worker
        to see no RUNNING trial sets 'stopped'."""
        self.recover(handle)
        failed = fail_waiting_trials(handle.storage, handle.study._study_id, STOPPED_ERROR)
        if failed:
            logger.info("study %s is stopping: failed WAITING trials %s", handle.id, failed)
        if not self._trials(handle, TrialState.RUNNING):
            self.set_status(handle.id, "stopped", from_=("stopping",))

    # -- claiming ---------------------------------------------------------------------------

    def pop_retry(self, handle: StudyHandle) -> optuna.Trial | None:
        """Take a WAITING retry (no budget needed), atomically WAITING -> RUNNING."""
        storage = handle.storage
        for frozen in self._trials(handle, TrialState.WAITING):
            if "failed_trial" not in frozen.system_attrs:
                continue
            try:
                if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                    return optuna.Trial(handle.study, frozen._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def claim_trial(self, handle: StudyHandle) -> optuna.Trial | None:
        """A retry first, else a fresh trial within the study-wide budget; None when neither."""
        self.recover(handle)
        trial = self.pop_retry(handle)
        if trial is not None:
            return trial
        with session_scope(self.engine) as session:
            if not claim_trial_slot(session, handle.id):
                return None
        # No give-back when ask() raises: the trial may exist already (then it is an orphan that
        # reap_orphans fails and retries); if it does not, heal_leaked_claims returns the claim.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = handle.study.ask()
        if is_retry(handle.storage, trial._trial_id):
            self.release_claim(handle)
        return trial

    def release_claim(self, handle: StudyHandle) -> None:
        def release() -> None:
            with session_scope(self.engine) as session:
                release_trial_slot(session, handle.id)

        retry_db(release, f"release a claim of study {handle.id}")

    # -- running ----------------------------------------------------------------------------

    def should_stop(self, handle: StudyHandle) -> str | None:
        """Checked after every epoch: SIGTERM, then the study's status and timeout (throttled).
        SIGTERM in a stopping study ends the trial as stopped (no retry: the study is not
        resumed)."""
        if self.stop.is_set():
            try:
                status = self.study_status(handle.id)
            except TRANSIENT_DB_ERRORS:
                return WORKER_TERMINATED
            return STUDY_STOPPED if status in ("stopping", "stopped") else WORKER_TERMINATED
        now = time.monotonic()
        checked, status, started = self._status_cache.get(handle.id, (0.0, "running", None))
        if now - checked >= STATUS_CHECK_S:
            try:
                status, started = self.status_and_start(handle.id)
            except TRANSIENT_DB_ERRORS:
                return None  # keep training; the next epoch checks again
            self._status_cache[handle.id] = (now, status, started)
        if status not in ("queued", "running"):
            return STUDY_STOPPED if status in ("stopping", "stopped") else f"study {status}"
        timeout = handle.spec.timeout_s
        if timeout is not None and started is not None:
            if (datetime.now(UTC) - started).total_seconds() > timeout:
                return STUDY_TIMED_OUT
        return None

    def status_and_start(self, study_id: int) -> tuple[str, datetime | None]:
        """The study's status ('deleted' when the row is gone) and ``started_at``."""
        query = select(Study.status, Study.started_at).where(Study.id == study_id)
        with session_scope(self.engine) as session:
            row = session.execute(query).first()
        return ("deleted", None) if row is None else (row[0], _utc(row[1]))

    def can_serve(self, spec: StudySpec) -> bool:
        """Whether this worker takes the study: :func:`service.workers.can_train` (a CPU
        worker leaves ``cuda`` studies to GPU workers; the API's ``waiting_reason`` uses the
        same rule)."""
        if can_train(self.device, spec.device):
            return True
        if spec.name not in self._skip_logged:
            logger.info("study %s wants %s, not %s", spec.name, spec.device, self.device)
            self._skip_logged.add(spec.name)
        return False

    def trial_device(self, spec: StudySpec) -> str:
        return "cpu" if spec.device == "cpu" else self.device

    def run_claimed_trial(self, handle: StudyHandle, trial: optuna.Trial) -> None:
        """Heartbeat while training and until the outcome is told."""
        self._status_cache.pop(handle.id, None)
        spec = handle.spec
        device = self.trial_device(spec)
        interval = self.settings.heartbeat_interval_s
        with Heartbeat(handle.storage, trial._trial_id, interval, self.db_reached):
            outcome = train_trial(
                spec,
                trial,
                lambda: prepare_trial(
                    spec,
                    trial,
                    worker_id=self.settings.worker_id,
                    device=device,
                    data_dir=self.settings.data_dir,
                    download=self.settings.download,
                    compile=use_compile(self.settings.compile, device, stacked=False),
                ),
                lambda: self.should_stop(handle),
                train_fn=self.train_fn or self.train_cached,
            )
            tell_outcome(handle.study, trial, outcome, handle.retry_callback)
        self.record(handle, trial, outcome)

    def train_cached(self, config: Any, on_epoch_end: Any = None) -> Any:
        """``bnn_core.train.train`` reusing the last loaded dataset (CIFAR-10 from disk costs
        seconds per trial otherwise). Loading errors fail the trial like any other."""
        from bnn_core.data import load_dataset
        from bnn_core.train import train

        key = (config.dataset, config.data_root, config.data_subdir, config.download)
        if self._dataset is None or self._dataset[0] != key:
            self._dataset = None  # free the previous arrays before loading the next
            data = load_dataset(key[0], key[1], subdir=key[2], download=key[3])
            self._dataset = (key, data)
        return train(config, on_epoch_end, dataset=self._dataset[1])

    def record(self, handle: StudyHandle, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        """Count and log a finished trial."""
        state = outcome.state.name
        self.stats.trials += 1
        self.stats.by_state[state] = self.stats.by_state.get(state, 0) + 1
        logger.info(
            "study %s trial %s: %s in %.1fs%s",
            handle.id,
            trial.number,
            state,
            outcome.seconds,
            f" ({outcome.error or outcome.stop_reason})" if state != "COMPLETE" else "",
        )


def run_worker(
    settings: WorkerSettings,
    stop: threading.Event | None = None,
    *,
    study_ids: list[int] | None = None,
    train_fn: Callable[..., Any] | None = None,
) -> WorkerStats:
    """Run a worker until ``stop`` is set (or ``settings.once`` finds no work, or
    ``settings.worker_max_trials`` trials ran). ``study_ids`` restricts it to some studies."""
    worker = Worker(settings, stop, study_ids=study_ids, train_fn=train_fn)
    return worker.run()


def run_study(
    study_id: int,
    settings: WorkerSettings,
    stop: threading.Event | None = None,
    **kwargs: Any,
) -> WorkerStats:
    """Run the trials of one study in this process until it has no work left (``once``)."""
    once = settings.model_copy(update={"once": True})
    return run_worker(once, stop, study_ids=[study_id], **kwargs)
