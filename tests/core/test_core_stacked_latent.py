"""Stacked latent-weight trials (latent-adam, latent-sgd) against the same trials alone.

The solo reference is what ``bnn_core.train`` runs: ``build_optimizer`` (torch.optim.Adam /
AdamW / SGD, ``bnn_core.optim.SGDW``, Xavier param groups, ``BinaryOptimizerPair``'s clip and
schedules) on a model switched to latent weights.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from bnn_core.config import ConfigError, OptimizerConfig, Schedule, TrainConfig
from bnn_core.data import Dataset
from bnn_core.layers import binary_layers, split_parameters
from bnn_core.models import build_model
from bnn_core.optim import BinaryOptimizerPair, build_optimizer, xavier_lr_multiplier
from bnn_core.schedules import schedule_value
from bnn_core.stacked import (
    BINARY_FAMILIES,
    LATENT_FAMILIES,
    STACKABLE_FAMILIES,
    StackedOptimizer,
    StackedTrainer,
    estimate_slot_bytes,
    is_stackable,
    stack_models,
    train_stacked,
    trial_view,
)
from bnn_core.train import train

SHAPE = (1, 8, 8)
OPTIONS = {"width": 0.5}  # conv-small: 3 binary convs + a binary dense layer, BatchNorms
STEPS_PER_EPOCH, EPOCHS = 3, 2  # schedules span 6 steps; the test takes all 6
COSINE = Schedule(kind="cosine", end_value=1e-4)
LINEAR = Schedule(kind="linear", end_value=1e-3)

# Per-trial lr (+ schedule), weight decay (coupled and decoupled), momentum, clip, scaling.
STACKS = {
    "latent-adam": [
        {"lr": 1e-2, "weight_decay": 1e-2, "real_lr": 1e-2},
        {
            "lr": 3e-3,
            "weight_decay": 5.0,
            "decoupled_weight_decay": True,
            "latent_weight_clip": 0.05,
        },
        {"lr": 2e-2, "lr_schedule": COSINE, "latent_weight_clip": 0.1, "real_lr_schedule": LINEAR},
    ],
    "latent-sgd": [
        {"lr": 0.5, "momentum": 0.9, "weight_decay": 1e-2},
        {"lr": 0.3, "momentum": 0.5, "weight_decay": 0.5, "decoupled_weight_decay": True},
        {"lr": 1.0, "momentum": 0.0, "latent_weight_clip": 0.04, "lr_schedule": LINEAR},
        {
            "lr": 0.2,
            "momentum": 0.8,
            "weight_decay": 2.0,
            "latent_weight_clip": 0.05,
            "real_lr": 3e-3,
        },
    ],
    # Xavier multipliers in a mixed stack (a trial without scaling has multipliers of 1).
    "latent-adam-xavier": [
        {"lr": 1e-3, "latent_lr_scaling": "xavier", "lr_schedule": COSINE},
        {"lr": 1e-3},
        {
            "lr": 3e-4,
            "latent_lr_scaling": "xavier",
            "weight_decay": 1.0,
            "decoupled_weight_decay": True,
        },
    ],
    "latent-sgd-xavier": [
        {"lr": 1e-2, "momentum": 0.9, "latent_lr_scaling": "xavier", "weight_decay": 1e-2},
        {
            "lr": 3e-3,
            "momentum": 0.5,
            "latent_lr_scaling": "xavier",
            "decoupled_weight_decay": True,
            "weight_decay": 3.0,
            "latent_weight_clip": 0.05,
        },
        {"lr": 0.1, "momentum": 0.9, "lr_schedule": LINEAR},
    ],
}


@dataclasses.dataclass
class Solo:
    """One trial alone, built as ``bnn_core.train`` builds it: manual_seed, build_model,
    build_optimizer (which draws the latent weights)."""

    config: OptimizerConfig
    model: nn.Module
    pair: BinaryOptimizerPair

    @classmethod
    def build(cls, family: str, seed: int, options: dict) -> Solo:
        config = OptimizerConfig(name=family, **options)
        torch.manual_seed(seed)
        model = build_model("conv-small", SHAPE, 10, **OPTIONS)
        return cls(config, model, build_optimizer(model, config, STEPS_PER_EPOCH, EPOCHS))


def _rows(stacked: StackedOptimizer, solos: list[Solo], step: int) -> torch.Tensor:
    """The trainer's per-step table column: each trial's schedules at its step, as rows."""
    columns = []
    for solo in solos:
        pair = solo.pair
        values = {
            item.name: np.array(
                [
                    schedule_value(
                        item.base, item.schedule, step, pair.steps_per_epoch, pair.total_steps
                    )
                ]  # fmt: skip
            )
            for item in pair.scheduled
        }
        columns.append(stacked.trial_rows(solo.config, values, np.array([step]))[0])
    return torch.from_numpy(np.stack(columns, axis=1)).float()


def _binary_state(solo: Solo, param: torch.Tensor, name: str) -> torch.Tensor | None:
    assert solo.pair.binary is not None
    state = solo.pair.binary.state[param].get(name)
    if state is None:  # torch.optim.SGD with momentum 0 keeps no buffer (SGDW does)
        assert name == "momentum_buffer" and solo.config.momentum == 0
    return state


@pytest.mark.parametrize("case", list(STACKS))
def test_stacked_latent_step_equals_solo_optimizers(case: str) -> None:
    """Several steps with identical gradients: same latent weights, real parameters, state
    (Adam moments / momentum buffers) and flips as each trial's own build_optimizer pair."""
    family = case.removesuffix("-xavier")
    trials = STACKS[case]
    n = len(trials)
    solos = [Solo.build(family, seed, options) for seed, options in enumerate(trials)]
    models = [solo.model for solo in solos]
    network = stack_models([copy.deepcopy(m) for m in models])  # initial latent weights
    assert all(layer.latent for _, layer in binary_layers(network))
    stacked = StackedOptimizer(network, family)  # defaults: torch Adam eps, REAL_ADAM_EPS
    for index, solo in enumerate(solos):
        stacked.configure_trial(index, solo.config)
    binary, real = split_parameters(network)
    generator = torch.Generator().manual_seed(7)
    solo_flips = torch.zeros(n, len(binary), dtype=torch.float64)
    for step in range(STEPS_PER_EPOCH * EPOCHS):
        for param in binary + real:
            param.grad = torch.randn(param.shape, generator=generator) * 0.1
        befores = []
        for index, model in enumerate(models):
            mine_b, mine_r = split_parameters(model)
            for single, param in zip(mine_b + mine_r, binary + real, strict=True):
                single.grad = trial_view(param.grad, n)[index].reshape(single.shape).clone()
            befores.append([p.detach() >= 0 for p in mine_b])
        stacked.set_buffer(_rows(stacked, solos, step))
        stacked.step(count_mask=torch.full((n,), float(step > 0)))
        for index, solo in enumerate(solos):
            solo.pair.step()
            if step > 0:  # FlipCounter: w >= 0 before vs after, the first step not counted
                after = split_parameters(solo.model)[0]
                for layer, (p, b) in enumerate(zip(after, befores[index], strict=True)):
                    solo_flips[index, layer] += float(((p.detach() >= 0) != b).sum())
    state_names = ("exp_avg", "exp_avg_sq") if family == "latent-adam" else ("momentum_buffer",)
    clipped = 0
    for index, solo in enumerate(solos):
        mine_b, mine_r = split_parameters(solo.model)
        for layer, (single, param) in enumerate(zip(mine_b, binary, strict=True)):
            ours = trial_view(param.detach(), n)[index]
            torch.testing.assert_close(ours, single.detach(), rtol=1e-6, atol=1e-8)
            for name in state_names:
                theirs = _binary_state(solo, single, name)
                if theirs is not None:
                    mine = trial_view(stacked.state[name][layer], n)[index]
                    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-9)
            clip = solo.config.latent_weight_clip
            if clip is not None:
                assert single.detach().abs().max() <= clip
                clipped += int((single.detach().abs() == clip).sum())
        for single, param in zip(mine_r, real, strict=True):
            ours = trial_view(param.detach(), n)[index].reshape(single.shape)
            torch.testing.assert_close(ours, single.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(stacked.flip_counts.cpu(), solo_flips)
    assert solo_flips.sum() > 0
    if any("latent_weight_clip" in t for t in trials):
        assert clipped > 0  # the clip was active, not a no-op


def test_xavier_multipliers_are_per_layer_rows() -> None:
    """Hand check: step row of layer i = lr * xavier(layer i) / (1 - 0.9^t) for a trial with
    Xavier scaling, lr / (1 - 0.9^t) without; the reported lr stays the base lr."""
    models = [build_model("conv-small", SHAPE, 10, **OPTIONS) for _ in range(2)]
    network = stack_models(models)
    stacked = StackedOptimizer(network, "latent-adam")
    multipliers = [xavier_lr_multiplier(layer) for _, layer in binary_layers(models[0])]
    assert len(set(multipliers)) == len(multipliers) > 1  # distinct per layer, not 1
    config = OptimizerConfig(name="latent-adam", lr=1e-3, latent_lr_scaling="xavier")
    rows = stacked.trial_rows(config, {"lr": np.full(2, 1e-3)}, np.array([0, 4]))
    none = dataclasses.replace(config, latent_lr_scaling="none")
    plain = stacked.trial_rows(none, {"lr": np.full(2, 1e-3)}, np.array([0, 4]))
    for layer, multiplier in enumerate(multipliers):
        column = stacked.row_index[f"step.{layer}"]
        for row, t in enumerate((1, 5)):
            assert rows[row, column] == 1e-3 * multiplier / (1 - 0.9**t)
            assert plain[row, column] == 1e-3 / (1 - 0.9**t)


def _digits(seed: int, family: str, epochs: int = 2, **optimizer: object) -> TrainConfig:
    return TrainConfig(
        model="mlp",
        dataset="digits",
        epochs=epochs,
        batch_size=50,
        seed=seed,
        max_train_samples=400,
        optimizer=OptimizerConfig(name=family, **optimizer),
    )


TRAIN_STACKS = {
    "latent-adam": [
        {"lr": 1e-2, "weight_decay": 1e-3, "latent_init_scale": 0.01},
        {
            "lr": 3e-3,
            "lr_schedule": COSINE,
            "weight_decay": 0.5,
            "decoupled_weight_decay": True,
            "latent_weight_clip": 0.5,
            "real_lr_schedule": LINEAR,
        },
        {"lr": 1e-3, "latent_lr_scaling": "xavier", "latent_weight_clip": 1.0},
    ],
    "latent-sgd": [
        {"lr": 0.5, "momentum": 0.9, "weight_decay": 1e-3, "latent_init_scale": 0.01},
        {"lr": 0.1, "momentum": 0.0, "lr_schedule": LINEAR, "latent_weight_clip": 0.5},
        {
            "lr": 3e-3,
            "momentum": 0.5,
            "latent_lr_scaling": "xavier",
            "weight_decay": 0.5,
            "decoupled_weight_decay": True,
            "real_lr": 3e-3,
        },
    ],
}


@pytest.mark.parametrize("family", LATENT_FAMILIES)
def test_train_stacked_matches_train_per_trial(family: str, noisy_digits: Dataset) -> None:
    configs = [_digits(seed, family, **o) for seed, o in enumerate(TRAIN_STACKS[family])]
    options = {"hidden": 32}
    # Two slots for three trials: trial 2 runs in a refilled slot, after N shrinks to 1.
    stacked = train_stacked(configs, n_slots=2, dataset=noisy_digits, model_options=options)
    for config, result in zip(configs, stacked, strict=True):
        solo = train(config, dataset=noisy_digits, model_options=options)
        assert len(result.epochs) == len(solo.epochs) == 2
        for a, b in zip(result.epochs, solo.epochs, strict=True):
            # Gradients differ in summation order only (~1e-9): losses to ~1e-7, the same
            # accuracy, and the same flips.
            assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
            assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5)
            assert a.val_accuracy == b.val_accuracy
            assert a.flip_ratio == pytest.approx(b.flip_ratio, rel=1e-9)
            assert a.flip_ratio_per_layer == pytest.approx(b.flip_ratio_per_layer, rel=1e-9)
            assert a.hyperparameters == b.hyperparameters
        assert result.epochs[-1].flip_ratio > 0


def test_initial_latent_weights_are_the_solo_ones(noisy_digits: Dataset) -> None:
    """``train`` seeds, builds the model and then draws the latent weights in build_optimizer;
    a stacked trial starts from the same latent weights (init scale per trial)."""
    for scale in (None, 0.01):
        config = _digits(3, "latent-sgd", latent_init_scale=scale)
        captured: list[dict[str, torch.Tensor]] = []

        def keep(model: nn.Module, _: object, into: list = captured) -> None:
            into.append({k: v.clone() for k, v in model.state_dict().items()})

        train(dataclasses.replace(config, epochs=1), dataset=noisy_digits, on_setup=keep)
        trainer = StackedTrainer(1, dataset=noisy_digits)
        trainer._setup(config)
        model = trainer._single_model(config)
        assert all(layer.latent for _, layer in binary_layers(model))
        state = model.state_dict()
        assert state.keys() == captured[0].keys()
        for key, value in captured[0].items():
            assert torch.equal(state[key], value), key
        weight = state["1.weight"]
        assert weight.abs().max() <= (scale or 1.0) and len(weight.unique()) > 2


def test_latent_families_are_stackable_and_sized() -> None:
    assert STACKABLE_FAMILIES == BINARY_FAMILIES + LATENT_FAMILIES
    assert set(LATENT_FAMILIES) == {"latent-adam", "latent-sgd"}
    for family in STACKABLE_FAMILIES:
        assert is_stackable(_digits(0, family))
    # Adam keeps two moments per latent weight, SGD one momentum buffer.
    sizes = {f: estimate_slot_bytes("mlp", SHAPE, 50, family=f) for f in LATENT_FAMILIES}
    assert sizes["latent-adam"] == estimate_slot_bytes("mlp", SHAPE, 50, family="bop2")
    assert sizes["latent-sgd"] == estimate_slot_bytes("mlp", SHAPE, 50, family="bop")
    assert sizes["latent-adam"] > sizes["latent-sgd"]


def test_configs_that_cannot_share_a_stack_raise_config_error() -> None:
    adam = _digits(0, "latent-adam")
    with pytest.raises(ConfigError) as info:
        train_stacked([adam, _digits(1, "latent-sgd")])
    assert info.value.field == "optimizer.name"
    with pytest.raises(ConfigError) as info:
        train_stacked([adam, _digits(1, "bop")])
    assert info.value.field == "optimizer.name"
    with pytest.raises(ConfigError) as info:
        train_stacked([adam, dataclasses.replace(_digits(1, "latent-adam"), batch_size=32)])
    assert info.value.field == "batch_size"
    # Through the slot API too: the second trial handed out does not fit the first's stack.
    queue = [(adam, None), (_digits(1, "latent-sgd"), None)]
    with pytest.raises(ConfigError) as info:
        StackedTrainer(2, model_options={"hidden": 8}).run(lambda: queue.pop(0) if queue else None)
    assert info.value.field == "optimizer.name"


def test_schedule_rows_follow_each_trials_own_step() -> None:
    """A scheduled lr in the table equals schedule_value at the trial's own global step."""
    network = stack_models([build_model("mlp", SHAPE, 10, hidden=8) for _ in range(2)])
    stacked = StackedOptimizer(network, "latent-sgd")
    config = OptimizerConfig(name="latent-sgd", lr=0.1, lr_schedule=LINEAR)
    steps = np.arange(5, 9)
    lrs = np.array([schedule_value(0.1, LINEAR, int(s), 4, 12) for s in steps])
    rows = stacked.trial_rows(config, {"lr": lrs, "real_lr": np.full(4, 0.01)}, steps)
    assert list(rows[:, stacked.row_index["step.0"]]) == list(lrs)
    assert list(rows[:, stacked.row_index["momentum"]]) == [0.9] * 4
    assert list(rows[:, stacked.row_index["clip"]]) == [np.inf] * 4
    assert list(rows[:, stacked.row_index["decay.0"]]) == [1.0] * 4
