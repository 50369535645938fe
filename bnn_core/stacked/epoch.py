"""One group epoch's inputs, drawn on the host, and its running sums on the device.

Each trial draws its own batch order and augmentation from its own host generator
(``augment.epoch_draws``, as ``bnn_core.data.DeviceLoader`` does for a solo run), and its
optimizer rows are its hyperparameters at its own steps (its schedules evaluated there), so a
trial sees the same batches and rates in any slot, beside any other trials. ``table`` is
``[steps, optimizer.n_rows + 1, N]``: ``StackedOptimizer.row_names`` rows, then the
flip-count mask (a trial's first step is not counted). An empty slot gets the optimizer's
idle row (a step changes nothing it need not) and an arbitrary order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..augment import AUGMENT_PAD, crop_flip, epoch_draws, normalize
from ..schedules import schedule_value
from .optim import StackedOptimizer
from .slots import Slot

__all__ = ["GroupEpoch", "slot_table"]


@dataclass
class GroupEpoch:
    """The tables of one epoch and its per-trial sums. ``bad_step[n]`` is trial n's first
    step with a non-finite loss (-1: none)."""

    start: float
    order: Tensor  # [steps * B, N] image rows
    offsets: Tensor  # [2, steps * B, N] crop offsets
    flips: Tensor  # [steps * B, N] horizontal flips
    table: Tensor  # [steps, n_rows + 1, N]
    first_step: Tensor  # [N] each trial's step number before this epoch
    loss_sum: Tensor
    correct: Tensor
    bad_step: Tensor
    freed: list[int] = field(default_factory=list)  # slots whose trial ended mid-epoch

    @classmethod
    def draw(
        cls,
        slots: Sequence[Slot | None],
        optimizer: StackedOptimizer,
        n_train: int,
        steps: int,
        batch: int,
        augment: bool,
        device: torch.device,
    ) -> GroupEpoch:
        n = len(slots)
        order = np.zeros((steps * batch, n), dtype=np.int64)
        offsets = np.zeros((2, steps * batch, n), dtype=np.int64)
        flips = np.zeros((steps * batch, n), dtype=bool)
        rows = optimizer.n_rows
        table = np.zeros((steps, rows + 1, n), dtype=np.float64)
        table[:, :rows, :] = optimizer.idle_row()[None, :, None]
        for index, slot in enumerate(slots):
            if slot is None:
                order[:, index] = np.arange(steps * batch) % n_train
                continue
            draws = epoch_draws(n_train, steps * batch, slot.generator, augment)
            order[:, index] = slot.train_index[draws.order[: steps * batch].numpy()]
            if draws.offsets is not None and draws.flips is not None:
                offsets[:, :, index] = draws.offsets.numpy()
                flips[:, index] = draws.flips.numpy()
            table[:, :, index] = slot_table(slot, optimizer, steps)
        first = [slot.step if slot is not None else 0 for slot in slots]
        return cls(
            start=time.perf_counter(),
            order=torch.from_numpy(order).to(device),
            offsets=torch.from_numpy(offsets).to(device),
            flips=torch.from_numpy(flips).to(device),
            table=torch.from_numpy(table).to(torch.float32).to(device),
            first_step=torch.tensor(first, dtype=torch.int64, device=device),
            loss_sum=torch.zeros(n, device=device),
            correct=torch.zeros(n, dtype=torch.int64, device=device),
            bad_step=torch.full((n,), -1, dtype=torch.int64, device=device),
        )

    def batch(
        self, i: int, x_all: Tensor, y_all: Tensor, batch: int, augment: bool
    ) -> tuple[Tensor, Tensor]:
        """Step ``i``'s ``[B, N, C, H, W]`` normalised images and ``[B, N]`` labels."""
        rows = self.order[i * batch : (i + 1) * batch]
        x, y = x_all[rows], y_all[rows]  # uint8 images
        if augment:
            shape = x.shape
            flat = x.reshape(-1, *shape[2:])
            off = self.offsets[:, i * batch : (i + 1) * batch].reshape(2, -1)
            flip = self.flips[i * batch : (i + 1) * batch].reshape(-1)
            x = crop_flip(flat, off[0], off[1], flip, AUGMENT_PAD).reshape(shape)
        return normalize(x), y

    def add(self, i: int, losses: Tensor, hits: Tensor) -> None:
        """Sum step ``i``'s per-trial losses and hits; note a first non-finite loss."""
        step = self.first_step + (i + 1)
        self.bad_step = torch.where(
            (self.bad_step < 0) & ~torch.isfinite(losses), step, self.bad_step
        )
        self.loss_sum += losses
        self.correct += hits

    def idle_from(self, i: int, index: int, optimizer: StackedOptimizer) -> None:
        """Slot ``index`` idles from step ``i`` on (no updates, no flips counted)."""
        rows = optimizer.n_rows
        idle = torch.as_tensor(optimizer.idle_row(), dtype=torch.float32)
        self.table[i:, :rows, index] = idle.to(self.table.device)
        self.table[i:, rows, index] = 0
        self.freed.append(index)

    def narrow(self, keep: list[int]) -> None:
        """After an out-of-memory back-off: only the ``keep`` slots (renumbered from 0)."""
        self.order, self.flips = self.order[:, keep], self.flips[:, keep]
        self.offsets, self.table = self.offsets[:, :, keep], self.table[:, :, keep]
        self.first_step, self.bad_step = self.first_step[keep], self.bad_step[keep]
        self.loss_sum, self.correct = self.loss_sum[keep], self.correct[keep]
        self.freed = [i for i in self.freed if i < len(keep)]


def slot_table(slot: Slot, optimizer: StackedOptimizer, steps: int) -> np.ndarray:
    """``[steps, n_rows + 1]``: the optimizer rows at the trial's own steps (its schedules
    evaluated there), then the flip-count mask (the trial's first step is not counted)."""
    total = steps * slot.config.epochs
    numbers = slot.step + np.arange(steps)
    values: dict[str, np.ndarray] = {}
    for item in slot.scheduled:
        if item.schedule.kind == "constant":
            values[item.name] = np.full(steps, float(item.base))
        else:
            values[item.name] = np.array(
                [schedule_value(item.base, item.schedule, int(s), steps, total) for s in numbers]
            )
    optimizer_rows = optimizer.trial_rows(slot.config.optimizer, values, numbers)
    count = (numbers > 0).astype(np.float64)[:, None]
    return np.concatenate([optimizer_rows, count], axis=1)
