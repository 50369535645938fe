"""The training loop: one ``TrainConfig`` in, one ``TrainResult`` out.

Per step: forward (bf16 autocast on CUDA if asked), mean-reduced cross-entropy on the logits,
``backward``, then the binary + real optimizer pair steps. Flips are counted on the device
(``metrics.FlipCounter``), loss/accuracy sums stay on the device, and the host reads them once
per epoch (plus one cheap divergence check every ``DIVERGENCE_CHECK_EVERY`` steps). A stop
request (``should_stop``) is polled every ``config.stop_check_steps`` steps, on the host only.

"val" is a held-out part of the training set, or the test set in the reproduction protocol
(``config.eval_protocol``; ``evaluation_split``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConfigError, EpochMetrics, TrainConfig, TrainResult
from .data import DATASET_NAMES, Dataset, DeviceLoader, load_dataset, split_indices
from .devices import autocast, resolve_device, synchronize
from .metrics import FlipCounter
from .models import MODEL_NAMES, build_model

__all__ = [
    "TrainingDiverged",
    "train",
    "evaluate",
    "EpochCallback",
    "BatchCallback",
    "SetupCallback",
    "StopCheck",
    "load_config_dataset",
    "evaluation_split",
]

EpochCallback = Callable[[EpochMetrics], Any]
BatchCallback = Callable[[int, int, int], Any]  # (epoch, batch 1-based, batches per epoch)
SetupCallback = Callable[[nn.Module, Any], Any]  # (model, BinaryOptimizerPair)
StopCheck = Callable[[], bool]

DIVERGENCE_CHECK_EVERY = 100
EVAL_BATCH_SIZE = 1000


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite. ``epochs`` holds the completed epochs."""

    def __init__(self, epoch: int, step: int, epochs: list[EpochMetrics] | None = None) -> None:
        super().__init__(f"training diverged: non-finite loss at epoch {epoch}, step {step}")
        self.epoch = epoch
        self.step = step
        self.epochs = list(epochs or [])


@dataclass
class _Run:
    """Everything ``train`` builds before the first step."""

    device: torch.device
    model: nn.Module
    forward: Callable[[Tensor], Tensor]
    optimizer: Any
    train_loader: DeviceLoader
    val_loader: DeviceLoader
    test_loader: DeviceLoader | None
    flips: FlipCounter


def _check_names(config: TrainConfig) -> None:
    if config.model not in MODEL_NAMES:
        raise ConfigError("model", f"unknown model {config.model!r}; one of {list(MODEL_NAMES)}")
    if config.dataset not in DATASET_NAMES:
        raise ConfigError(
            "dataset", f"unknown dataset {config.dataset!r}; one of {list(DATASET_NAMES)}"
        )


def _loader(
    data_x: np.ndarray, data_y: np.ndarray, config: TrainConfig, device: torch.device, **kw: Any
) -> DeviceLoader:
    return DeviceLoader(data_x, data_y, device=device, channels_last=config.channels_last, **kw)


def load_config_dataset(config: TrainConfig) -> Dataset:
    """The data set of ``config`` from ``<data_root>/<data_subdir or dataset>``."""
    return load_dataset(
        config.dataset, config.data_root, subdir=config.data_subdir, download=config.download
    )


def evaluation_split(
    data: Dataset, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, "val" images, "val" labels) for ``config.eval_protocol``.

    ``holdout``: a seeded ``val_fraction`` of the training set is held out. ``test``
    (reproduction mode): all training images (capped by ``max_train_samples``, in a seeded
    order) are trained on, and the "val" split is the test set.
    """
    if config.eval_protocol == "test":
        order = np.random.default_rng(config.seed).permutation(len(data.y_train))
        keep = np.sort(order[: config.max_train_samples])
        return data.x_train[keep], data.y_train[keep], data.x_test, data.y_test
    train_idx, val_idx = split_indices(
        len(data.y_train), config.val_fraction, config.seed, config.max_train_samples
    )
    x, y = data.x_train, data.y_train
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def _setup(config: TrainConfig, dataset: Dataset | None, model_options: dict[str, Any]) -> _Run:
    from .optim import build_optimizer  # imported here: bnn_core.optim imports schedules

    _check_names(config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    data = dataset if dataset is not None else load_config_dataset(config)
    train_x, train_y, val_x, val_y = evaluation_split(data, config)
    # A host generator: the loader draws each epoch's order and augmentation on the host
    # (one copy per epoch), exactly as a stacked trial does, so solo == stacked on any device.
    generator = torch.Generator().manual_seed(config.seed)
    augment = data.augment_by_default if config.augment is None else config.augment
    train_loader = _loader(
        train_x, train_y, config, device, batch_size=config.batch_size, shuffle=True,
        augment=augment, drop_last=True, generator=generator,
    )  # fmt: skip
    val_loader = _loader(val_x, val_y, config, device, batch_size=EVAL_BATCH_SIZE)
    test_loader = None
    if config.evaluate_test and config.eval_protocol == "holdout":
        test_loader = _loader(data.x_test, data.y_test, config, device, batch_size=EVAL_BATCH_SIZE)
    model = build_model(config.model, data.input_shape, data.num_classes, **model_options)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # builds the binary optimizer (switching latent families to latent weights) + Adam
    optimizer = build_optimizer(model, config.optimizer, len(train_loader), config.epochs)
    forward = torch.compile(model) if config.compile else model
    return _Run(
        device, model, forward, optimizer, train_loader, val_loader, test_loader,
        FlipCounter(model),
    )  # fmt: skip


@torch.no_grad()
def evaluate(
    forward: Callable[[Tensor], Tensor], model: nn.Module, loader: DeviceLoader, precision: str
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model in eval mode over ``loader``."""
    model.eval()
    loss_sum = torch.zeros((), device=loader.device)
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    for x, y in loader:
        with autocast(loader.device, precision):
            logits = forward(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
    n = max(loader.num_samples, 1)
    return loss_sum.item() / n, correct.item() / n


def _raise_if_diverged(bad_step: Tensor, epoch: int, history: list[EpochMetrics]) -> None:
    step = int(bad_step.item())
    if step >= 0:
        raise TrainingDiverged(epoch, step, history)


class _StopRequested(Exception):
    """``should_stop`` said yes in the middle of an epoch; that epoch is discarded."""


def _train_epoch(
    run: _Run,
    config: TrainConfig,
    epoch: int,
    history: list[EpochMetrics],
    on_batch_end: BatchCallback | None,
    should_stop: StopCheck | None,
) -> tuple[float, float]:
    """One pass over the training split; returns (mean loss, accuracy).

    Raises ``_StopRequested`` when ``should_stop()`` (polled every ``stop_check_steps``
    steps, a host-side call without a device sync) returns true."""
    run.model.train()
    device = run.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    bad_step = torch.full((), -1, dtype=torch.int64, device=device)
    seen = 0
    batches = len(run.train_loader)
    for index, (x, y) in enumerate(run.train_loader, start=1):
        with autocast(device, config.precision):
            logits = run.forward(x)
        loss = F.cross_entropy(logits.float(), y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        first_step = run.optimizer.global_step == 0
        run.flips.snapshot()
        run.optimizer.step()
        run.flips.update(count=not first_step)
        detached = loss.detach()
        step = run.optimizer.global_step  # 1-based number of the step just taken
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(detached), step, bad_step)
        loss_sum += detached * len(y)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += len(y)
        if step % DIVERGENCE_CHECK_EVERY == 0:
            _raise_if_diverged(bad_step, epoch, history)
        if on_batch_end is not None:
            on_batch_end(epoch, index, batches)
        if should_stop is not None and step % config.stop_check_steps == 0 and should_stop():
            raise _StopRequested
    _raise_if_diverged(bad_step, epoch, history)
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)


def train(
    config: TrainConfig,
    on_epoch_end: EpochCallback | None = None,
    should_stop: StopCheck | None = None,
    *,
    on_batch_end: BatchCallback | None = None,
    dataset: Dataset | None = None,
    model_options: dict[str, Any] | None = None,
    on_setup: SetupCallback | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset`` with ``config.optimizer``.

    ``on_epoch_end(metrics)`` returning a truthy value stops training after that epoch
    (``result.stopped_early = True``). ``should_stop()`` is polled every
    ``config.stop_check_steps`` steps and between epochs (it must be cheap, e.g. a
    ``threading.Event``'s ``is_set``); when it returns true the run ends within those steps,
    the unfinished epoch is dropped, the result holds the completed epochs,
    ``stopped_early`` is True and no test evaluation is run.
    ``on_batch_end(epoch, batch, batches)`` is called after every step (progress bars; it
    must not sync). ``dataset`` reuses already loaded arrays; ``model_options`` go to
    ``build_model`` (e.g. ``{"width": 0.25}``, ``{"hidden": 128}``).
    ``on_setup(model, optimizer)`` is called once before the first step (inspection, hooks).
    Raises ``ConfigError`` for bad input and ``TrainingDiverged`` on a non-finite loss.
    """
    start = time.perf_counter()
    run = _setup(config, dataset, dict(model_options or {}))
    if on_setup is not None:
        on_setup(run.model, run.optimizer)
    history: list[EpochMetrics] = []
    stopped = False
    interrupted = False
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        try:
            if should_stop is not None and should_stop():
                raise _StopRequested
            train_loss, train_acc = _train_epoch(
                run, config, epoch, history, on_batch_end, should_stop
            )
        except _StopRequested:
            stopped = interrupted = True
            break
        val_loss, val_acc = evaluate(run.forward, run.model, run.val_loader, config.precision)
        flips = run.flips.collect_epoch()
        synchronize(run.device)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_acc,
            val_loss=val_loss,
            val_accuracy=val_acc,
            flip_ratio=flips.ratio,
            flip_ratio_per_layer=flips.per_layer,
            hyperparameters=run.optimizer.hyperparameters(),
            seconds=time.perf_counter() - epoch_start,
            last_layer_pi_mean=flips.pi_mean,
            last_layer_pi_last=flips.pi_last,
        )
        history.append(metrics)
        if on_epoch_end is not None and on_epoch_end(metrics):
            stopped = True
            break
    test_accuracy = None
    if run.test_loader is not None and not interrupted:
        _, test_accuracy = evaluate(run.forward, run.model, run.test_loader, config.precision)
    elif config.eval_protocol == "test" and history:
        test_accuracy = history[-1].val_accuracy  # the "val" split is the test set
    return TrainResult(
        config=config,
        epochs=history,
        stopped_early=stopped,
        test_accuracy=test_accuracy,
        seconds=time.perf_counter() - start,
    )
