"""Several trials of one study at once on one device through ``bnn_core.stacked``.

When ``spec.trials_per_gpu > 1`` and ``bnn_core.stacked`` can stack the family (every family:
bop, bop2, filter and the latent baselines latent-adam, latent-sgd), the worker runs a
``StackedTrainer`` whose ``next_trial()`` claims the next Optuna trial under the
same budget rule as a solo trial (a WAITING retry first, else an atomic budget claim + ask)
and whose per-slot ``on_epoch_end`` is the same :class:`worker.trial.EpochRecorder` (epochs
attr, report/prune, study stop, SIGTERM). Each trial has its own heartbeat and is told as soon
as its slot finishes; the freed slot is refilled with the next claimed trial.

Falls back to one trial at a time when ``bnn_core.stacked`` is missing, the family is not in
``bnn_core.stacked.STACKABLE_FAMILIES``, the dataset cannot be loaded, or the device is the
CPU (unless ``BNN_TUNE_STACK_ON_CPU=true``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from bnn_core.config import TrainConfig, TrainResult
from service.spec import StudySpec
from worker.control import Heartbeat
from worker.objective import InfeasibleParams
from worker.settings import use_compile
from worker.trial import (
    TRANSIENT_DB_ERRORS,
    EpochRecorder,
    TrialOutcome,
    error_text,
    outcome_of,
    prepare_trial,
    tell_outcome,
)

if TYPE_CHECKING:
    from worker.loop import StudyHandle, Worker

__all__ = ["stacking_slots", "run_stacked"]

logger = logging.getLogger(__name__)


def stacking_slots(spec: StudySpec, device: str, on_cpu: bool = False) -> int:
    """How many trials to stack for ``spec`` on ``device`` (1 = train solo). Grouped kernels
    only pay off on a GPU, so CPU workers train solo unless ``on_cpu`` (tests)."""
    if spec.trials_per_gpu <= 1 or (device == "cpu" and not on_cpu):
        return 1
    try:
        from bnn_core.stacked import STACKABLE_FAMILIES
    except ImportError:
        return 1
    return spec.trials_per_gpu if spec.optimizer in STACKABLE_FAMILIES else 1


@dataclass
class _Running:
    trial: optuna.Trial
    recorder: EpochRecorder | None
    heartbeat: Heartbeat
    started: float


class StackedRun:
    """The slot callbacks of one ``StackedTrainer.run`` for one study."""

    def __init__(self, worker: Worker, handle: StudyHandle, first: optuna.Trial) -> None:
        self.worker = worker
        self.handle = handle
        self.spec = handle.spec
        self.device = worker.trial_device(handle.spec)
        self.pending: list[optuna.Trial] = [first]
        self.running: dict[int, _Running] = {}
        self.handed_out = 0

    def _claim(self) -> optuna.Trial | None:
        if self.pending:
            return self.pending.pop()
        worker, handle = self.worker, self.handle
        cap = worker.settings.worker_max_trials
        if worker.stop.is_set() or worker.should_stop(handle) is not None:
            return None
        if cap is not None and worker.stats.trials + self.handed_out >= cap:
            return None
        try:
            return worker.claim_trial(handle)
        except TRANSIENT_DB_ERRORS as exc:
            logger.warning("no new stacked trial (database unavailable: %s)", exc)
            return None

    def next_trial(self) -> tuple[TrainConfig, Callable[[Any], bool]] | None:
        """Claim, sample and start the heartbeat of the next trial (skipping any that cannot
        train); None when the budget, the study or the worker says stop."""
        while (trial := self._claim()) is not None:
            heartbeat = Heartbeat(
                self.handle.storage,
                trial._trial_id,
                self.worker.settings.heartbeat_interval_s,
                self.worker.db_reached,
            ).__enter__()
            started = time.perf_counter()
            try:
                config = prepare_trial(
                    self.spec,
                    trial,
                    worker_id=self.worker.settings.worker_id,
                    device=self.device,
                    data_dir=self.worker.settings.data_dir,
                    download=self.worker.settings.download,
                    compile=use_compile(self.worker.settings.compile, self.device, stacked=True),
                )
            except InfeasibleParams as exc:
                outcome = TrialOutcome(TrialState.PRUNED, error=str(exc), stop_reason="infeasible")
                self._finish(_Running(trial, None, heartbeat, started), outcome)
                continue
            except Exception as exc:  # noqa: BLE001 - a bad config fails its trial only
                outcome = TrialOutcome(TrialState.FAIL, error=error_text(exc))
                self._finish(_Running(trial, None, heartbeat, started), outcome)
                continue
            recorder = EpochRecorder(
                trial,
                lambda: self.worker.should_stop(self.handle),
                not self.spec.is_multi_objective,
            )
            self.running[id(config)] = _Running(trial, recorder, heartbeat, started)
            self.handed_out += 1
            return config, recorder
        return None

    def on_trial_end(self, result: TrainResult, error: BaseException | None) -> None:
        running = self.running.pop(id(result.config))
        assert running.recorder is not None
        if error is not None:
            outcome = TrialOutcome(TrialState.FAIL, error=error_text(error))
        else:
            try:
                outcome = outcome_of(self.spec, running.recorder, result, result.seconds)
            except FloatingPointError as exc:
                outcome = TrialOutcome(TrialState.FAIL, error=error_text(exc))
        self._finish(running, outcome)

    def _finish(self, running: _Running, outcome: TrialOutcome) -> None:
        outcome.seconds = time.perf_counter() - running.started
        if running.recorder is not None:
            outcome.epochs = running.recorder.epochs
        try:
            tell_outcome(self.handle.study, running.trial, outcome, self.handle.retry_callback)
        finally:
            running.heartbeat.__exit__(None, None, None)
        self.worker.record(self.handle, running.trial, outcome)

    def fail_all(self, exc: BaseException) -> None:
        """The trainer itself failed: every trial still in a slot fails with its error."""
        for running in list(self.running.values()):
            try:
                self._finish(running, TrialOutcome(TrialState.FAIL, error=error_text(exc)))
            except Exception:  # noqa: BLE001 - heartbeat stops; the trial goes stale and retries
                logger.exception("could not record trial %s", running.trial.number)
        self.running.clear()


def run_stacked(worker: Worker, handle: StudyHandle, first: optuna.Trial) -> None:
    """Run ``first`` and further claimed trials of ``handle`` stacked on the worker's device."""
    from bnn_core.data import load_dataset
    from bnn_core.stacked import StackedTrainer, choose_slots

    spec = handle.spec
    try:
        dataset = load_dataset(
            spec.dataset,
            worker.settings.data_dir,
            subdir=spec.data_dir,
            download=spec.download or worker.settings.download,
        )
        slots = choose_slots(
            spec.model,
            dataset.input_shape,
            spec.batch_size,
            worker.trial_device(spec),
            max_slots=spec.trials_per_gpu,
            num_classes=dataset.num_classes,
            family=spec.optimizer,
            precision=spec.precision,
        )
    except Exception as exc:  # noqa: BLE001 - the solo path records the error on the trial
        logger.warning("cannot stack study %s (%s); training solo", handle.id, error_text(exc))
        worker.run_claimed_trial(handle, first)
        return
    logger.info("study %s: stacking up to %d trials on %s", handle.id, slots, worker.device)
    run = StackedRun(worker, handle, first)
    trainer = StackedTrainer(slots, dataset=dataset)
    try:
        trainer.run(run.next_trial, run.on_trial_end)
    except TRANSIENT_DB_ERRORS:
        run.fail_all(RuntimeError("database unavailable"))
        raise
    except Exception as exc:  # noqa: BLE001 - never crash the worker on a trainer error
        logger.exception("stacked trainer failed")
        run.fail_all(exc)
