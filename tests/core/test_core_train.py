"""The training loop on digits (CPU, a few seconds)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnn_core.config import ConfigError, OptimizerConfig, TrainConfig
from bnn_core.data import Dataset, load_dataset
from bnn_core.layers import BinaryLinear, binary_layers, split_parameters, use_latent_weights
from bnn_core.metrics import FlipCounter
from bnn_core.train import TrainingDiverged, train

# These nets are tiny: one intra-op thread is faster (tests/core/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _config(**kwargs) -> TrainConfig:
    optimizer = kwargs.pop("optimizer", OptimizerConfig(name="bop", gamma=1e-3, threshold=1e-6))
    base = {"model": "mlp", "dataset": "digits", "epochs": 2, "batch_size": 50, "seed": 0}
    return TrainConfig(optimizer=optimizer, **{**base, **kwargs})


def test_bop_mlp_learns_digits(digits) -> None:
    # Measured on the dev machine (seeds 0-5, 5 epochs): best val 0.924-0.986, test 0.947-0.975.
    result = train(_config(epochs=5, evaluate_test=True), dataset=digits)
    assert len(result.epochs) == 5 and not result.stopped_early
    assert result.best_val_accuracy >= 0.90
    assert result.test_accuracy is not None and result.test_accuracy >= 0.92
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    first = result.epochs[0]
    assert first.hyperparameters == {"gamma": 1e-3, "threshold": 1e-6, "real_lr": 0.01}
    assert set(first.flip_ratio_per_layer) == {"1", "4", "7"}
    assert all(0 < e.flip_ratio < 0.05 for e in result.epochs)
    assert result.seconds > 0 and all(e.seconds > 0 for e in result.epochs)


def test_binary_weights_stay_pm_one_and_real_params_are_separate(digits) -> None:
    seen = {}

    def on_setup(model: nn.Module, optimizer) -> None:
        seen["model"], seen["optimizer"] = model, optimizer
        seen["initial"] = [p.detach().clone() for p in split_parameters(model)[0]]

    result = train(_config(epochs=2), dataset=digits, on_setup=on_setup)
    model, optimizer = seen["model"], seen["optimizer"]
    binary, real = split_parameters(model)
    for p in binary:
        assert set(p.unique().tolist()) <= {-1.0, 1.0}
    # something was actually flipped
    assert any(not torch.equal(p, q) for p, q in zip(binary, seen["initial"], strict=True))
    assert result.epochs[-1].flip_ratio > 0
    # the binary optimizer owns exactly the binary weights, Adam exactly the real ones
    assert {id(p) for p in optimizer.binary_parameters} == {id(p) for p in binary}
    real_ids = {id(p) for g in optimizer.real.param_groups for p in g["params"]}
    assert real_ids == {id(p) for p in real}
    assert all(id(p) not in real_ids for p in binary)
    assert all(len(optimizer.binary.state[p]) == 0 for p in real)
    # frozen BN scales never move
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            assert torch.all(m.weight == 1)


def _strip(result):
    return [{**vars(e), "seconds": 0.0} for e in result.epochs]


@pytest.mark.parametrize("optimizer", ["bop", "latent-adam"])
def test_deterministic_under_seed(digits, optimizer: str) -> None:
    opt = OptimizerConfig(name=optimizer, gamma=1e-3, threshold=1e-6, lr=1e-2)
    one = train(_config(optimizer=opt, max_train_samples=600), dataset=digits)
    two = train(_config(optimizer=opt, max_train_samples=600), dataset=digits)
    assert _strip(one) == _strip(two)
    other = train(_config(optimizer=opt, max_train_samples=600, seed=1), dataset=digits)
    assert _strip(other) != _strip(one)


def test_latent_adam_flips_are_counted_on_latent_signs(digits) -> None:
    seen = {}
    opt = OptimizerConfig(name="latent-adam", lr=1e-2, latent_init_scale=1e-3)
    result = train(
        _config(optimizer=opt, epochs=1),
        dataset=digits,
        on_setup=lambda model, _: seen.setdefault("model", model),
    )
    layers = [layer for _, layer in binary_layers(seen["model"])]
    assert all(layer.latent for layer in layers)
    assert len(layers[0].weight.unique()) > 2  # real-valued latent weights
    assert result.epochs[0].flip_ratio > 0
    assert result.epochs[0].hyperparameters["lr"] == 1e-2


def test_on_epoch_end_stops_training(digits) -> None:
    calls = []

    def stop_at_two(metrics) -> bool:
        calls.append(metrics.epoch)
        return metrics.epoch == 2

    result = train(
        _config(epochs=5, max_train_samples=400), on_epoch_end=stop_at_two, dataset=digits
    )
    assert calls == [1, 2]
    assert [e.epoch for e in result.epochs] == [1, 2]
    assert result.stopped_early
    full = train(
        _config(epochs=1, max_train_samples=200), on_epoch_end=lambda m: None, dataset=digits
    )
    assert not full.stopped_early


def test_first_step_excluded_from_flip_ratio(digits) -> None:
    # CEMA overwrites ~50 % of the random init at step 1; with one step per epoch the first
    # epoch has nothing left to count, the second epoch counts its single step.
    opt = OptimizerConfig(name="filter", alpha=1e-2, gamma=1e-1)
    cfg = _config(optimizer=opt, epochs=2, max_train_samples=55, batch_size=49)
    result = train(cfg, dataset=digits)
    assert result.epochs[0].flip_ratio == 0.0
    assert result.epochs[1].flip_ratio < 0.4


@pytest.mark.parametrize("latent", [False, True])
def test_flip_counter_against_manual_count(latent: bool) -> None:
    model = nn.Sequential(BinaryLinear(6, 4), BinaryLinear(4, 3))
    if latent:
        use_latent_weights(model, init_scale=0.5)
        with torch.no_grad():
            model[0].weight.add_(0.01 * torch.sign(model[0].weight))  # no exact zeros
    counter = FlipCounter(model)
    before = [p.detach().clone() for p in split_parameters(model)[0]]
    counter.snapshot()
    with torch.no_grad():
        model[0].weight[0, :3] *= -1
        model[1].weight[2, 0] *= -1
    counter.update()
    counter.snapshot()
    counter.update()  # a step with no flips
    ratio, per_layer = counter.collect()
    assert per_layer == {"0": 3 / 24 / 2, "1": 1 / 12 / 2}
    assert math.isclose(ratio, 4 / 36 / 2)
    after = split_parameters(model)[0]
    assert sum(int((a != b).sum()) for a, b in zip(after, before, strict=True)) == 4
    assert counter.collect() == (0.0, {"0": 0.0, "1": 0.0})


def test_training_diverged_on_nan(digits) -> None:
    seen = {}

    def poison(epoch: int, batch: int, batches: int) -> None:
        if epoch == 2 and batch == 3:
            with torch.no_grad():
                seen["model"][2].bias.fill_(float("nan"))

    with pytest.raises(TrainingDiverged) as info:
        train(
            _config(epochs=3),
            dataset=digits,
            on_batch_end=poison,
            on_setup=lambda model, _: seen.setdefault("model", model),
        )
    steps_per_epoch = 1293 // 50
    assert info.value.epoch == 2 and info.value.step == steps_per_epoch + 4
    assert [e.epoch for e in info.value.epochs] == [1]
    assert isinstance(info.value, RuntimeError)


def test_bad_configs_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        OptimizerConfig(name="bop", gamma=-1.0)
    assert info.value.field == "optimizer.gamma"
    with pytest.raises(ConfigError) as info:
        train(_config(model="vgg"))
    assert info.value.field == "model"
    with pytest.raises(ConfigError) as info:
        train(_config(dataset="imagenet"))
    assert info.value.field == "dataset"
    with pytest.raises(ConfigError) as info:
        train(_config(dataset="mnist", data_root=str(tmp_path / "missing")))
    assert info.value.field == "data_root"
    with pytest.raises(ConfigError) as info:
        train(_config(device="tpu"))
    assert info.value.field == "device"
    with pytest.raises(ConfigError) as info:
        train(_config(model="binarynet"))  # 8x8 digits are too small for BinaryNet
    assert info.value.field == "model"


def test_conv_small_and_resnet_train_on_digits(digits) -> None:
    for model in ("conv-small", "resnet"):
        result = train(
            _config(model=model, epochs=1, max_train_samples=400),
            dataset=digits,
            model_options={"width": 0.5},
        )
        assert math.isfinite(result.epochs[0].train_loss)
        assert result.epochs[0].val_accuracy > 0.2


def test_binarynet_with_augmentation_on_synthetic_cifar() -> None:
    # CIFAR-10 is not available offline: a tiny CIFAR-shaped set exercises BinaryNet and the
    # pad/crop/flip path (on by default for cifar10) end to end.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (120, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 120).astype(np.int64)
    data = Dataset("cifar10", x[:100], y[:100], x[100:], y[100:], num_classes=10)
    assert data.augment_by_default
    seen = {}
    result = train(
        _config(model="binarynet", dataset="cifar10", epochs=2, batch_size=20, evaluate_test=True),
        dataset=data,
        model_options={"width": 1 / 16},
        on_setup=lambda model, _: seen.setdefault("model", model),
    )
    assert len(result.epochs) == 2 and result.test_accuracy is not None
    assert len(result.epochs[0].flip_ratio_per_layer) == 9
    assert result.epochs[1].flip_ratio > 0
    for p in split_parameters(seen["model"])[0]:
        assert set(p.unique().tolist()) <= {-1.0, 1.0}
    plain = train(
        _config(model="binarynet", dataset="cifar10", epochs=1, batch_size=20, augment=False),
        dataset=data,
        model_options={"width": 1 / 16},
    )
    assert plain.epochs[0].train_loss != result.epochs[0].train_loss  # augmentation was on


def test_cifar_inputs_pad_with_black_in_training_and_are_only_scaled_in_evaluation() -> None:
    # The Bop paper's CIFAR pipeline: train = zero-pad 4 px on the raw uint8 image, random
    # 32x32 crop, random flip, then x / 127.5 - 1 (so padding reads -1); val/test = only the
    # scaling. White images make this visible: a training input holds 1 and, at a shifted
    # crop, -1 borders (0 would mean "normalised, then padded"); an evaluation input is
    # exactly 1 everywhere.
    x = np.full((60, 3, 32, 32), 255, dtype=np.uint8)
    y = np.arange(60, dtype=np.int64) % 10
    data = Dataset("cifar10", x[:40], y[:40], x[40:], y[40:], num_classes=10)
    seen: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}

    def record(model: nn.Module, _optimizer) -> None:
        def hook(module: nn.Module, args: tuple[torch.Tensor]) -> None:
            seen["train" if module.training else "eval"].append(args[0].detach().clone())

        model.register_forward_pre_hook(hook)

    config = _config(model="binarynet", dataset="cifar10", epochs=1, batch_size=10)
    train(
        dataclasses.replace(config, evaluate_test=True),
        dataset=data,
        model_options={"width": 1 / 16},
        on_setup=record,
    )
    inputs = torch.cat(seen["train"])[:, 0] == 1.0  # (N, 32, 32): where the image is
    assert set(torch.cat(seen["train"]).unique().tolist()) == {-1.0, 1.0}
    # The image part is a rectangle (32 - |shift|) high and wide, |shift| <= 4; the rest is -1.
    rows, cols = inputs.any(2).sum(1), inputs.any(1).sum(1)
    assert torch.equal(inputs.sum((1, 2)), rows * cols)
    assert int(rows.min()) >= 28 and int(cols.min()) >= 28
    assert int((rows * cols < 32 * 32).sum()) > len(inputs) // 2  # most crops are shifted
    assert seen["eval"] and all(bool((batch == 1.0).all()) for batch in seen["eval"])


@pytest.mark.parametrize("latent", [False, True])
def test_last_layer_pi_is_the_bop_papers_eq7(latent: bool) -> None:
    model = nn.Sequential(BinaryLinear(6, 4), BinaryLinear(4, 3))
    if latent:
        use_latent_weights(model, init_scale=0.5)
        with torch.no_grad():
            model[1].weight.add_(0.01 * torch.sign(model[1].weight))  # no exact zeros
    counter = FlipCounter(model)
    counter.snapshot()
    with torch.no_grad():
        model[1].weight[2, :2] *= -1  # 2 of the last layer's 12 weights
    counter.update()
    counter.snapshot()
    counter.update()  # nothing flips: pi = ln(e^-9) = -9
    epoch = counter.collect_epoch()
    first = math.log(2 / 12 + math.exp(-9))
    assert epoch.pi_mean == pytest.approx((first - 9) / 2)
    assert epoch.pi_last == pytest.approx(-9.0)
    assert counter.collect_epoch().pi_mean is None  # nothing counted since


def test_training_reports_last_layer_pi(digits) -> None:
    result = train(_config(epochs=2), dataset=digits)
    for epoch in result.epochs:
        assert -9.0 <= epoch.last_layer_pi_mean <= 0.0
        assert -9.0 <= epoch.last_layer_pi_last <= 0.0


def test_should_stop_ends_the_run_within_stop_check_steps(digits) -> None:
    # digits: 1293 training images at batch 10 -> 129 steps per epoch
    steps = []
    state = {"calls": 0}

    def should_stop() -> bool:
        state["calls"] += 1
        return len(steps) >= 140  # in the middle of epoch 2

    config = _config(epochs=5, batch_size=10, stop_check_steps=7, evaluate_test=True)
    result = train(
        config,
        should_stop=should_stop,
        on_batch_end=lambda epoch, batch, n: steps.append((epoch, batch)),
        dataset=digits,
    )
    assert result.stopped_early
    assert [e.epoch for e in result.epochs] == [1]  # the unfinished epoch 2 is dropped
    assert 140 <= len(steps) < 140 + 7  # stopped at the first poll after the request
    assert state["calls"] <= len(steps) // 7 + 2  # polled every 7 steps (+ between epochs)
    assert result.test_accuracy is None  # no extra evaluation after a stop


def test_should_stop_before_the_first_step(digits) -> None:
    result = train(_config(), should_stop=lambda: True, dataset=digits)
    assert result.stopped_early and result.epochs == []


def test_test_protocol_trains_on_everything_and_reports_the_test_set(digits) -> None:
    seen = {}

    def on_setup(model, optimizer) -> None:
        seen["model"], seen["steps_per_epoch"] = model, optimizer.steps_per_epoch

    config = _config(epochs=1, eval_protocol="test", batch_size=50)
    result = train(config, dataset=digits, on_setup=on_setup)
    assert seen["steps_per_epoch"] == len(digits.y_train) // 50  # no held-out part
    assert result.test_accuracy == result.epochs[-1].val_accuracy
    # the "val" numbers are the test set's: evaluate the trained model on it by hand
    model = seen["model"].eval()
    with torch.no_grad():
        x = torch.from_numpy(digits.x_test).float() / 127.5 - 1.0
        accuracy = (model(x).argmax(1).numpy() == digits.y_test).mean()
    assert result.epochs[-1].val_accuracy == pytest.approx(accuracy, abs=1e-9)
    with pytest.raises(ConfigError) as info:
        TrainConfig(eval_protocol="tune-on-test")
    assert info.value.field == "eval_protocol"
