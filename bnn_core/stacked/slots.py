"""The slots of a ``StackedTrainer``: handing trials in, parking them, resizing the group.

A slot holds one running trial (``Slot``: its config, callback, RNG, data split, step and
epoch counters, history). ``SlotManager`` (mixed into ``StackedTrainer``) owns every change
of the group's membership:

* ``refill(index)``: a freed slot takes a parked trial if there is one, else the next trial
  from ``next_trial`` (fresh weights from its seed, zero optimizer state), else stays empty.
* ``back_off()``: a CUDA out-of-memory error in a step halves N. The trials of the dropped
  slots are parked on the host with their weights and optimizer state and resume, unchanged,
  when a slot frees up. A parked trial redoes the interrupted epoch (its step counter had not
  advanced; its weights keep the partial epoch's updates); out-of-memory errors nearly always
  strike at the first step, where this is exact.
* ``shrink_if_idle()``: once ``next_trial`` is exhausted, halve N while at most half of the
  slots are busy, so the last trials do not pay for empty ones.
* ``build_fitting(n)``: build the group, halving N while the network itself does not fit.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import EpochMetrics, TrainConfig, TrainResult
from . import compile_cache
from .network import trial_view
from .stackable import check_stackable

__all__ = ["Slot", "Parked", "SlotManager", "EpochCallback", "TrialSource", "TrialEndCallback"]

EpochCallback = Callable[[EpochMetrics], Any]
TrialSource = Callable[[], "tuple[TrainConfig, EpochCallback | None] | None"]
TrialEndCallback = Callable[[TrainResult, BaseException | None], Any]


@dataclass
class Slot:
    """One running trial."""

    order: int  # hand-out number: the trial's place in ``run``'s result list
    config: TrainConfig
    callback: EpochCallback | None
    generator: torch.Generator  # the trial's batch order and augmentation stream
    scheduled: list[Any]  # bnn_core.optim's scheduled hyperparameters of this trial
    train_index: np.ndarray
    val_index: np.ndarray
    start: float = field(default_factory=time.perf_counter)
    step: int = 0
    epoch: int = 0
    history: list[EpochMetrics] = field(default_factory=list)

    def stop_requested(self) -> bool:
        """The callback's ``should_stop()`` (if it has one) asks this trial to stop now."""
        should_stop = getattr(self.callback, "should_stop", None)
        return bool(should_stop()) if callable(should_stop) else False


@dataclass
class Parked:
    """A trial evicted by an out-of-memory back-off, with everything needed to resume it."""

    slot: Slot
    model: nn.Module
    optimizer_state: dict[str, Tensor]


class SlotManager:
    """Slot bookkeeping of ``StackedTrainer`` (see the module docstring)."""

    slots: list[Slot | None]
    n_slots: int
    _split: Callable[[TrainConfig], tuple[np.ndarray, np.ndarray]]  # GroupBuilder's

    def start_feed(self, next_trial: TrialSource) -> None:
        self._next_trial = next_trial
        self._handed_out = 0
        self._exhausted = False
        self._parked: deque[Parked] = deque()

    def pull(self) -> tuple[TrainConfig, EpochCallback | None] | None:
        """The next trial from ``next_trial``; once it returned None it is not asked again."""
        if self._exhausted:
            return None
        item = self._next_trial()
        if item is None:
            self._exhausted = True
        return item

    def refill(self, index: int) -> None:
        if self._parked:
            self._resume(index, self._parked.popleft())
            return
        item = self.pull()
        if item is None:
            self.slots[index] = None
            return
        self.fill_slot(index, item)

    def fill_slot(self, index: int, item: tuple[TrainConfig, EpochCallback | None]) -> None:
        from ..optim import build_optimizer

        config, callback = item
        check_stackable([self.reference, config])
        model = self._single_model(config)
        # The trial's rows as its eval_protocol chooses them (GroupBuilder._split).
        train_idx, val_idx = self._split(config)
        # The schedules of bnn_core.optim's pair (they do not depend on the model, so an empty
        # one will do), evaluated per trial at the trial's own step.
        scheduled = build_optimizer(
            nn.Module(), config.optimizer, self.steps_per_epoch, config.epochs
        ).scheduled
        slot = Slot(
            order=self._handed_out,
            config=config,
            callback=callback,
            generator=torch.Generator().manual_seed(config.seed),
            scheduled=list(scheduled),
            train_index=train_idx,
            val_index=val_idx,
        )
        self._handed_out += 1
        self.network.load_trial(index, model.to(self.device))
        self.optimizer.reset_trials([index])
        self._install(index, slot)

    def _install(self, index: int, slot: Slot) -> None:
        self.train_index[:, index] = torch.from_numpy(slot.train_index).to(self.device)
        self.val_index[:, index] = torch.from_numpy(slot.val_index).to(self.device)
        self.optimizer.configure_trial(index, slot.config.optimizer)
        self.slots[index] = slot

    def _resume(self, index: int, parked: Parked) -> None:
        self.network.load_trial(index, parked.model)
        self._restore_state(index, parked.optimizer_state)
        self._install(index, parked.slot)

    # ------------------------------------------------------------------ resizing
    def build_fitting(self, n: int) -> None:
        """``_build(n)``, halving ``n`` while the stacked network itself does not fit."""
        while True:
            try:
                self._build(n)
                return
            except torch.cuda.OutOfMemoryError:
                if n == 1:
                    raise
            # Outside the except block, so the traceback no longer pins the partial build.
            compile_cache.clear()
            torch.cuda.empty_cache()
            n //= 2
            self.oom_backoffs += 1

    def back_off(self) -> list[int]:
        """A CUDA out-of-memory error in a step: halve N, parking the upper half's trials.
        Returns the kept slot indices (the lower half, renumbered from 0)."""
        half = self.n_slots // 2
        keep, park = list(range(half)), list(range(half, self.n_slots))
        self.optimizer.zero_grad()
        compile_cache.clear()
        self._resize(keep, park, reuse=False)
        self.oom_backoffs += 1
        return keep

    def shrink_if_idle(self) -> None:
        """Once no trial is left to hand out, drop idle slots (halving N while at most half
        of the slots are busy), so the last trials do not pay for empty ones."""
        if not self.shrink_when_idle or not self._exhausted or self._parked:
            return
        busy = [i for i, slot in enumerate(self.slots) if slot is not None]
        if not busy or len(busy) > self.n_slots // 2:
            return
        size = self.n_slots
        while size // 2 >= len(busy) and size > 1:
            size //= 2
        idle = [i for i, slot in enumerate(self.slots) if slot is None]
        self._resize(busy + idle[: size - len(busy)], [], reuse=True)

    def _resize(self, keep: list[int], park: list[int], reuse: bool) -> None:
        """Rebuild with the slots in ``keep``; trials in ``park`` wait on the host. With
        ``reuse`` the old compiled network is kept for a later group of its size."""
        captured = {i: self._capture(i) for i in keep + park}
        slots = list(self.slots)
        for i in park:
            slot = slots[i]
            if slot is not None:
                model, state = captured[i]
                self._parked.append(Parked(slot, model, state))
        self.release_group(reuse)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._build(len(keep), [captured[i][0].to(self.device) for i in keep])
        self.slots = [None] * len(keep)
        for new, old in enumerate(keep):
            slot = slots[old]
            self.network.load_trial(new, captured[old][0])
            self._restore_state(new, captured[old][1])
            if slot is not None:
                self._install(new, slot)

    def _optimizer_tensors(self) -> dict[str, Tensor]:
        opt = self.optimizer
        named = {f"s.{k}.{i}": t for k, ts in opt.state.items() for i, t in enumerate(ts)}
        named.update({f"a.{i}": t for i, t in enumerate(opt.exp_avg)})
        named.update({f"b.{i}": t for i, t in enumerate(opt.exp_avg_sq)})
        return named

    def _capture(self, index: int) -> tuple[nn.Module, dict[str, Tensor]]:
        # On the host: an out-of-memory back-off must free device memory, not double it.
        model = self.network.export_trial(index).cpu()
        state = {
            key: trial_view(tensor, self.n_slots)[index].to("cpu", copy=True)
            for key, tensor in self._optimizer_tensors().items()
        }
        state["flips"] = self.optimizer.flip_counts[index].to("cpu", copy=True)
        return model, state

    def _restore_state(self, index: int, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for key, tensor in self._optimizer_tensors().items():
                trial_view(tensor, self.n_slots)[index].copy_(state[key])
            self.optimizer.flip_counts[index].copy_(state["flips"])
