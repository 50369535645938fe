"""Train many trials of one architecture at once: fixed-N slots over one ``StackedNetwork``.

Slot API::

    trainer = StackedTrainer(n_slots=16)
    results = trainer.run(next_trial, on_trial_end=tell)

``next_trial() -> (TrainConfig, on_epoch_end | None) | None`` is called whenever a slot is
free: at the start (once per slot) and after every epoch in which a trial ended. A freed slot
is re-initialised in place (fresh weights from the trial's seed, zero optimizer state, its own
step counter, data split and RNG) with the next trial, until ``next_trial`` returns ``None``
and every running trial has ended. ``on_trial_end(result, error)`` is called as soon as a
trial ends; ``run`` returns the ``TrainResult``s in hand-out order.

A trial ends when its ``epochs`` are done, when its ``on_epoch_end`` returns a truthy value
(pruned), when its callback's ``should_stop()`` (if the callback has that method) returns
true, or when its loss becomes non-finite. ``should_stop`` is polled between epochs and every
``config.stop_check_steps`` of the trial's steps, as ``bnn_core.train.train`` polls it: the
trial ends within those steps with its completed epochs, ``stopped_early=True`` and no test
evaluation. A non-finite loss ends that trial alone with ``error = TrainingDiverged`` (its
completed epochs in ``error.epochs`` and ``result.epochs``), detected at the latest
``DIVERGENCE_CHECK_EVERY`` steps later. Trials never mix: every op of the stacked network and
optimizer is per trial, so the other trials compute exactly what they would have computed
beside a healthy one.

All trials share what fixes the tensor shapes and the data (``SHARED_FIELDS``); each has its
own seed (init, split, batch order, augmentation), hyperparameters and schedules, which are
evaluated at the trial's own step. Epochs of all slots are aligned (same steps per epoch), so
metrics, callbacks and refills happen at group epoch boundaries; one host sync per epoch plus
one every ``DIVERGENCE_CHECK_EVERY`` steps.

Speed settings: ``config.compile`` compiles the network once per shape for the whole process
(``compile_cache``); ``capture="graph"`` (or ``"auto"``, on CUDA) replays the whole step from
a CUDA graph (``capture``); ``conv_impl="auto"`` times grouped against split convolutions on
CUDA (``tuning``). Out-of-memory back-off, parking and shrinking live in ``slots``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError, EpochMetrics, TrainConfig, TrainResult
from ..data import Dataset
from ..devices import autocast, synchronize
from ..schedules import schedule_value
from ..train import DIVERGENCE_CHECK_EVERY, TrainingDiverged
from .capture import CAPTURE_MODES
from .epoch import GroupEpoch
from .evaluation import evaluate
from .group import GroupBuilder
from .network import CONV_IMPLS
from .slots import EpochCallback, Slot, SlotManager, TrialEndCallback, TrialSource
from .stackable import SHARED_FIELDS, check_stackable, is_stackable

logger = logging.getLogger(__name__)

__all__ = [
    "SHARED_FIELDS",
    "EpochCallback",
    "TrialSource",
    "TrialEndCallback",
    "StackedTrainer",
    "train_stacked",
    "check_stackable",
    "is_stackable",
]


class StackedTrainer(GroupBuilder, SlotManager):
    """Trains up to ``n_slots`` trials at once (see the module docstring for the slot API).

    ``dataset`` reuses loaded arrays; ``model_options`` go to ``build_model`` (e.g.
    ``{"width": 0.25}``); ``verify`` checks once that the stacked network reproduces the single
    models (always on for non-``nn.Sequential`` models when ``verify`` is None).
    ``conv_impl`` is one of ``CONV_IMPLS`` or ``"auto"`` (on CUDA, time both at every build
    and keep the faster: ``conv_impl_chosen`` and ``conv_timings`` say what was measured).
    ``capture`` is one of ``CAPTURE_MODES``: ``"off"`` (eager steps), ``"graph"`` / ``"auto"``
    (the whole step as a CUDA graph on CUDA; eager on the CPU).
    """

    def __init__(
        self,
        n_slots: int,
        *,
        dataset: Dataset | None = None,
        model_options: dict[str, Any] | None = None,
        verify: bool | None = None,
        shrink_when_idle: bool = True,
        conv_impl: str = "auto",
        capture: str = "off",
    ) -> None:
        if n_slots < 1:
            raise ConfigError("n_slots", f"must be >= 1, got {n_slots!r}")
        if conv_impl not in ("auto", *CONV_IMPLS):
            choices = ", ".join(("auto", *CONV_IMPLS))
            raise ConfigError("conv_impl", f"must be one of {choices}, got {conv_impl!r}")
        if capture not in CAPTURE_MODES:
            raise ConfigError(
                "capture", f"must be one of {', '.join(CAPTURE_MODES)}, got {capture!r}"
            )
        self.n_slots = n_slots
        self.dataset = dataset
        self.model_options = dict(model_options or {})
        self.verify = verify
        self.shrink_when_idle = shrink_when_idle
        self.conv_impl = conv_impl
        self.conv_impl_chosen = "grouped"
        self.conv_timings: dict[str, float] = {}
        self.capture = capture
        self.slots: list[Slot | None] = []
        self.results: dict[int, TrainResult] = {}
        self.oom_backoffs = 0
        self.steps_run = 0
        self.compile_failed: str | None = None
        # Seconds summed over ``run``: building groups, compiling (the first step of a new compiled
        # network), training steps (compiling included), evaluation and the epoch's host sync.
        self.timings = {"build": 0.0, "compile": 0.0, "train": 0.0, "eval": 0.0}

    # ------------------------------------------------------------------ the run
    def run(
        self, next_trial: TrialSource, on_trial_end: TrialEndCallback | None = None
    ) -> list[TrainResult]:
        """Run trials from ``next_trial`` until it returns None and all slots are done."""
        self.start_feed(next_trial)
        self._on_trial_end = on_trial_end
        first = self.pull()
        if first is None:
            return []
        self.reference = first[0]
        self._setup(first[0])
        self.build_fitting(self.n_slots)
        self.slots = [None] * self.n_slots
        self.fill_slot(0, first)
        for index in range(1, self.n_slots):
            self.refill(index)
        while self._busy():
            self._end_stopped_trials()  # a stop asked for between epochs
            if not self._busy():
                break
            epoch = self._train_epoch()
            self._end_epoch(epoch)
            self.shrink_if_idle()
        self.park_compiled()
        # One parseable line per run (benchmarks/e2e_study.py reads it from worker logs).
        timings = {k: round(v, 3) for k, v in self.timings.items()}
        summary = {"slots": self.n_slots, "trials": len(self.results), "steps": self.steps_run}
        logger.info("stacked run timings %s", json.dumps({**summary, **timings}))
        return [self.results[i] for i in sorted(self.results)]

    def _busy(self) -> bool:
        return any(slot is not None for slot in self.slots)

    # ------------------------------------------------------------------ one group epoch
    def _train_epoch(self) -> GroupEpoch:
        start = time.perf_counter()
        self.network.train()
        epoch = GroupEpoch.draw(
            self.slots, self.optimizer, self.n_train, self.steps_per_epoch, self.batch,
            self.augment, self.device,
        )  # fmt: skip
        i = 0
        while i < self.steps_per_epoch:
            out_of_memory = False
            try:
                losses, hits = self._step_at(epoch, i)
            except torch.cuda.OutOfMemoryError:
                if self.n_slots == 1:
                    raise
                out_of_memory = True
            if out_of_memory:
                # Outside the except block, so the traceback no longer pins the step's tensors.
                epoch.narrow(self.back_off())
                continue
            epoch.add(i, losses, hits)
            self.steps_run += 1
            i += 1
            if i < self.steps_per_epoch:
                self._poll(epoch, i)
        self.timings["train"] += time.perf_counter() - start
        return epoch

    def _step_at(self, epoch: GroupEpoch, i: int) -> tuple[Tensor, Tensor]:
        x, y = epoch.batch(i, self.x_train, self.y_train, self.batch, self.augment)
        row = epoch.table[i]
        if self._compile_pending:
            return self._first_compiled_step(x, y, row)
        if self._graph is not None:
            return self._graph(x, y, row)
        return self._step(x, y, row)

    def _step(self, x: Tensor, y: Tensor, row: Tensor) -> tuple[Tensor, Tensor]:
        with self._autocast():
            logits = self.forward(x)
        # Sum over trials of each trial's mean CE: trial n's gradient is its solo gradient.
        per_trial = F.cross_entropy(logits.float().permute(0, 2, 1), y, reduction="none").mean(0)
        self.optimizer.zero_grad()
        per_trial.sum().backward()
        rows = self.optimizer.n_rows
        self.optimizer.set_buffer(row[:rows])
        self.optimizer.step(count_mask=row[rows])
        correct = (logits.detach().argmax(-1) == y).sum(0)
        return per_trial.detach(), correct

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        """bf16 autocast as ``devices.autocast``; for a captured step without autocast's cast
        cache, as CUDA graphs require (the same casts, recomputed instead of reused)."""
        if self._graph is not None and self.reference.precision == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)
        return autocast(self.device, self.reference.precision)

    def _first_compiled_step(self, x: Tensor, y: Tensor, row: Tensor) -> tuple[Tensor, Tensor]:
        """The first step after a new compiled network compiles it (forward and backward).
        If torch.compile fails (a backend missing, an unsupported op), train eagerly instead:
        eager computes the same function, only slower, and a trial should not die of it."""
        start = time.perf_counter()
        try:
            result = self._step(x, y, row)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any compiler error: fall back to eager
            self.compile_failed = f"{type(exc).__name__}: {exc}"[:500]
            warnings.warn(
                f"torch.compile failed, training eagerly: {self.compile_failed}",
                RuntimeWarning,
                stacklevel=2,
            )
            self.forward = self.network
            result = self._step(x, y, row)  # the optimizer had not stepped: a clean retry
        self._compile_pending = False
        synchronize(self.device)
        self.timings["compile"] += time.perf_counter() - start  # compiling + one step
        return result

    # ------------------------------------------------------------------ ending trials
    def _poll(self, epoch: GroupEpoch, i: int) -> None:
        """After step ``i`` of the epoch: end the trials asked to stop (each at its own
        ``stop_check_steps``) and, every ``DIVERGENCE_CHECK_EVERY`` steps, the diverged ones."""
        for index, slot in enumerate(self.slots):
            if slot is None or (slot.step + i) % slot.config.stop_check_steps:
                continue
            if slot.stop_requested():
                self._end_trial(index, stopped=True, interrupted=True)
                epoch.idle_from(i, index, self.optimizer)
        if i % DIVERGENCE_CHECK_EVERY == 0:
            for index, bad in enumerate(epoch.bad_step.tolist()):
                slot = self.slots[index]
                if slot is not None and bad >= 0:
                    error = TrainingDiverged(slot.epoch + 1, bad, slot.history)
                    self._end_trial(index, error=error)
                    epoch.idle_from(i, index, self.optimizer)

    def _end_stopped_trials(self) -> None:
        for index, slot in enumerate(self.slots):
            if slot is not None and slot.stop_requested():
                self._end_trial(index, stopped=True, interrupted=True)
                self.refill(index)

    def _end_epoch(self, epoch: GroupEpoch) -> None:
        """Validate, read the epoch's sums (one sync), then per slot: record the metrics,
        call its callback, end the trial if it is done, refill freed slots."""
        start = time.perf_counter()
        x_val, y_val = (
            (self.x_test, self.y_test) if self.val_is_test else (self.x_train, self.y_train)
        )
        assert x_val is not None and y_val is not None
        precision = self.reference.precision
        val_loss, val_acc = evaluate(self.network, self.val_index, x_val, y_val, precision)
        spe = self.steps_per_epoch
        counted = epoch.table[:, self.optimizer.n_rows].sum(0)  # [N] steps whose flips count
        flips = self.optimizer.flip_counts.clone()
        self.optimizer.flip_counts.zero_()
        synchronize(self.device)
        host = {
            "loss": (epoch.loss_sum / spe).tolist(),
            "acc": (epoch.correct.double() / (spe * self.batch)).tolist(),
            "val_loss": val_loss.tolist(),
            "val_acc": val_acc.tolist(),
            "counted": counted.tolist(),
            "flips": flips.tolist(),
            "bad_step": epoch.bad_step.tolist(),
        }
        self.timings["eval"] += time.perf_counter() - start
        seconds = time.perf_counter() - epoch.start
        for index, slot in enumerate(self.slots):
            if slot is None:
                if index in epoch.freed:
                    self.refill(index)
                continue
            slot.step += spe
            slot.epoch += 1
            if host["bad_step"][index] >= 0:
                error = TrainingDiverged(slot.epoch, host["bad_step"][index], slot.history)
                self._end_trial(index, error=error)
            else:
                metrics = self._metrics(slot, index, host, seconds)
                slot.history.append(metrics)
                pruned = bool(slot.callback(metrics)) if slot.callback is not None else False
                if not pruned and slot.epoch < slot.config.epochs:
                    continue
                self._end_trial(index, stopped=pruned)
            self.refill(index)

    def _metrics(
        self, slot: Slot, index: int, host: dict[str, list], seconds: float
    ) -> EpochMetrics:
        steps = host["counted"][index]
        sizes = self.optimizer.layer_sizes
        flips = host["flips"][index]
        per_layer = {
            name: (c / (size * steps) if steps else 0.0)
            for name, c, size in zip(self.layer_names, flips, sizes, strict=True)
        }
        return EpochMetrics(
            epoch=slot.epoch,
            train_loss=host["loss"][index],
            train_accuracy=host["acc"][index],
            val_loss=host["val_loss"][index],
            val_accuracy=host["val_acc"][index],
            flip_ratio=sum(flips) / (sum(sizes) * steps) if steps else 0.0,
            flip_ratio_per_layer=per_layer,
            hyperparameters=self._hyperparameters(slot),
            seconds=seconds,
        )

    def _hyperparameters(self, slot: Slot) -> dict[str, float]:
        spe = self.steps_per_epoch
        total = spe * slot.config.epochs
        step = max(slot.step - 1, 0)
        return {
            item.name: schedule_value(item.base, item.schedule, step, spe, total)
            for item in slot.scheduled
        }

    def _end_trial(
        self,
        index: int,
        *,
        stopped: bool = False,
        interrupted: bool = False,
        error: BaseException | None = None,
    ) -> None:
        """Record slot ``index``'s result, free the slot and tell ``on_trial_end``."""
        slot = self.slots[index]
        assert slot is not None
        test_accuracy = None
        if self.val_is_test and slot.history:
            test_accuracy = slot.history[-1].val_accuracy  # the "val" split is the test set
        elif error is None and not interrupted and slot.config.evaluate_test:
            test_accuracy = self._test_accuracy(index)
        result = TrainResult(
            config=slot.config,
            epochs=slot.history,
            stopped_early=stopped and error is None,
            test_accuracy=test_accuracy,
            seconds=time.perf_counter() - slot.start,
        )
        self.results[slot.order] = result
        self.slots[index] = None
        if self._on_trial_end is not None:
            self._on_trial_end(result, error)

    def _test_accuracy(self, index: int) -> float:
        self._load_test_set()
        assert self.x_test is not None and self.y_test is not None
        rows = torch.arange(len(self.y_test), device=self.device)[:, None]
        rows = rows.expand(-1, self.n_slots)
        _, acc = evaluate(self.network, rows, self.x_test, self.y_test, self.reference.precision)
        return float(acc[index])


def train_stacked(
    configs: Sequence[TrainConfig],
    callbacks: Sequence[EpochCallback | None] | None = None,
    *,
    n_slots: int | None = None,
    dataset: Dataset | None = None,
    model_options: dict[str, Any] | None = None,
) -> list[TrainResult]:
    """Train ``configs`` (same model, dataset, batch size, epochs, ...) as stacked trials.

    ``callbacks[i]`` is trial i's ``on_epoch_end`` (truthy -> that trial stops). With
    ``n_slots < len(configs)`` the trials run in waves through the slot API. Raises
    ``ConfigError`` naming the first field the configs disagree on.
    """
    configs = list(configs)
    check_stackable(configs, (*SHARED_FIELDS, "epochs"))
    calls = list(callbacks) if callbacks is not None else [None] * len(configs)
    if len(calls) != len(configs):
        raise ConfigError("callbacks", f"need {len(configs)} callbacks, got {len(calls)}")
    queue = deque(zip(configs, calls, strict=True))

    def next_trial() -> tuple[TrainConfig, EpochCallback | None] | None:
        return queue.popleft() if queue else None

    trainer = StackedTrainer(n_slots or len(configs), dataset=dataset, model_options=model_options)
    return trainer.run(next_trial)
