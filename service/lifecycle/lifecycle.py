"""The lifecycle of one process (a worker or the API's reaper): its Optuna storages, the
studies it has loaded, claims, recovery, completion and stop -- every status change through
:func:`service.lifecycle.state.transition`."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine, select

from service.db import session_scope
from service.lifecycle import state
from service.lifecycle.errors import is_connectivity_error
from service.lifecycle.recovery import (
    STOPPED_ERROR,
    CleanRetryCallback,
    StaleClock,
    fail_waiting_trials,
    recover,
)
from service.lifecycle.storage import make_storage
from service.models import Study, optuna_study_name
from service.settings import Settings
from service.spec import StudySpec, stored_spec

__all__ = ["StudyContext", "Lifecycle"]

logger = logging.getLogger(__name__)

Sampling = tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner | None]
SamplerFactory = Callable[[StudySpec], Sampling]


@dataclass
class StudyContext:
    """A study this process has loaded: row id, stored spec, Optuna storage and study."""

    id: int
    spec: StudySpec
    storage: RDBStorage
    study: optuna.Study
    retry_callback: CleanRetryCallback

    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        return self.storage.get_all_trials(
            self.study._study_id, deepcopy=False, states=states or None
        )


class Lifecycle:
    """One process' view of the study lifecycle over ``engine``. ``orphan_after_s``: fail
    RUNNING trials that never started and give back claims that never became a trial after
    that long (workers); None leaves both alone."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        pool: dict[str, Any] | None = None,
        orphan_after_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.pool = pool or {}
        self.orphan_after_s = orphan_after_s
        self.clock = StaleClock(settings.grace_period_s)
        self._storages: dict[int, RDBStorage] = {}
        self._contexts: dict[int, StudyContext] = {}
        self._leaks: dict[tuple[int, int, int], float] = {}
        self._reasons: dict[int, str | None] = {}

    # -- storages and studies ------------------------------------------------------------

    def storage(self, max_retry: int) -> RDBStorage:
        """One storage (one engine) per retry policy, shared by the studies that use it."""
        if max_retry not in self._storages:
            self._storages[max_retry] = make_storage(
                self.settings.database_url,
                max_retry=max_retry,
                heartbeat_interval_s=self.settings.heartbeat_interval_s,
                grace_period_s=self.settings.grace_period_s,
                engine_kwargs=self.pool,
            )
        return self._storages[max_retry]

    def studies(self, statuses: Sequence[str], ids: Sequence[int] | None = None) -> list[Study]:
        """The studies in ``statuses`` (oldest first), optionally only ``ids``."""
        query = select(Study).where(Study.status.in_(statuses))
        if ids is not None:
            query = query.where(Study.id.in_(ids))
        with session_scope(self.engine) as session:
            rows = list(session.scalars(query.order_by(Study.created_at, Study.id)))
        self.clock.reached(True)
        return rows

    def open(self, row: Study, build: SamplerFactory | None = None) -> StudyContext | None:
        """Load (once) the Optuna study of ``row``; None when it cannot be run now. A spec that
        cannot be read (or whose sampler cannot be built) fails the study."""
        if row.id in self._contexts:
            return self._contexts[row.id]
        try:
            spec = stored_spec(row.spec)
            sampler, pruner = build(spec) if build else (optuna.samplers.RandomSampler(), None)
        except ValueError as exc:
            logger.error("study %s has an unusable spec: %s", row.id, exc)
            self.set_status(row.id, "failed", from_=state.ACTIVE, error=f"invalid spec: {exc}")
            return None
        retries = spec.max_retries if spec.max_retries is not None else self.settings.max_retries
        storage = self.storage(retries)
        name = row.optuna_study_name or optuna_study_name(row.id)
        try:
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:  # created right after the row (fail_vanished ends it if it never is)
            logger.info("study %s has no Optuna study %r", row.id, name)
            return None
        callback = storage.get_heartbeat_stale_trial_callback()
        assert isinstance(callback, CleanRetryCallback)
        context = StudyContext(row.id, spec, storage, study, callback)
        self._contexts[row.id] = context
        return context

    def set_status(
        self,
        study_id: int,
        to: str,
        *,
        from_: Sequence[str] | None = None,
        error: str | None = None,
        where: Any = None,
    ) -> bool:
        """:func:`state.transition` in its own transaction; logged; forgets the context."""
        with session_scope(self.engine) as session:
            moved = state.transition(session, study_id, to, from_=from_, where=where, error=error)
        if moved:
            logger.info("study %s -> %s", study_id, to)
            self._contexts.pop(study_id, None)
        return moved

    def status_and_start(self, study_id: int) -> tuple[str, datetime | None]:
        """The study's status ('deleted' when the row is gone) and ``started_at``."""
        query = select(Study.status, Study.started_at).where(Study.id == study_id)
        with session_scope(self.engine) as session:
            row = session.execute(query).first()
        if row is None:
            return "deleted", None
        return row[0], row[1]  # UTCDateTime: aware on every backend

    def fail_vanished(self) -> list[int]:
        """Fail the studies whose Optuna study is gone (:func:`state.fail_vanished`)."""
        with session_scope(self.engine) as session:
            failed = state.fail_vanished(session, self.settings.grace_period_s)
        for study_id in failed:
            logger.error("study %s -> failed: its Optuna study is gone", study_id)
            self._contexts.pop(study_id, None)
        return failed

    def close(self) -> None:
        for storage in self._storages.values():
            storage.remove_session()
            storage.engine.dispose()
        self._storages.clear()
        self._contexts.clear()

    # -- claims ---------------------------------------------------------------------------

    def recover(self, ctx: StudyContext) -> None:
        recover(ctx, self.clock, self.orphan_after_s)

    def pop_retry(self, ctx: StudyContext) -> optuna.Trial | None:
        """Take a WAITING retry (no budget needed), atomically WAITING -> RUNNING."""
        for frozen in ctx.trials(TrialState.WAITING):
            if "failed_trial" not in frozen.system_attrs:
                continue
            try:
                if ctx.storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                    return optuna.Trial(ctx.study, frozen._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def claim(
        self,
        ctx: StudyContext,
        sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None = None,
    ) -> tuple[optuna.Trial, int | None] | None:
        """A retry first (index None), else a fresh trial within the study-wide budget (with
        the claim's index; ``sampler_for(index)`` samples it); None when neither is left."""
        self.recover(ctx)
        trial = self.pop_retry(ctx)
        if trial is not None:
            return trial, None
        with session_scope(self.engine) as session:
            index = state.claim_slot(session, ctx.id)
        if index is None:
            return None
        if sampler_for is not None:
            ctx.study.sampler = sampler_for(index)
        # No give-back when ask() raises: the trial may exist already (then it is an orphan that
        # recover() fails and retries); if it does not, maybe_complete gives the claim back.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = ctx.study.ask()
        if "failed_trial" in ctx.storage.get_trial(trial._trial_id).system_attrs:
            self.release(ctx)  # ask() popped a retry enqueued meanwhile: no budget used
            return trial, None
        return trial, index

    def release(self, ctx: StudyContext) -> None:
        with session_scope(self.engine) as session:
            state.release_slot(session, ctx.id)

    # -- ending ---------------------------------------------------------------------------

    def finish_stopping(self, ctx: StudyContext) -> None:
        """WAITING retries of a stopping study fail (a resume grows the budget instead); the
        last process to see no RUNNING trial sets ``stopped``."""
        self.recover(ctx)
        failed = fail_waiting_trials(ctx.storage, ctx.study._study_id, STOPPED_ERROR)
        if failed:
            logger.info("study %s is stopping: failed WAITING trials %s", ctx.id, failed)
        if not ctx.trials(TrialState.RUNNING):
            self.set_status(ctx.id, "stopped", from_=("stopping",))

    def maybe_complete(self, ctx: StudyContext, row: Study, *, timed_out: bool) -> str | None:
        """End the study when it is done (:func:`state.not_done_reason`); else why not."""
        self.recover(ctx)
        trials = ctx.trials()
        reason = state.not_done_reason(row, trials, timed_out=timed_out)
        if reason is None:
            status, error = state.final_status(trials)
            unchanged = Study.n_claimed == row.n_claimed  # a claim meanwhile keeps it open
            self.set_status(
                row.id, status, from_=("queued", "running"), error=error, where=unchanged
            )
        elif self.orphan_after_s is not None and (
            missing := state.claims_without_trial(row, trials)
        ):
            self._heal_leaked_claims(ctx, row.n_claimed, row.n_claimed - missing)
        if reason is not None and reason != self._reasons.get(ctx.id):
            logger.info("study %s not complete yet: %s", ctx.id, reason)
        self._reasons[ctx.id] = reason
        return reason

    def _heal_leaked_claims(self, ctx: StudyContext, claimed: int, originals: int) -> None:
        """A claim whose trial was never created (its worker died, or the database dropped
        between the UPDATE and ``ask()``) would keep the study open forever: once the same
        gap has lasted ``orphan_after_s``, those claims are given back."""
        assert self.orphan_after_s is not None
        key = (ctx.id, claimed, originals)
        first = self._leaks.setdefault(key, time.monotonic())
        if time.monotonic() - first < self.orphan_after_s:
            return
        with session_scope(self.engine) as session:
            state.give_back_claims(session, ctx.id, claimed, originals)
        logger.warning("study %s: gave back %d leaked claim(s)", ctx.id, claimed - originals)
        self._leaks.pop(key, None)

    def reap_once(self) -> int:
        """One pass of the API's reaper over the running and stopping studies (stale trials,
        stop, completion) plus vanished Optuna studies; how many studies it looked at. An error
        of one study that is not about connectivity is logged and the pass goes on."""
        try:
            rows = self.studies(("running", "stopping"))
            self.fail_vanished()
        except Exception as exc:
            if is_connectivity_error(exc):
                self.clock.reached(False)
            raise
        for row in rows:
            try:
                ctx = self.open(row)
                if ctx is None:
                    continue
                if row.status == "stopping":
                    self.finish_stopping(ctx)
                else:
                    self.maybe_complete(ctx, row, timed_out=False)
            except Exception as exc:
                if is_connectivity_error(exc):
                    self.clock.reached(False)  # down again: end this pass
                    raise
                self._contexts.pop(row.id, None)
                logger.exception("reaper: study %s failed", row.id)
        return len(rows)
