"""Several trials of one study at once on one device through ``bnn_core.stacked``.

When ``spec.trials_per_gpu > 1`` and ``bnn_core.stacked`` can stack the family (every family:
bop, bop2, filter and the latent baselines latent-adam, latent-sgd), the worker runs a
``StackedTrainer`` whose ``next_trial()`` claims the next Optuna trial under the same budget
rule as a solo trial and whose per-slot ``on_epoch_end`` is the same
:class:`worker.trial.EpochRecorder` (epochs attr, report/prune, study stop, SIGTERM). Each trial
has its own heartbeat and is told as soon as its slot finishes; the freed slot is refilled with
the next claimed trial.

Falls back to one trial at a time when ``bnn_core.stacked`` is missing, the family is not in
``bnn_core.stacked.STACKABLE_FAMILIES``, the dataset cannot be loaded, or the device is the
CPU (unless ``BNN_TUNE_STACK_ON_CPU=true``).

A :class:`StackedRun` sees only a :class:`TrialSource` (claim, stop check, heartbeat, sample,
tell), never the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from bnn_core.config import TrainConfig, TrainResult
from service.lifecycle import is_connectivity_error
from service.spec import StudySpec
from worker.control import Heartbeat
from worker.objective import InfeasibleParams
from worker.trial import EpochRecorder, TrialOutcome, error_text, outcome_of

__all__ = ["TrialSource", "StackedRun", "stacking_slots", "run_stacked"]

logger = logging.getLogger(__name__)


class TrialSource(Protocol):
    """What stacked (and solo) training needs of one study (:class:`worker.study_run.StudyRun`)."""

    spec: StudySpec
    device: str

    def claim_next(self, in_flight: int) -> optuna.Trial | None: ...
    def should_stop(self) -> str | None: ...
    def heartbeat(self, trial: optuna.Trial) -> Heartbeat: ...
    def prepare(self, trial: optuna.Trial, *, stacked: bool) -> TrainConfig: ...
    def finish(self, trial: optuna.Trial, outcome: TrialOutcome) -> None: ...
    def run_solo(self, trial: optuna.Trial) -> None: ...
    def load_data(self) -> Any: ...


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

    def __init__(self, source: TrialSource, first: optuna.Trial) -> None:
        self.source = source
        self.spec = source.spec
        self.pending: list[optuna.Trial] = [first]
        self.running: dict[int, _Running] = {}
        self.handed_out = 0

    def _claim(self) -> optuna.Trial | None:
        if self.pending:
            return self.pending.pop()
        return self.source.claim_next(in_flight=self.handed_out)

    def next_trial(self) -> tuple[TrainConfig, Callable[[Any], bool]] | None:
        """Claim, sample and start the heartbeat of the next trial (skipping any that cannot
        train); None when the budget, the study or the worker says stop."""
        while (trial := self._claim()) is not None:
            heartbeat = self.source.heartbeat(trial).start()
            started = time.perf_counter()
            try:
                config = self.source.prepare(trial, stacked=True)
            except InfeasibleParams as exc:
                outcome = TrialOutcome(TrialState.PRUNED, error=str(exc), stop_reason="infeasible")
                self._finish(_Running(trial, None, heartbeat, started), outcome)
                continue
            except Exception as exc:  # noqa: BLE001 - a bad config fails its trial only
                if is_connectivity_error(exc):
                    heartbeat.stop()
                    raise
                outcome = TrialOutcome(TrialState.FAIL, error=error_text(exc))
                self._finish(_Running(trial, None, heartbeat, started), outcome)
                continue
            recorder = EpochRecorder(
                trial, self.source.should_stop, not self.spec.is_multi_objective
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
            self.source.finish(running.trial, outcome)
        finally:
            running.heartbeat.stop()

    def fail_all(self, exc: BaseException) -> None:
        """The trainer itself failed: every trial still in a slot fails with its error."""
        for running in list(self.running.values()):
            try:
                self._finish(running, TrialOutcome(TrialState.FAIL, error=error_text(exc)))
            except Exception:  # noqa: BLE001 - heartbeat stops; the trial goes stale and retries
                logger.exception("could not record trial %s", running.trial.number)
        self.running.clear()


def run_stacked(source: TrialSource, first: optuna.Trial, study_id: int) -> None:
    """Run ``first`` and further claimed trials of ``source``'s study stacked on its device."""
    from bnn_core.stacked import StackedTrainer, choose_slots

    spec = source.spec
    try:
        dataset = source.load_data()
        slots = choose_slots(
            spec.model,
            dataset.input_shape,
            spec.batch_size,
            source.device,
            max_slots=spec.trials_per_gpu,
            num_classes=dataset.num_classes,
            family=spec.optimizer,
            precision=spec.precision,
        )
    except Exception as exc:  # noqa: BLE001 - the solo path records the error on the trial
        logger.warning("cannot stack study %s (%s); training solo", study_id, error_text(exc))
        source.run_solo(first)
        return
    logger.info("study %s: stacking up to %d trials on %s", study_id, slots, source.device)
    run = StackedRun(source, first)
    trainer = StackedTrainer(slots, dataset=dataset)
    try:
        trainer.run(run.next_trial, run.on_trial_end)
    except Exception as exc:  # noqa: BLE001 - never crash the worker on a trainer error
        if is_connectivity_error(exc):
            run.fail_all(RuntimeError("database unavailable"))
            raise
        logger.exception("stacked trainer failed")
        run.fail_all(exc)
