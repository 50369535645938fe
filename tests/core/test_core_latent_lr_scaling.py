"""BinaryConnect's Xavier learning-rate scaling of the latent baselines: the multiplier, the
per-layer param groups of build_optimizer, schedules on top of it, config and CLI."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bnn_core.cli import build_parser, config_from_args, main
from bnn_core.config import ConfigError, OptimizerConfig, Schedule
from bnn_core.layers import BinaryConv2d, BinaryLinear, SignActivation
from bnn_core.optim import build_optimizer, xavier_lr_multiplier

# conv 1 -> 5, 3x3: 1 / sqrt(1.5 / (9 * (1 + 5))) = sqrt(54 / 1.5) = sqrt(36) = 6
CONV_MULTIPLIER = 6.0
# dense 80 -> 16: 1 / sqrt(1.5 / (80 + 16)) = sqrt(96 / 1.5) = sqrt(64) = 8
DENSE_MULTIPLIER = 8.0


def xavier_model() -> nn.Sequential:
    """A binary conv and a binary dense layer whose multipliers are 6 and 8 exactly."""
    torch.manual_seed(0)
    return nn.Sequential(
        BinaryConv2d(1, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        SignActivation(),
        nn.Flatten(),
        BinaryLinear(5 * 4 * 4, 16),
        nn.BatchNorm1d(16),
        nn.Linear(16, 3),
    )


def backward(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(8, 1, 4, 4, generator=generator)
    labels = torch.randint(0, 3, (8,), generator=generator)
    nn.functional.cross_entropy(model(inputs), labels).backward()


# --- the multiplier ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (BinaryConv2d(1, 5, 3), 6.0),  # k = 9: sqrt(9 * 6 / 1.5)
        (BinaryConv2d(2, 4, 2), 4.0),  # k = 4: sqrt(4 * 6 / 1.5)
        (nn.Conv2d(3, 3, (1, 4)), 4.0),  # k = 1 * 4: sqrt(4 * 6 / 1.5), a non-square kernel
        (BinaryLinear(80, 16), 8.0),  # sqrt(96 / 1.5)
        (BinaryLinear(100, 50), 10.0),  # sqrt(150 / 1.5)
        (nn.Linear(5, 1), 2.0),  # sqrt(6 / 1.5)
    ],
)
def test_xavier_multiplier_hand_computed(layer: nn.Module, expected: float) -> None:
    assert xavier_lr_multiplier(layer) == pytest.approx(expected, rel=1e-12)


def test_xavier_multiplier_of_a_conv_uses_the_kernel_area() -> None:
    # 64 -> 128 3x3 (a BinaryNet layer): 1 / sqrt(1.5 / (9 * 192)) = sqrt(1152) ~ 33.94
    assert xavier_lr_multiplier(BinaryConv2d(64, 128, 3)) == pytest.approx(math.sqrt(1152))


@pytest.mark.parametrize("module", [nn.ReLU(), nn.BatchNorm1d(4), nn.Conv1d(2, 2, 3)])
def test_xavier_multiplier_needs_a_dense_or_conv2d_weight(module: nn.Module) -> None:
    with pytest.raises(ValueError, match="xavier_lr_multiplier"):
        xavier_lr_multiplier(module)


# --- build_optimizer ---------------------------------------------------------------------------


def test_default_is_no_scaling_one_group_at_the_base_lr() -> None:
    config = OptimizerConfig(name="latent-adam", lr=1e-3)
    assert config.latent_lr_scaling == "none"
    pair = build_optimizer(xavier_model(), config, steps_per_epoch=1, epochs=1)
    assert [g["lr"] for g in pair.binary.param_groups] == [1e-3]
    assert "lr_multiplier" not in pair.binary.param_groups[0]


@pytest.mark.parametrize("name", ["latent-adam", "latent-sgd"])
def test_xavier_gives_one_group_per_binary_layer(name: str) -> None:
    model = xavier_model()
    config = OptimizerConfig(name=name, lr=1e-3, latent_lr_scaling="xavier")
    pair = build_optimizer(model, config, steps_per_epoch=1, epochs=1)
    groups = pair.binary.param_groups
    assert [g["params"] for g in groups] == [[model[0].weight], [model[4].weight]]
    assert [g["lr"] for g in groups] == pytest.approx([6e-3, 8e-3], rel=1e-12)
    assert [g["lr_multiplier"] for g in groups] == pytest.approx([6.0, 8.0], rel=1e-12)
    assert pair.real.param_groups[0]["lr"] == config.real_lr  # real parameters unscaled
    assert pair.hyperparameters()["lr"] == 1e-3  # reported: the base lr


def test_latent_adam_xavier_step_matches_torch_adam_at_the_scaled_lr() -> None:
    """Independent reference: one torch.optim.Adam per layer with lr = base * hand multiplier."""
    base_lr = 1e-3
    model = xavier_model()
    config = OptimizerConfig(name="latent-adam", lr=base_lr, latent_lr_scaling="xavier")
    pair = build_optimizer(model, config, steps_per_epoch=10, epochs=1)
    layers = [model[0], model[4]]
    refs = [nn.Parameter(layer.weight.detach().clone()) for layer in layers]
    ref_opts = [
        torch.optim.Adam([refs[0]], lr=base_lr * CONV_MULTIPLIER),
        torch.optim.Adam([refs[1]], lr=base_lr * DENSE_MULTIPLIER),
    ]
    for seed in range(3):
        pair.zero_grad()
        backward(model, seed)
        for ref, opt, layer in zip(refs, ref_opts, layers, strict=True):
            ref.grad = layer.weight.grad.clone()
            opt.step()
        before = [layer.weight.detach().clone() for layer in layers]
        pair.step()
        for ref, layer, old in zip(refs, layers, before, strict=True):
            torch.testing.assert_close(layer.weight.detach(), ref.detach(), rtol=0, atol=1e-7)
            # Adam moves a weight by at most about its lr per step; with the multipliers 6
            # and 8 the largest move is far beyond the unscaled base lr.
            assert layer.weight.detach().sub(old).abs().max() > 3 * base_lr


@pytest.mark.parametrize("decoupled", [False, True])
def test_latent_sgd_xavier_step_is_minus_scaled_lr_times_gradient(decoupled: bool) -> None:
    model = xavier_model()
    config = OptimizerConfig(
        name="latent-sgd",
        lr=0.01,
        momentum=0.0,
        decoupled_weight_decay=decoupled,
        latent_lr_scaling="xavier",
    )
    pair = build_optimizer(model, config, steps_per_epoch=1, epochs=1)
    backward(model, seed=1)
    layers = [(model[0], CONV_MULTIPLIER), (model[4], DENSE_MULTIPLIER)]
    expected = [layer.weight.detach() - 0.01 * m * layer.weight.grad for layer, m in layers]
    pair.step()
    for (layer, _), want in zip(layers, expected, strict=True):
        torch.testing.assert_close(layer.weight.detach(), want, rtol=0, atol=1e-7)


def test_scheduled_lr_is_scaled_per_layer() -> None:
    # staircase x0.1 per epoch, 2 steps per epoch: steps 0-1 use 0.01, steps 2-3 use 0.001.
    config = OptimizerConfig(
        name="latent-adam",
        lr=0.01,
        lr_schedule=Schedule(kind="staircase", factor=0.1, every_epochs=1),
        latent_lr_scaling="xavier",
    )
    model = xavier_model()
    pair = build_optimizer(model, config, steps_per_epoch=2, epochs=3)
    expected = {1: 0.01, 2: 0.01, 3: 0.001, 4: 0.001, 5: 1e-4}
    for steps_done in range(1, 6):
        pair.zero_grad()
        backward(model, steps_done)
        pair.step()
        base = expected[steps_done]
        lrs = [g["lr"] for g in pair.binary.param_groups]
        assert lrs == pytest.approx([base * CONV_MULTIPLIER, base * DENSE_MULTIPLIER], rel=1e-9)
        assert pair.hyperparameters()["lr"] == pytest.approx(base, rel=1e-12)
        assert pair.real.param_groups[0]["lr"] == config.real_lr


def test_multipliers_survive_a_state_dict_round_trip() -> None:
    config = OptimizerConfig(
        name="latent-adam",
        lr=0.01,
        lr_schedule=Schedule(kind="cosine"),
        latent_lr_scaling="xavier",
    )
    model = xavier_model()
    pair = build_optimizer(model, config, steps_per_epoch=2, epochs=2)
    backward(model, 0)
    pair.step()
    restored = build_optimizer(xavier_model(), config, steps_per_epoch=2, epochs=2)
    restored.load_state_dict(pair.state_dict())
    for r, p in zip(restored.binary.param_groups, pair.binary.param_groups, strict=True):
        assert r["lr_multiplier"] == p["lr_multiplier"] and r["lr"] == p["lr"]


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bop", "bop2", "filter"])
def test_xavier_is_rejected_for_flip_optimizers(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        OptimizerConfig(name=name, latent_lr_scaling="xavier")
    assert info.value.field == "optimizer.latent_lr_scaling"
    assert OptimizerConfig(name=name, latent_lr_scaling="none").latent_lr_scaling == "none"


@pytest.mark.parametrize("value", ["Xavier", "glorot", "", None, 1, True])
def test_bad_latent_lr_scaling_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        OptimizerConfig(name="latent-adam", latent_lr_scaling=value)  # type: ignore[arg-type]
    assert info.value.field == "optimizer.latent_lr_scaling"


# --- bnn-train ---------------------------------------------------------------------------------


def test_cli_flags_reach_the_optimizer_config() -> None:
    argv = ["--optimizer", "latent-sgd", "--latent-lr-scaling", "xavier"]
    argv += ["--latent-weight-clip", "1.5"]
    optimizer = config_from_args(build_parser().parse_args(argv)).optimizer
    assert (optimizer.latent_lr_scaling, optimizer.latent_weight_clip) == ("xavier", 1.5)
    default = config_from_args(build_parser().parse_args(["--optimizer", "latent-adam"]))
    assert default.optimizer.latent_lr_scaling == "none"
    assert default.optimizer.latent_weight_clip is None


def test_cli_bad_latent_lr_scaling_exits_2_with_a_message(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--optimizer", "latent-adam", "--latent-lr-scaling", "glorot"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bnn-train: error:") and "--latent-lr-scaling" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--optimizer", "bop", "--latent-lr-scaling", "xavier"], "optimizer.latent_lr_scaling"),
        (
            ["--optimizer", "latent-sgd", "--latent-weight-clip", "-1"],
            "optimizer.latent_weight_clip",
        ),
        (["--optimizer", "filter", "--latent-weight-clip", "1"], "optimizer.latent_weight_clip"),
    ],
)
def test_cli_invalid_combinations_exit_2_naming_the_field(
    argv: list[str], needle: str, capsys
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnn-train: error:") and needle in err[0]


def test_cli_latent_weight_clip_must_be_a_number(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--optimizer", "latent-sgd", "--latent-weight-clip", "abc"])
    assert info.value.code == 2
    assert "--latent-weight-clip" in capsys.readouterr().err
