"""One study as this worker trains it: claim the next trial, check whether to stop, keep a
trial's heartbeat, train solo, tell and count outcomes.

:class:`StudyRun` is the whole interface a trial runner needs (the solo path here and
:class:`worker.stacked.StackedRun`); neither sees the :class:`worker.loop.Worker`.

Budget (exact across workers): a fresh trial is created only after
``UPDATE bnn_studies SET n_claimed = n_claimed + 1 WHERE id = :id AND n_claimed < n_trials``
matched a row (:meth:`service.lifecycle.Lifecycle.claim`). Retries (WAITING trials with
``system_attrs['failed_trial']``) never consume budget. Hence COMPLETE + PRUNED + finally-FAILED
trials == n_trials when the study completes.

Seeds: a seeded study samples each fresh trial with a sampler seeded from (the spec's seed,
the claim's index), recorded as user attr ``sampler_seed``: reruns draw the same points, and
workers that share the spec's seed still draw different ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from bnn_core.config import TrainConfig
from service.lifecycle import Lifecycle, StudyContext, is_connectivity_error, timed_out
from worker import metrics
from worker.control import Heartbeat, Repeater
from worker.datasets import DataSets
from worker.objective import build_sampler, claim_seed
from worker.settings import WorkerSettings, use_compile
from worker.trial import (
    STUDY_STOPPED,
    WORKER_TERMINATED,
    TrialOutcome,
    prepare_trial,
    retry_db,
    tell_outcome,
    train_trial,
)
from worker.warm_start import warm_sampler

__all__ = ["STUDY_TIMED_OUT", "WorkerStats", "StudyRun"]

logger = logging.getLogger(__name__)

STUDY_TIMED_OUT = "study timed out"  # timeout_s passed: running trials end within a few steps


@dataclass
class WorkerStats:
    """What a worker did (returned by :func:`worker.loop.run_worker`)."""

    trials: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    db_errors: int = 0
    errors: int = 0


class StudyRun:
    """The trials of one study on this worker's ``device``."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        ctx: StudyContext,
        settings: WorkerSettings,
        *,
        device: str,
        stop: threading.Event,
        stats: WorkerStats,
        datasets: DataSets,
        train_fn: Callable[..., Any] | None = None,
        warm: list[FrozenTrial] | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.ctx = ctx
        self.spec = ctx.spec
        self.settings = settings
        self.device = "cpu" if ctx.spec.device == "cpu" else device
        self.stop = stop
        self.stats = stats
        self.datasets = datasets
        self.train_fn = train_fn
        self.warm = warm or []  # warm-start trials (worker.warm_start): every sampler sees them
        self._status: tuple[float, str, Any] = (0.0, "running", None)
        self._watch: Repeater | None = None

    # -- claiming -------------------------------------------------------------------------

    def claim(self) -> optuna.Trial | None:
        """A retry first, else a fresh trial within the budget; None when neither is left."""
        claimed = self.lifecycle.claim(self.ctx, self._sampler_for)
        if claimed is None:
            return None
        trial, index = claimed
        seed = self.spec.sampler.seed
        if index is not None and seed is not None and self.spec.sampler.name != "qmc":
            retry_db(
                lambda: trial.set_user_attr("sampler_seed", claim_seed(seed, index)),
                "sampler_seed",
            )
        return trial

    def _sampler_for(self, index: int) -> optuna.samplers.BaseSampler:
        seed = self.spec.sampler.seed
        if seed is None or self.spec.sampler.name == "qmc":  # QMC: trial number picks the point
            return self.ctx.study.sampler
        seed = claim_seed(seed, index)
        return warm_sampler(self.spec, build_sampler(self.spec, seed=seed), self.warm, seed)

    def claim_next(self, in_flight: int) -> optuna.Trial | None:
        """Another trial while ``in_flight`` trials of this run are training; None when the
        worker, the study, the worker's trial cap or the database says stop."""
        cap = self.settings.worker_max_trials
        if self.stop.is_set() or self.should_stop() is not None:
            return None
        if cap is not None and self.stats.trials + in_flight >= cap:
            return None
        try:
            return self.claim()
        except Exception as exc:
            if not is_connectivity_error(exc):
                raise
            logger.warning("no further trial (database unavailable: %s)", exc)
            return None

    # -- running --------------------------------------------------------------------------

    @contextmanager
    def watching(self) -> Iterator[None]:
        """While training: a thread reads the study's status every ``status_check_s``
        (:meth:`refresh_status`), so :meth:`should_stop`, which training polls every
        ``stop_check_steps`` steps, only reads memory -- a stop reaches a running trial within
        about a second plus those steps, never at the end of its epoch."""
        self._watch = Repeater(
            self.refresh_status, self.settings.status_check_s, f"status-{self.ctx.id}"
        )
        self._watch.start()
        try:
            yield
        finally:
            self._watch.stop()
            self._watch = None

    def refresh_status(self) -> bool:
        """Read the study's status and start; False when the connection is lost (the last one
        read is kept)."""
        try:
            status, started = self.lifecycle.status_and_start(self.ctx.id)
        except Exception as exc:
            if not is_connectivity_error(exc):
                raise
            return False
        self._status = (time.monotonic(), status, started)
        return True

    def should_stop(self) -> str | None:
        """Polled every ``stop_check_steps`` steps and after every epoch: SIGTERM, then the
        study's status (read by :meth:`watching`'s thread; without it, at most every
        ``status_check_s`` here) and timeout. SIGTERM in a stopping study ends the trial as
        stopped (no retry; a resume grows the budget instead)."""
        if self.stop.is_set():
            if not self.refresh_status():
                return WORKER_TERMINATED
            stopping = self._status[1] in ("stopping", "stopped")
            return STUDY_STOPPED if stopping else WORKER_TERMINATED
        checked = self._status[0]
        if self._watch is None and time.monotonic() - checked >= self.settings.status_check_s:
            if not self.refresh_status():
                return None  # keep training; the next poll checks again
        _, status, started = self._status
        if status not in ("queued", "running"):
            return STUDY_STOPPED if status in ("stopping", "stopped") else f"study {status}"
        if timed_out(self.spec.timeout_s, started):
            return STUDY_TIMED_OUT
        return None

    def heartbeat(self, trial: optuna.Trial) -> Heartbeat:
        """The heartbeat of ``trial`` (not started); its beats tell the stale clock whether
        the database answered."""
        return Heartbeat(
            self.ctx.storage,
            trial._trial_id,
            self.settings.heartbeat_interval_s,
            self.lifecycle.clock.reached,
        )

    def prepare(self, trial: optuna.Trial, *, stacked: bool) -> TrainConfig:
        """Sample the trial's config (see :func:`worker.trial.prepare_trial`)."""
        return prepare_trial(
            self.spec,
            trial,
            worker_id=self.settings.worker_id,
            device=self.device,
            data_root=self.datasets.root,
            download=self.settings.download,
            compile=use_compile(self.settings.compile, self.device, stacked=stacked),
            train_images=self._train_images(),
        )

    def _train_images(self) -> int | None:
        """The data set's training images (for the trial's filter view); None when it cannot
        be loaded here, in which case training records why on the trial."""
        try:
            return len(self.load_data().y_train)
        except Exception:  # noqa: BLE001 - the trial's own load reports the error
            return None

    def finish(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        """Tell Optuna the outcome (a retry enqueued when asked), then count and log it."""
        tell_outcome(self.ctx.study, trial, outcome, self.ctx.retry_callback)
        self.record(trial, outcome)

    def record(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        state = outcome.state.name
        metrics.trial_finished(state)
        self.stats.trials += 1
        self.stats.by_state[state] = self.stats.by_state.get(state, 0) + 1
        logger.info(
            "study %s trial %s: %s in %.1fs%s",
            self.ctx.id,
            trial.number,
            state,
            outcome.seconds,
            f" ({outcome.error or outcome.stop_reason})" if state != "COMPLETE" else "",
        )

    def run_solo(self, trial: optuna.Trial) -> None:
        """Train one trial, with its heartbeat running until the outcome is told."""
        with self.heartbeat(trial):
            outcome = train_trial(
                self.spec,
                trial,
                lambda: self.prepare(trial, stacked=False),
                self.should_stop,
                train_fn=self.train_fn or self._train_cached,
            )
            tell_outcome(self.ctx.study, trial, outcome, self.ctx.retry_callback)
        self.record(trial, outcome)

    def load_data(self) -> Any:
        return self.datasets.load(self.spec.dataset, self.spec.data_subdir)

    def _train_cached(self, config: TrainConfig, on_epoch_end: Any = None) -> Any:
        """``bnn_core.train.train`` on the cached data set (errors fail the trial), polling the
        recorder's ``should_stop`` every ``stop_check_steps`` steps."""
        from bnn_core.train import train

        dataset = self.datasets.load(config.dataset, config.data_subdir)
        should_stop = getattr(on_epoch_end, "should_stop", None)
        return train(config, on_epoch_end, should_stop, dataset=dataset)
