"""The worker loop: find active studies, claim a trial within the study-wide budget, train it.

Shape of Optuna's ``_run_trial``, one small step per study::

    while not stop:
        for study in active studies (queued/running/stopping, oldest first):
            stopping      -> finish_stopping (the last to see no RUNNING trial sets 'stopped')
            timed out     -> no new trials, running ones end within a few steps (PRUNED,
                             stop_reason 'study timed out'); 'completed' once nothing runs
            cannot serve  -> leave it to other workers (wrong device kind, or this worker
                             lacks its data set: recorded in the registry, no budget used)
            claim         -> a WAITING retry (no budget) or a budget claim + ask
            nothing left  -> maybe_complete ('completed', or 'failed' when every trial failed)
            else          -> train it (solo, or stacked with further claims) and start over

The rules (status table, claims, recovery of dead workers' trials, completion, the grace after
an outage) live in :mod:`service.lifecycle`; trial running in :mod:`worker.study_run`; the
registry row in :mod:`worker.registration`.

Database errors: a lost connection backs off (1 s doubling to ``reconnect_max_s``) and the
engines reconnect (``pool_pre_ping``); a database error about one study's data (a NUL byte, a
constraint) fails that study with the error, or, when even that cannot be written, this worker
skips it; any other error of one study is logged and the next study is served -- one poisoned
study never holds up the others. A database that is not migrated is refused:
``WorkerSettings.once`` exits with :class:`DatabaseNotReady`, otherwise the worker waits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from optuna.trial import FrozenTrial
from sqlalchemy import Engine

from service.db import make_engine
from service.lifecycle import (
    ACTIVE,
    DatabaseNotReady,
    Lifecycle,
    StudyContext,
    database_problem,
    db_error_text,
    is_connectivity_error,
    is_data_error,
    timed_out,
)
from service.models import Study
from service.settings import redact_url
from service.spec import StudySpec
from service.workers import can_train, dataset_key
from worker.datasets import DataSets
from worker.objective import build_pruner, build_sampler
from worker.registration import Registration
from worker.settings import WorkerSettings, resolve_device
from worker.stacked import run_stacked, stacking_slots
from worker.study_run import StudyRun, WorkerStats
from worker.trial import error_text
from worker.warm_start import source_trials, warm_sampler

__all__ = ["DatabaseNotReady", "Worker", "WorkerStats", "run_worker", "run_study"]

logger = logging.getLogger(__name__)


def _warm_key(spec: StudySpec) -> tuple[str, Any]:
    """A study's warm-start trials are loaded once per (name, source id): a purged name reused
    by a study with another source loads its own."""
    return spec.name, spec.warm_start.study if spec.warm_start is not None else None


class Worker:
    """One worker process: its engine, lifecycle, registry row and the stop event."""

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
        pool = (
            {}
            if settings.database_url.startswith("sqlite")
            else {
                "pool_size": 2,
                "max_overflow": 2,
            }
        )
        self.engine: Engine = make_engine(settings.database_url, **pool)
        self.lifecycle = Lifecycle(
            settings, self.engine, pool=pool, orphan_after_s=settings.orphan_after_s
        )
        self.datasets = DataSets(settings.data_root, settings.download)
        self.registration = Registration(
            self.engine,
            settings.worker_id,
            self.device,
            settings.heartbeat_interval_s,
            lambda: self.stats.trials,
        )
        self._warm: dict[tuple[str, Any], list[FrozenTrial]] = {}  # see _warm_key
        self._skipped: set[int] = set()  # studies whose failure could not even be recorded
        self._logged: set[tuple[int, str]] = set()

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        """Poll and train until stopped (SIGTERM), ``once`` finds no work, or the trial cap;
        registered in ``bnn_workers`` meanwhile, ``stopped`` there at the end."""
        logger.info(
            "worker %s on %s uses database %s", self.settings.worker_id, self.device, self.db
        )
        try:
            if not self._wait_until_migrated():
                return self.stats
            self.registration.start()
            try:
                self._poll()
            finally:
                self.registration.stop()
        finally:
            self.close()
        return self.stats

    @property
    def db(self) -> str:
        return redact_url(self.settings.database_url)

    def _wait_until_migrated(self) -> bool:
        """False when stopped first; raises :class:`DatabaseNotReady` under ``once``."""
        delay, told = 1.0, None
        while not self.stop.is_set():
            try:
                problem = database_problem(self.settings.database_url, self.engine)
            except Exception as exc:
                if not is_connectivity_error(exc):
                    raise
                problem = f"database unavailable ({db_error_text(exc)})"
            if problem is None:
                return True
            if self.settings.once:
                raise DatabaseNotReady(f"database {self.db}: {problem}")
            if problem != told:
                logger.error("database %s: %s; waiting", self.db, problem)
                told = problem
            self.stop.wait(delay)
            delay = min(delay * 2, self.settings.reconnect_max_s)
        return False

    def _poll(self) -> None:
        delay = 1.0
        while not self.stop.is_set() and not self._cap_reached():
            try:
                worked = self.step()
                delay = 1.0
            except Exception as exc:  # the loop edge: log, back off, never die
                if is_connectivity_error(exc):
                    self.lifecycle.clock.reached(False)
                    self.stats.db_errors += 1
                    logger.warning(
                        "database unavailable (%s); retrying in %.0fs", db_error_text(exc), delay
                    )
                else:
                    self.stats.errors += 1
                    logger.exception("worker step failed; retrying in %.0fs", delay)
                self.stop.wait(delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)
                continue
            if not worked:
                if self.settings.once:
                    break
                self.stop.wait(self.settings.poll_interval_s)

    def _cap_reached(self) -> bool:
        cap = self.settings.worker_max_trials
        return cap is not None and self.stats.trials >= cap

    def step(self) -> bool:
        """One pass over the active studies; True when a trial ran."""
        self.lifecycle.fail_vanished()
        for row in self.lifecycle.studies(ACTIVE, self.study_ids):
            if row.id in self._skipped:
                continue
            try:
                if self.serve(row):
                    return True
            except Exception as exc:
                if is_connectivity_error(exc):
                    raise
                if is_data_error(exc):
                    self.fail_study(row, exc)
                else:  # not the study's data: log it and go on with the next study
                    self.stats.errors += 1
                    logger.exception("study %s: worker step failed", row.id)
        return False

    def serve(self, row: Study) -> bool:
        """Whatever study ``row`` needs of this worker; True when a trial ran."""
        ctx = self.lifecycle.open(row, self._sampling)
        if ctx is None:
            return False
        if row.status == "stopping":
            self.lifecycle.finish_stopping(ctx)
            return False
        if timed_out(ctx.spec.timeout_s, row.started_at):
            self.lifecycle.maybe_complete(ctx, row, timed_out=True)
            return False
        if not self.can_serve(ctx):
            return False
        run = StudyRun(
            self.lifecycle,
            ctx,
            self.settings,
            device=self.device,
            stop=self.stop,
            stats=self.stats,
            datasets=self.datasets,
            train_fn=self.train_fn,
            warm=self._warm.get(_warm_key(ctx.spec), []),
        )
        trial = run.claim()
        if trial is None:
            self.lifecycle.maybe_complete(ctx, row, timed_out=False)
            return False
        self.registration.set("training", ctx.id)
        try:
            with run.watching():  # a stop reaches the running trial(s) within seconds
                if stacking_slots(ctx.spec, run.device, self.settings.stack_on_cpu) > 1:
                    run_stacked(run, trial, ctx.id)
                else:
                    run.run_solo(trial)
        finally:
            self.registration.set("idle", None)
        return True

    def _sampling(self, spec: StudySpec) -> tuple[Any, Any]:
        """The spec's sampler (informed by its warm-start trials, loaded once) and pruner."""
        key = _warm_key(spec)
        if key not in self._warm:
            retries = spec.max_retries if spec.max_retries is not None else 0
            storage = self.lifecycle.storage(retries)
            self._warm[key] = source_trials(self.engine, storage, spec)
        warm = self._warm[key]
        return warm_sampler(spec, build_sampler(spec), warm, spec.sampler.seed), build_pruner(spec)

    def fail_study(self, row: Study, exc: BaseException) -> None:
        """The database refused the data of one study (a NUL byte, a constraint): the study
        fails with that error; if even that is refused, this worker skips it."""
        self.stats.errors += 1
        logger.error("study %s failed on this worker: %s", row.id, error_text(exc))
        try:
            self.lifecycle.set_status(
                row.id, "failed", from_=ACTIVE, error=f"worker error: {error_text(exc)}"
            )
        except Exception as again:
            if is_connectivity_error(again):
                raise
            logger.error("study %s: cannot record its failure (%s); skipping it", row.id, again)
            self._skipped.add(row.id)

    def can_serve(self, ctx: StudyContext) -> bool:
        """Whether this worker takes the study: :func:`service.workers.can_train` (a CPU
        worker leaves ``cuda`` studies to GPU workers) and its data set is in this worker's
        data root (else recorded in the registry, where the API's ``waiting_reason`` reads
        it)."""
        spec = ctx.spec
        if not can_train(self.device, spec.device):
            self._log_once(ctx.id, f"study {spec.name} wants {spec.device}, not {self.device}")
            return False
        problem = self.datasets.problem(spec)
        self.registration.lacks(dataset_key(spec.dataset, spec.data_subdir), problem)
        if problem is not None:
            self._log_once(ctx.id, f"study {ctx.id} left to other workers: {problem}")
            return False
        return True

    def _log_once(self, study_id: int, message: str) -> None:
        if (study_id, message) not in self._logged:
            logger.info("%s", message)
            self._logged.add((study_id, message))

    def close(self) -> None:
        self.lifecycle.close()
        self.engine.dispose()


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
