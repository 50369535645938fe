"""Recipes, family defaults, schedule parsing and the bnn-train options that reach them."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from bnn_core.cli import build_parser, config_from_args, main
from bnn_core.config import (
    FAMILY_DEFAULTS,
    OPTIMIZER_NAMES,
    SCHEDULE_KINDS,
    ConfigError,
    OptimizerConfig,
    Schedule,
)
from bnn_core.data import random_cifar10, write_cifar10
from bnn_core.recipes import RECIPE_NAMES, RECIPES, get_recipe
from bnn_core.schedules import schedule_value
from bnn_core.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"width": 1 / 16}  # BinaryNet with 8-16-32 channels and 64 dense units


@pytest.fixture(scope="module")
def cifar_shaped():
    return random_cifar10(60, 20, seed=0)


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_builds_and_runs_one_step(name: str, cifar_shaped) -> None:
    config = get_recipe(name).build()
    assert (config.model, config.dataset, config.eval_protocol) == ("binarynet", "cifar10", "test")
    assert config.augment is True
    tiny = dataclasses.replace(config, epochs=1, device="cpu")
    result = train(tiny, dataset=cifar_shaped, model_options=TINY)  # 60 images: one step
    assert len(result.epochs) == 1
    assert result.test_accuracy == result.epochs[0].val_accuracy
    values = result.epochs[0].hyperparameters
    for key in ("gamma", "sigma", "threshold", "alpha", "lr", "real_lr"):
        if key in values and key != "alpha":  # alpha's linear-epoch schedule at epochs=1
            assert values[key] == getattr(config.optimizer, key)


def test_published_protocols_are_as_written() -> None:
    bop = RECIPES["bop-cifar10"]
    config = bop.build()
    assert bop.target == 0.913 and "91.3" in bop.build.__doc__
    assert (config.epochs, config.batch_size) == (500, 50)
    opt = config.optimizer
    assert (opt.name, opt.gamma, opt.threshold, opt.real_lr) == ("bop", 1e-4, 1e-8, 0.01)
    steps = 50_000 // 50  # 1,000 steps per epoch
    gamma = [schedule_value(1e-4, opt.gamma_schedule, s * steps, steps, 500 * steps)
             for s in (0, 99, 100, 250, 499)]  # fmt: skip
    assert gamma == pytest.approx([1e-4, 1e-4, 1e-5, 1e-6, 1e-8])
    adam = RECIPES["latent-adam-cifar10"].build().optimizer
    assert (adam.latent_lr_scaling, adam.latent_weight_clip, adam.lr) == ("xavier", 1.0, 1e-3)
    assert adam.lr_schedule == Schedule(kind="staircase", factor=0.1, every_epochs=100)
    bop2 = RECIPES["bop2-cifar10"].build().optimizer
    end = 500 * steps
    assert schedule_value(bop2.sigma, bop2.sigma_schedule, end, steps, end) == 1e-2
    assert schedule_value(bop2.threshold, bop2.threshold_schedule, end, steps, end) == 1e-8
    assert not bop2.bias_correction and RECIPES["bop2-unbiased-cifar10"].target == 0.914
    assert RECIPES["bop2-cifar10"].target == 0.919
    assert RECIPES["filter-cifar10"].target is None  # no CIFAR number is published
    with pytest.raises(KeyError, match="bop-cifar10"):
        get_recipe("bop-imagenet")


def test_family_defaults_satisfy_each_family() -> None:
    for name in OPTIMIZER_NAMES:
        config = OptimizerConfig(name=name)
        for key, value in FAMILY_DEFAULTS[name].items():
            assert getattr(config, key) == value
    flt = OptimizerConfig(name="filter")
    assert flt.alpha <= flt.gamma
    bop2 = OptimizerConfig(name="bop2")
    assert (bop2.gamma, bop2.sigma, bop2.threshold) == (1e-6, 1e-2, 1e-6)
    assert OptimizerConfig(name="bop", gamma=3e-4).gamma == 3e-4  # given values win


def test_polynomial_schedule_is_keras_polynomial_decay() -> None:
    schedule = Schedule(kind="polynomial", power=2.0, end_value=1e-6)
    for step in (0, 10, 500, 999, 1000, 5000):
        keras = (1e-3 - 1e-6) * (1 - min(step, 1000) / 1000) ** 2 + 1e-6
        assert schedule_value(1e-3, schedule, step, 100, 1000) == pytest.approx(keras)
    with pytest.raises(ConfigError, match="power"):
        Schedule(kind="polynomial", power=0.0)


def test_schedule_parse() -> None:
    assert Schedule.parse("staircase:factor=0.1,every_epochs=100") == Schedule(
        kind="staircase", factor=0.1, every_epochs=100
    )
    assert Schedule.parse("polynomial:power=2,end-value=1e-6") == Schedule(
        kind="polynomial", power=2.0, end_value=1e-6
    )
    for kind in SCHEDULE_KINDS:
        assert Schedule.parse(kind).kind == kind
    for bad in ("wobbly", "linear:end_value", "linear:speed=2", "staircase:every_epochs=x"):
        with pytest.raises(ConfigError):
            Schedule.parse(bad)


def test_cli_schedule_and_decoupled_options(tmp_path: Path, capsys) -> None:
    args = build_parser().parse_args(
        ["--optimizer", "latent-sgd", "--weight-decay", "1e-3", "--decoupled-weight-decay",
         "--lr-schedule", "cosine:end_value=0", "--real-lr-schedule", "linear:end_value=1e-4"]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.optimizer.decoupled_weight_decay is True
    assert config.optimizer.lr_schedule == Schedule(kind="cosine")
    assert config.optimizer.real_lr_schedule == Schedule(kind="linear", end_value=1e-4)
    out = tmp_path / "r.json"
    argv = ["--gamma-schedule", "staircase:factor=0.5,every_epochs=1", "--epochs", "2"]
    argv += ["--max-train-samples", "200", "--no-progress", "--device", "cpu", "--json", str(out)]
    assert main(argv) == 0
    epochs = json.loads(out.read_text())["epochs"]
    assert [e["hyperparameters"]["gamma"] for e in epochs] == [1e-4, 5e-5]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--gamma-schedule", "wobbly"], "--gamma-schedule"),
        (["--tau-schedule", "linear:speed=2"], "--threshold-schedule"),
        (["--recipe", "bop-cifar10", "--model", "mlp"], "recipe"),
        (["--recipe", "no-such"], "--recipe"),
    ],
)
def test_cli_bad_schedules_and_recipes_exit_2(argv: list[str], needle: str, capsys) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_cli_runs_a_recipe_with_overrides(tmp_path: Path, capsys, cifar_shaped) -> None:
    write_cifar10(cifar_shaped, tmp_path / "cifar10")
    assert main(["--list-recipes"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in RECIPE_NAMES) and "91.3%" in listing
    out = tmp_path / "r.json"
    argv = ["--recipe", "bop-cifar10", "--epochs", "1", "--data-root", str(tmp_path)]
    argv += ["--width", "0.0625", "--device", "cpu", "--no-progress", "--json", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "recipe bop-cifar10" in stdout and "TEST set" in stdout
    result = json.loads(out.read_text())
    assert result["config"]["optimizer"]["gamma_schedule"]["kind"] == "staircase"
    assert result["config"]["epochs"] == 1 and result["config"]["batch_size"] == 50
    assert math.isclose(result["test_accuracy"], result["epochs"][0]["val_accuracy"])


def test_bnn_train_family_defaults() -> None:
    def optimizer(*argv: str) -> OptimizerConfig:
        return config_from_args(build_parser().parse_args(list(argv))).optimizer

    flt = optimizer("--optimizer", "filter")
    assert (flt.alpha, flt.gamma) == (1e-3, 0.1) and flt.alpha <= flt.gamma
    bop2 = optimizer("--optimizer", "bop2")
    assert (bop2.gamma, bop2.sigma, bop2.threshold) == (1e-6, 1e-2, 1e-6)
    bop = optimizer()
    assert (bop.name, bop.gamma, bop.threshold) == ("bop", 1e-4, 1e-8)
