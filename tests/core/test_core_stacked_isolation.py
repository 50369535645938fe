"""One stacked trial's divergence or stop request ends that trial alone: the others train
exactly (bit for bit) as they do beside a healthy trial."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bnn_core.config import OptimizerConfig, TrainConfig, TrainResult
from bnn_core.stacked import StackedTrainer, trainer
from bnn_core.train import TrainingDiverged

OPTIONS = {"hidden": 16}
# Adam on the real parameters (BatchNorm scales) with this rate overflows the logits to inf
# within a few steps, and the cross-entropy of inf logits is NaN.
EXPLODING_REAL_LR = 3e38


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> None:
    """Tiny nets: one intra-op thread (see conftest)."""


def _config(seed: int, device: str = "cpu", **optimizer: object) -> TrainConfig:
    return TrainConfig(
        model="mlp",
        dataset="digits",
        epochs=2,
        batch_size=50,
        seed=seed,
        max_train_samples=400,  # 360 training images: 7 steps per epoch
        device=device,
        optimizer=OptimizerConfig(name="bop", gamma=1e-3, threshold=1e-6, **optimizer),
    )


def _run(
    items: list[tuple[TrainConfig, object]], n_slots: int
) -> tuple[StackedTrainer, list[TrainResult], dict[int, BaseException | None]]:
    queue = list(items)
    errors: dict[int, BaseException | None] = {}
    stacked = StackedTrainer(n_slots, model_options=OPTIONS, shrink_when_idle=False)

    def ended(result: TrainResult, error: BaseException | None) -> None:
        errors[result.config.seed] = error

    results = stacked.run(lambda: queue.pop(0) if queue else None, ended)
    return stacked, results, errors


def _same_run(a: TrainResult, b: TrainResult) -> None:
    """Equal to the last bit: every metric of every epoch."""
    assert len(a.epochs) == len(b.epochs)
    for x, y in zip(a.epochs, b.epochs, strict=True):
        assert dataclasses.replace(x, seconds=0.0) == dataclasses.replace(y, seconds=0.0)


def _check_isolation(device: str) -> None:
    healthy = [_config(0, device), _config(1, device), _config(2, device)]
    bad = dataclasses.replace(healthy[1], optimizer=dataclasses.replace(
        healthy[1].optimizer, real_lr=EXPLODING_REAL_LR))  # fmt: skip
    _, reference, reference_errors = _run([(c, None) for c in healthy], 3)
    assert all(error is None for error in reference_errors.values())
    _, results, errors = _run([(healthy[0], None), (bad, None), (healthy[2], None)], 3)
    assert isinstance(errors[1], TrainingDiverged)
    assert errors[1].epoch == 1 and errors[1].epochs == [] and results[1].epochs == []
    assert errors[0] is None and errors[2] is None
    _same_run(results[0], reference[0])
    _same_run(results[2], reference[2])


def test_a_diverging_trial_fails_alone_and_the_others_train_bit_for_bit() -> None:
    _check_isolation("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_diverging_trial_fails_alone_on_cuda() -> None:
    _check_isolation("cuda")


def test_divergence_is_caught_mid_epoch_and_the_slot_refilled(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(trainer, "DIVERGENCE_CHECK_EVERY", 2)
    bad = _config(1, real_lr=EXPLODING_REAL_LR)
    items = [(_config(0), None), (bad, None), (_config(2), None)]
    stacked, results, errors = _run(items, 2)
    error = errors[1]
    assert isinstance(error, TrainingDiverged) and error.epoch == 1
    assert 1 <= error.step <= 2 and results[1].epochs == []
    # Trial 2 took the freed slot at the end of epoch 1 and trained its two epochs.
    assert errors[2] is None and len(results[2].epochs) == 2
    assert stacked.steps_run == 7 * 3  # epochs 1-2 with trial 0, epochs 2-3 with trial 2
    _, alone, _ = _run([(_config(0), None), (_config(1), None)], 2)
    _same_run(results[0], alone[0])


class _StopAfterPolls:
    """An epoch callback with ``should_stop()``, true from the ``polls``-th poll on."""

    def __init__(self, polls: int) -> None:
        self.polls = polls
        self.calls = 0
        self.epochs_seen = 0

    def __call__(self, metrics: object) -> bool:
        self.epochs_seen += 1
        return False

    def should_stop(self) -> bool:
        self.calls += 1
        return self.calls >= self.polls


def test_a_stop_request_ends_its_trial_within_stop_check_steps() -> None:
    # Polls with stop_check_steps 2 and 7 steps per epoch: the start of epoch 1, its steps
    # 2, 4, 6, the start of epoch 2, then global steps 8, 10: the 7th poll is at step 10.
    stopping = _StopAfterPolls(polls=7)
    config = dataclasses.replace(_config(1), stop_check_steps=2, evaluate_test=True)
    items = [(_config(0), None), (config, stopping), (_config(2), None)]
    stacked, results, errors = _run(items, 2)
    assert errors == {0: None, 1: None, 2: None}
    assert results[1].stopped_early and len(results[1].epochs) == 1
    assert results[1].test_accuracy is None  # no test evaluation after an interrupted epoch
    assert stopping.calls == 7 and stopping.epochs_seen == 1
    assert len(results[2].epochs) == 2 and not results[2].stopped_early
    assert stacked.steps_run == 7 * 4
    _, alone, _ = _run([(_config(0), None), (_config(1), None)], 2)
    _same_run(results[0], alone[0])


def test_a_stop_request_between_epochs_ends_the_trial_before_its_next_epoch() -> None:
    stopping = _StopAfterPolls(polls=1)
    _, results, _ = _run([(_config(0), stopping)], 1)
    assert results[0].stopped_early and results[0].epochs == [] and stopping.calls == 1
