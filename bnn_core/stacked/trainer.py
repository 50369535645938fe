"""Train many trials of one architecture at once: fixed-N slots over one ``StackedNetwork``.

Slot API (performance.md 2.6)::

    trainer = StackedTrainer(n_slots=16)
    results = trainer.run(next_trial, on_trial_end=tell)

``next_trial() -> (TrainConfig, on_epoch_end | None) | None`` is called whenever a slot is
free: at the start (once per slot) and after every epoch in which a trial finished (its
``epochs`` are done, or its ``on_epoch_end`` returned a truthy value = pruned/stopped).
The freed slot is re-initialised in place (same N: fresh weights from the trial's seed,
zero optimizer state, its own step counter, data split and RNG) with the next trial, until
``next_trial`` returns ``None`` and every running trial has finished.
``on_trial_end(result, error)`` is called as soon as a trial finishes (``error`` is a
``TrainingDiverged`` when its loss became non-finite, else ``None``). ``run`` returns the
``TrainResult``s in hand-out order.

All trials share what fixes the tensor shapes and the data (``SHARED_FIELDS``: model,
dataset, batch size, split fraction, device, precision, ...) and the optimizer family; each has
its own seed (init, split, batch order, augmentation), hyperparameters and schedules, which
are evaluated at the trial's own step. Epochs of all slots are aligned (same steps per
epoch), so per-epoch metrics, callbacks and refills happen at group epoch boundaries; one
host sync per epoch.

A CUDA out-of-memory error halves N: the trials in the dropped slots are parked on the host
with their full state and resumed when a slot frees up. ``choose_slots`` picks N from the free
GPU memory. ``train_stacked(configs, callbacks)`` is the one-shot form.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import AUGMENT_PAD, crop_flip, epoch_draws, normalize
from ..config import ConfigError, EpochMetrics, TrainConfig, TrainResult
from ..data import Dataset, load_dataset, split_indices
from ..devices import autocast, resolve_device, synchronize
from ..layers import binary_layers, use_latent_weights
from ..models import build_model
from ..schedules import schedule_value
from .network import CONV_IMPLS, stack_models, trial_view, verify_stacking
from .optim import LATENT_FAMILIES, STACKABLE_FAMILIES, StackedOptimizer
from .tuning import choose_conv_impl

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

EpochCallback = Callable[[EpochMetrics], Any]
TrialSource = Callable[[], "tuple[TrainConfig, EpochCallback | None] | None"]
TrialEndCallback = Callable[[TrainResult, BaseException | None], Any]

# Fields every trial of one StackedTrainer must share (they fix shapes, data and numerics).
SHARED_FIELDS = (
    "model",
    "dataset",
    "data_root",
    "data_subdir",
    "batch_size",
    "val_fraction",
    "max_train_samples",
    "augment",
    "device",
    "precision",
    "channels_last",
    "compile",
    "optimizer.name",
)
EVAL_BATCH_SIZE = 1000  # per trial, capped so that one chunk holds <= EVAL_IMAGES images
EVAL_IMAGES = 2048
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults: the real Adam and latent-adam
ADAM_EPS = 1e-7  # bnn_core.optim.REAL_ADAM_EPS (real parameters)
LATENT_ADAM_EPS = 1e-8  # torch.optim.Adam's default, as build_optimizer's latent-adam uses
# The per-step table of an epoch is [steps, optimizer.n_rows + 1, N]: the optimizer's buffer
# rows (StackedOptimizer.row_names), then the flip-count mask (row optimizer.n_rows).


def _field(config: TrainConfig, name: str) -> Any:
    value: Any = config
    for part in name.split("."):
        value = getattr(value, part)
    return value


def is_stackable(config: TrainConfig) -> bool:
    """Whether ``config`` can run in a ``StackedTrainer``: a known model and any optimizer
    family of ``STACKABLE_FAMILIES`` (bop, bop2, filter, latent-adam, latent-sgd)."""
    from ..models import MODEL_NAMES

    return config.optimizer.name in STACKABLE_FAMILIES and config.model in MODEL_NAMES


def check_stackable(configs: Sequence[TrainConfig], fields: Iterable[str] = SHARED_FIELDS) -> None:
    """Raise ``ConfigError(field)`` unless all configs agree on ``fields`` and use a family
    the stacked optimizer supports (``STACKABLE_FAMILIES``)."""
    if not configs:
        raise ConfigError("configs", "need at least one config")
    first = configs[0]
    if first.optimizer.name not in STACKABLE_FAMILIES:
        raise ConfigError(
            "optimizer.name",
            f"{first.optimizer.name!r} cannot be stacked; one of {STACKABLE_FAMILIES}",
        )
    for index, config in enumerate(configs[1:], start=1):
        for name in fields:
            if _field(config, name) != _field(first, name):
                raise ConfigError(
                    name,
                    f"stacked trials must share {name}: config {index} has "
                    f"{_field(config, name)!r}, config 0 has {_field(first, name)!r}",
                )


@dataclass
class _Slot:
    """One running trial."""

    order: int
    config: TrainConfig
    callback: EpochCallback | None
    generator: torch.Generator
    scheduled: list[Any]
    train_index: np.ndarray
    val_index: np.ndarray
    start: float = field(default_factory=time.perf_counter)
    step: int = 0
    epoch: int = 0
    history: list[EpochMetrics] = field(default_factory=list)


@dataclass
class _Parked:
    """A trial evicted by an OOM back-off, with everything needed to resume it."""

    slot: _Slot
    model: nn.Module
    optimizer_state: dict[str, Tensor]


class StackedTrainer:
    """Trains up to ``n_slots`` trials at once (see the module docstring for the slot API).

    ``dataset`` reuses loaded arrays; ``model_options`` go to ``build_model`` (e.g.
    ``{"width": 0.25}``); ``verify`` checks once that the stacked network reproduces the single
    models (always on for non-``nn.Sequential`` models when ``verify`` is None).
    ``conv_impl`` is one of ``CONV_IMPLS`` or ``"auto"`` (on CUDA, time both at every build
    and keep the faster: ``conv_impl_chosen`` and ``conv_timings`` say what was measured).
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
    ) -> None:
        if n_slots < 1:
            raise ConfigError("n_slots", f"must be >= 1, got {n_slots!r}")
        if conv_impl not in ("auto", *CONV_IMPLS):
            choices = ", ".join(("auto", *CONV_IMPLS))
            raise ConfigError("conv_impl", f"must be one of {choices}, got {conv_impl!r}")
        self.conv_impl = conv_impl
        self.conv_impl_chosen = "grouped"
        self.conv_timings: dict[str, float] = {}
        self.n_slots = n_slots
        self.dataset = dataset
        self.model_options = dict(model_options or {})
        self.verify = verify
        self.shrink_when_idle = shrink_when_idle
        self.slots: list[_Slot | None] = []
        self.results: dict[int, TrainResult] = {}
        self.oom_backoffs = 0
        self.steps_run = 0
        self.compile_failed: str | None = None

    # ------------------------------------------------------------------ public
    def run(
        self, next_trial: TrialSource, on_trial_end: TrialEndCallback | None = None
    ) -> list[TrainResult]:
        """Run trials from ``next_trial`` until it returns None and all slots are done."""
        self._next_trial = next_trial
        self._on_trial_end = on_trial_end
        self._handed_out = 0
        self._exhausted = False
        self._parked: deque[_Parked] = deque()
        first = self._pull()
        if first is None:
            return []
        self.reference = first[0]
        self._setup(first[0])
        self._build_fitting(self.n_slots)
        self.slots = [None] * self.n_slots
        self._fill_slot(0, first)
        for index in range(1, self.n_slots):
            self._refill(index)
        while any(slot is not None for slot in self.slots):
            self._group_epoch()
            self._maybe_shrink()
        return [self.results[i] for i in sorted(self.results)]

    # ------------------------------------------------------------------ setup
    def _setup(self, config: TrainConfig) -> None:
        check_stackable([config])
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":
            # Shapes are static (fixed N and batch): let cuDNN pick the fastest grouped kernels.
            torch.backends.cudnn.benchmark = True
        data = self.dataset or load_dataset(
            config.dataset, config.data_root, subdir=config.data_subdir, download=config.download
        )
        self.data = data
        self.x_train = torch.from_numpy(np.ascontiguousarray(data.x_train)).to(self.device)
        self.y_train = torch.from_numpy(np.ascontiguousarray(data.y_train)).to(self.device)
        self.x_test: Tensor | None = None
        self.augment = data.augment_by_default if config.augment is None else config.augment
        train_idx, val_idx = split_indices(
            len(data.y_train), config.val_fraction, config.seed, config.max_train_samples
        )
        self.n_train, self.n_val = len(train_idx), len(val_idx)
        # DeviceLoader(drop_last=True): a split smaller than one batch is one short batch.
        self.batch = min(config.batch_size, self.n_train)
        self.steps_per_epoch = self.n_train // self.batch
        self.family = config.optimizer.name

    def _single_model(self, config: TrainConfig) -> nn.Module:
        # Same initial weights as bnn_core.train.train (manual_seed, then build_model), but
        # without touching the caller's global RNG.
        if config.optimizer.name in LATENT_FAMILIES:
            return self._single_latent_model(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(
                config.model, self.data.input_shape, self.data.num_classes, **self.model_options
            )
        return model

    def _single_latent_model(self, config: TrainConfig) -> nn.Module:
        """As ``bnn_core.train``: manual_seed, build_model, ``.to(device)``, channels_last,
        then ``build_optimizer``'s ``use_latent_weights(model, latent_init_scale)``, which
        draws the latent weights from the RNG of the device they are on (the CUDA generator
        on a GPU, seeded by the same manual_seed), so that device's RNG is forked too."""
        device = self.device
        forked: list[int] = []
        if device.type == "cuda":
            forked = [device.index if device.index is not None else torch.cuda.current_device()]
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(config.seed)
            model = build_model(
                config.model, self.data.input_shape, self.data.num_classes, **self.model_options
            ).to(device)
            if config.channels_last:
                model = model.to(memory_format=torch.channels_last)
            use_latent_weights(model, config.optimizer.latent_init_scale)
        return model

    def _build(self, n: int, models: list[nn.Module] | None = None) -> None:
        config = self.reference
        template = self._single_model(config)
        check = self.verify if self.verify is not None else not isinstance(template, nn.Sequential)
        if models is None:
            # Placeholders (every slot is loaded before its first step); distinct weights
            # when they are used to verify the stacking.
            seeds = [replace(config, seed=config.seed + i) for i in range(n)]
            models = [self._single_model(c) for c in seeds] if check else [template] * n
        network = stack_models(models).to(self.device)
        if config.channels_last:
            network = network.to(memory_format=torch.channels_last)
            network.channels_last = True
        if check:
            shape = self.data.input_shape
            example = torch.randn(2, n, *shape, device=self.device)
            if not verify_stacking([m.to(self.device) for m in models], network, example):
                raise ConfigError("model", f"{config.model!r} cannot be stacked exactly")
        self._choose_conv_impl(network, n)
        self.network = network
        compile_network = config.compile and self.compile_failed is None  # failed: stay eager
        self.forward = torch.compile(network) if compile_network else network
        self._compile_pending = compile_network
        self.optimizer = StackedOptimizer(
            network, self.family, betas=ADAM_BETAS, adam_eps=ADAM_EPS, latent_eps=LATENT_ADAM_EPS
        )
        self.layer_names = [name for name, _ in binary_layers(models[0])]
        self.train_index = torch.zeros(self.n_train, n, dtype=torch.int64, device=self.device)
        self.val_index = torch.zeros(self.n_val, n, dtype=torch.int64, device=self.device)
        self.n_slots = n

    def _build_fitting(self, n: int) -> None:
        """``_build(n)``, halving ``n`` while the stacked network itself does not fit."""
        while True:
            try:
                self._build(n)
                return
            except torch.cuda.OutOfMemoryError:
                if n == 1:
                    raise
            # Outside the except block, so the traceback no longer pins the partial build.
            torch.cuda.empty_cache()
            n //= 2
            self.oom_backoffs += 1

    def _choose_conv_impl(self, network: nn.Module, n: int) -> None:
        if self.conv_impl == "auto":
            example = torch.randn(self.batch, n, *self.data.input_shape, device=self.device)
            impl, self.conv_timings = choose_conv_impl(network, example, self.reference.precision)
        else:
            impl, self.conv_timings = self.conv_impl, {}
        network.conv_impl = impl
        self.conv_impl_chosen = impl

    # ------------------------------------------------------------------ slots
    def _pull(self) -> tuple[TrainConfig, EpochCallback | None] | None:
        if self._exhausted:
            return None
        item = self._next_trial()
        if item is None:
            self._exhausted = True
        return item

    def _refill(self, index: int) -> None:
        if self._parked:
            self._resume(index, self._parked.popleft())
            return
        item = self._pull()
        if item is None:
            self.slots[index] = None
            return
        self._fill_slot(index, item)

    def _fill_slot(self, index: int, item: tuple[TrainConfig, EpochCallback | None]) -> None:
        from ..optim import build_optimizer

        config, callback = item
        check_stackable([self.reference, config])
        model = self._single_model(config)
        train_idx, val_idx = split_indices(
            len(self.data.y_train), config.val_fraction, config.seed, config.max_train_samples
        )
        # The schedules of bnn_core.optim's pair (they do not depend on the model, so an empty
        # one will do), evaluated per trial at the trial's own step.
        scheduled = build_optimizer(
            nn.Module(), config.optimizer, self.steps_per_epoch, config.epochs
        ).scheduled
        slot = _Slot(
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

    def _install(self, index: int, slot: _Slot) -> None:
        self.train_index[:, index] = torch.from_numpy(slot.train_index).to(self.device)
        self.val_index[:, index] = torch.from_numpy(slot.val_index).to(self.device)
        self.optimizer.configure_trial(index, slot.config.optimizer)
        self.slots[index] = slot

    # ------------------------------------------------------------------ one group epoch
    def _epoch_tables(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Host-side per-slot batch order, augmentation draws and per-step hyperparameters."""
        n, spe, bs = self.n_slots, self.steps_per_epoch, self.batch
        order = np.zeros((spe * bs, n), dtype=np.int64)
        offsets = np.zeros((2, spe * bs, n), dtype=np.int64)
        flips = np.zeros((spe * bs, n), dtype=bool)
        rows = self.optimizer.n_rows
        table = np.zeros((spe, rows + 1, n), dtype=np.float64)
        table[:, :rows, :] = self.optimizer.idle_row()[None, :, None]
        for index, slot in enumerate(self.slots):
            if slot is None:
                order[:, index] = np.arange(spe * bs) % self.n_train
                continue
            draws = epoch_draws(self.n_train, spe * bs, slot.generator, self.augment)
            order[:, index] = slot.train_index[draws.order[: spe * bs].numpy()]
            if draws.offsets is not None and draws.flips is not None:
                offsets[:, :, index] = draws.offsets.numpy()
                flips[:, index] = draws.flips.numpy()
            table[:, :, index] = self._slot_table(slot)
        to = self.device
        return (
            torch.from_numpy(order).to(to),
            torch.from_numpy(offsets).to(to),
            torch.from_numpy(flips).to(to),
            torch.from_numpy(table).to(torch.float32).to(to),
        )

    def _slot_table(self, slot: _Slot) -> np.ndarray:
        """``[spe, n_rows + 1]``: the optimizer rows at the trial's own steps (its schedules
        evaluated there), then the flip-count mask (the trial's first step is not counted)."""
        spe = self.steps_per_epoch
        total = spe * slot.config.epochs
        steps = slot.step + np.arange(spe)
        values: dict[str, np.ndarray] = {}
        for item in slot.scheduled:
            if item.schedule.kind == "constant":
                values[item.name] = np.full(spe, float(item.base))
            else:
                values[item.name] = np.array(
                    [schedule_value(item.base, item.schedule, int(s), spe, total) for s in steps]
                )
        optimizer_rows = self.optimizer.trial_rows(slot.config.optimizer, values, steps)
        count = (steps > 0).astype(np.float64)[:, None]
        return np.concatenate([optimizer_rows, count], axis=1)

    def _batch(
        self, order: Tensor, offsets: Tensor, flips: Tensor, i: int
    ) -> tuple[Tensor, Tensor]:
        bs = self.batch
        index = order[i * bs : (i + 1) * bs]  # [B, N]
        x = self.x_train[index]  # [B, N, C, H, W] uint8
        y = self.y_train[index]
        if self.augment:
            shape = x.shape
            flat = x.reshape(-1, *shape[2:])
            off = offsets[:, i * bs : (i + 1) * bs].reshape(2, -1)
            flat = crop_flip(
                flat, off[0], off[1], flips[i * bs : (i + 1) * bs].reshape(-1), AUGMENT_PAD
            )
            x = flat.reshape(shape)
        return normalize(x), y

    def _step(self, x: Tensor, y: Tensor, row: Tensor) -> tuple[Tensor, Tensor]:
        with autocast(self.device, self.reference.precision):
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

    def _first_compiled_step(self, x: Tensor, y: Tensor, row: Tensor) -> tuple[Tensor, Tensor]:
        """The first step after a build compiles the network (forward and backward). If
        torch.compile fails (a backend missing, an unsupported op), train eagerly instead:
        eager computes the same function, only slower, and a trial should not die of it."""
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
        return result

    def _group_epoch(self) -> None:
        start = time.perf_counter()
        self.network.train()
        order, offsets, flips, table = self._epoch_tables()
        loss_sum = torch.zeros(self.n_slots, device=self.device)
        correct = torch.zeros(self.n_slots, dtype=torch.int64, device=self.device)
        i = 0
        while i < self.steps_per_epoch:
            out_of_memory = False
            try:
                x, y = self._batch(order, offsets, flips, i)
                if self._compile_pending:
                    losses, hits = self._first_compiled_step(x, y, table[i])
                else:
                    losses, hits = self._step(x, y, table[i])
            except torch.cuda.OutOfMemoryError:
                if self.n_slots == 1:
                    raise
                out_of_memory = True
            if out_of_memory:
                # Outside the except block, so the traceback no longer pins the step's tensors.
                loss_sum, correct, order, offsets, flips, table = self._back_off(
                    loss_sum, correct, order, offsets, flips, table
                )
                continue
            loss_sum += losses
            correct += hits
            self.steps_run += 1
            i += 1
        val_loss, val_acc = self._evaluate(self.val_index)
        self._finish_epoch(start, loss_sum, correct, val_loss, val_acc, table)

    def _finish_epoch(
        self,
        start: float,
        loss_sum: Tensor,
        correct: Tensor,
        val_loss: Tensor,
        val_acc: Tensor,
        table: Tensor,
    ) -> None:
        spe = self.steps_per_epoch
        counted = table[:, self.optimizer.n_rows].sum(0)  # [N] steps whose flips were counted
        flips = self.optimizer.flip_counts.clone()
        self.optimizer.flip_counts.zero_()
        synchronize(self.device)
        host = {
            "loss": (loss_sum / spe).tolist(),
            "acc": (correct.double() / (spe * self.batch)).tolist(),
            "val_loss": val_loss.tolist(),
            "val_acc": val_acc.tolist(),
            "counted": counted.tolist(),
            "flips": flips.tolist(),
        }
        seconds = time.perf_counter() - start
        sizes = self.optimizer.layer_sizes
        for index, slot in enumerate(self.slots):
            if slot is None:
                continue
            steps = host["counted"][index]
            slot.step += spe
            slot.epoch += 1
            per_layer = {
                name: (c / (size * steps) if steps else 0.0)
                for name, c, size in zip(
                    self.layer_names, host["flips"][index], sizes, strict=True
                )
            }
            total = sum(host["flips"][index]) / (sum(sizes) * steps) if steps else 0.0
            metrics = EpochMetrics(
                epoch=slot.epoch,
                train_loss=host["loss"][index],
                train_accuracy=host["acc"][index],
                val_loss=host["val_loss"][index],
                val_accuracy=host["val_acc"][index],
                flip_ratio=total,
                flip_ratio_per_layer=per_layer,
                hyperparameters=self._hyperparameters(slot),
                seconds=seconds,
            )
            slot.history.append(metrics)
            self._after_epoch(index, slot, metrics)

    def _hyperparameters(self, slot: _Slot) -> dict[str, float]:
        spe = self.steps_per_epoch
        total = spe * slot.config.epochs
        step = max(slot.step - 1, 0)
        return {
            item.name: schedule_value(item.base, item.schedule, step, spe, total)
            for item in slot.scheduled
        }

    def _after_epoch(self, index: int, slot: _Slot, metrics: EpochMetrics) -> None:
        error: BaseException | None = None
        if not math.isfinite(metrics.train_loss):
            from ..train import TrainingDiverged

            error = TrainingDiverged(slot.epoch, slot.step, slot.history)
            stopped = True
        else:
            stopped = bool(slot.callback(metrics)) if slot.callback is not None else False
        if not stopped and slot.epoch < slot.config.epochs:
            return
        result = TrainResult(
            config=slot.config,
            epochs=slot.history,
            stopped_early=stopped and error is None,
            test_accuracy=self._test_accuracy(index) if slot.config.evaluate_test else None,
            seconds=time.perf_counter() - slot.start,
        )
        self.results[slot.order] = result
        if self._on_trial_end is not None:
            self._on_trial_end(result, error)
        self.slots[index] = None
        self._refill(index)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _evaluate(
        self, index: Tensor, x_all: Tensor | None = None, y_all: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-trial (mean CE, accuracy) over ``index`` ([V, N] rows into the data).

        Chunks hold at most ``EVAL_IMAGES`` images over all trials; a CUDA OOM halves them.
        """
        x_all = self.x_train if x_all is None else x_all
        y_all = self.y_train if y_all is None else y_all
        chunk = max(1, min(EVAL_BATCH_SIZE, EVAL_IMAGES // self.n_slots))
        self.network.eval()
        try:
            while True:
                out_of_memory = False
                try:
                    return self._evaluate_chunks(index, x_all, y_all, chunk)
                except torch.cuda.OutOfMemoryError:
                    if chunk == 1:
                        raise
                    out_of_memory = True
                if out_of_memory:
                    chunk //= 2
                    torch.cuda.empty_cache()
        finally:
            self.network.train()

    @torch.no_grad()
    def _evaluate_chunks(
        self, index: Tensor, x_all: Tensor, y_all: Tensor, chunk: int
    ) -> tuple[Tensor, Tensor]:
        n = self.n_slots
        loss = torch.zeros(n, device=self.device)
        hits = torch.zeros(n, dtype=torch.int64, device=self.device)
        for lo in range(0, index.shape[0], chunk):
            rows = index[lo : lo + chunk]
            x, y = normalize(x_all[rows]), y_all[rows]
            with autocast(self.device, self.reference.precision):
                logits = self.network(x)
            ce = F.cross_entropy(logits.float().permute(0, 2, 1), y, reduction="none")
            loss += ce.sum(0)
            hits += (logits.argmax(-1) == y).sum(0)
        count = max(index.shape[0], 1)
        return loss / count, hits.double() / count

    def _test_accuracy(self, index: int) -> float:
        if self.x_test is None:
            self.x_test = torch.from_numpy(np.ascontiguousarray(self.data.x_test)).to(self.device)
            self.y_test = torch.from_numpy(np.ascontiguousarray(self.data.y_test)).to(self.device)
        rows = torch.arange(len(self.y_test), device=self.device)[:, None].expand(-1, self.n_slots)
        _, acc = self._evaluate(rows, self.x_test, self.y_test)
        return float(acc[index])

    # ------------------------------------------------------------------ resizing
    def _capture(self, index: int) -> tuple[nn.Module, dict[str, Tensor]]:
        # On the host: an OOM back-off must free device memory, not double it.
        model = self.network.export_trial(index).cpu()
        state = {}
        opt = self.optimizer
        named = {f"s.{k}.{i}": t for k, ts in opt.state.items() for i, t in enumerate(ts)}
        named.update({f"a.{i}": t for i, t in enumerate(opt.exp_avg)})
        named.update({f"b.{i}": t for i, t in enumerate(opt.exp_avg_sq)})
        for key, tensor in named.items():
            state[key] = trial_view(tensor, self.n_slots)[index].to("cpu", copy=True)
        state["flips"] = opt.flip_counts[index].to("cpu", copy=True)
        return model, state

    def _restore_state(self, index: int, state: dict[str, Tensor]) -> None:
        opt = self.optimizer
        named = {f"s.{k}.{i}": t for k, ts in opt.state.items() for i, t in enumerate(ts)}
        named.update({f"a.{i}": t for i, t in enumerate(opt.exp_avg)})
        named.update({f"b.{i}": t for i, t in enumerate(opt.exp_avg_sq)})
        with torch.no_grad():
            for key, tensor in named.items():
                trial_view(tensor, self.n_slots)[index].copy_(state[key])
            opt.flip_counts[index].copy_(state["flips"])

    def _resume(self, index: int, parked: _Parked) -> None:
        self.network.load_trial(index, parked.model)
        self._restore_state(index, parked.optimizer_state)
        self._install(index, parked.slot)

    def _resize(self, keep: list[int], park: list[int]) -> None:
        """Rebuild with the slots in ``keep``; trials in ``park`` wait on the host."""
        captured = {i: self._capture(i) for i in keep + park}
        slots = list(self.slots)
        for i in park:
            slot = slots[i]
            if slot is not None:
                model, state = captured[i]
                self._parked.append(_Parked(slot, model, state))
        del self.forward, self.optimizer, self.network
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

    def _back_off(self, loss_sum, correct, order, offsets, flips, table):  # noqa: ANN001, ANN202
        """CUDA OOM: halve N and redo the epoch's remaining steps with the kept slots."""
        n = self.n_slots
        half = n // 2
        keep, park = list(range(half)), list(range(half, n))
        self.optimizer.zero_grad()
        self._resize(keep, park)
        self.oom_backoffs += 1
        # A parked trial redoes the interrupted epoch when resumed (its step counter was not
        # advanced; its weights keep the partial epoch's updates). OOM nearly always strikes
        # at the first step, where this is exact.
        return (
            loss_sum[:half].clone(),
            correct[:half].clone(),
            order[:, :half].contiguous(),
            offsets[:, :, :half].contiguous(),
            flips[:, :half].contiguous(),
            table[:, :, :half].contiguous(),
        )

    def _maybe_shrink(self) -> None:
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
        self._resize(
            busy + [i for i, s in enumerate(self.slots) if s is None][: size - len(busy)], []
        )


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
