"""Spec + Optuna trial -> TrainConfig; sampler and pruner builders (no database, no torch run)."""

from __future__ import annotations

import importlib.util

import optuna
import pytest
from optuna.trial import FixedTrial
from pydantic import ValidationError

from bnn_core.config import Schedule
from service.spec import (
    DATASET_NAMES,
    DEFAULT_SEARCH_SPACES,
    MODEL_NAMES,
    OPTIMIZER_FAMILIES,
    SPEC_EXAMPLES,
    SamplerSpec,
    SpecError,
    parse_spec,
)
from worker.objective import (
    InfeasibleParams,
    build_pruner,
    build_sampler,
    build_train_config,
    suggest_params,
)
from worker.settings import WorkerSettings, use_compile

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spec(**overrides: object):
    base = {"name": "t", "optimizer": "bop", "model": "mlp", "dataset": "digits"}
    return parse_spec({**base, **overrides})


def _sample(spec, n: int = 20) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(
        directions=spec.directions, sampler=build_sampler(spec), pruner=build_pruner(spec)
    )
    for _ in range(n):
        trial = study.ask()
        config = build_train_config(spec, trial, device="cpu")
        trial.set_user_attr("optimizer", config.optimizer.name)
        study.tell(trial, [config.optimizer.real_lr] * len(spec.directions))
    return study.trials


@pytest.mark.parametrize("family", OPTIMIZER_FAMILIES)
def test_every_family_maps_to_its_optimizer_config(family: str) -> None:
    spec = parse_spec(SPEC_EXAMPLES[family])
    trial = optuna.create_study(directions=spec.directions).ask()
    config = build_train_config(spec, trial, device="cpu", data_root="/data")
    assert config.optimizer.name == family
    assert (config.model, config.dataset, config.epochs) == (spec.model, spec.dataset, spec.epochs)
    assert config.batch_size == spec.batch_size and config.device == "cpu"
    assert config.data_root == "/data" and config.data_subdir == spec.data_subdir
    for name, value in trial.params.items():
        if name.endswith("_is_zero"):
            continue
        actual = getattr(config.optimizer, name)
        assert (actual.kind if isinstance(actual, Schedule) else actual) == value


@pytest.mark.parametrize("family", OPTIMIZER_FAMILIES)
def test_default_spaces_sample_inside_their_ranges(family: str) -> None:
    """Every value the worker trains with lies in the default space's range (or is one of its
    choices, or exactly 0 where the range offers it), checked on the built TrainConfig."""
    space = DEFAULT_SEARCH_SPACES[family]
    spec = _spec(optimizer=family)
    study = optuna.create_study(directions=spec.directions, sampler=build_sampler(spec))
    seen: dict[str, set[object]] = {}
    for _ in range(25):
        trial = study.ask()
        try:
            config = build_train_config(spec, trial, device="cpu")
        except InfeasibleParams:  # filter's alpha > gamma with a constant alpha: pruned
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        study.tell(trial, [0.5] * len(spec.directions))
        assert config.optimizer.name == family
        for name, entry in space.items():
            value = getattr(config.optimizer, name)
            value = value.kind if isinstance(value, Schedule) else value
            seen.setdefault(name, set()).add(value)
            if "choices" in entry:
                assert value in entry["choices"], (name, value)
            elif entry.get("include_zero") and value == 0.0:
                continue
            else:
                assert entry["low"] <= value <= entry["high"], (name, value)
    # The ranges are really searched, not pinned to one value.
    assert all(len(values) > 1 for values in seen.values()), seen


def test_include_zero_is_its_own_choice() -> None:
    spec = _spec(search_space={"threshold": {"low": 1e-9, "high": 1e-5, "include_zero": True}})
    zero = FixedTrial({"threshold_is_zero": True})
    assert build_train_config(spec, zero).optimizer.threshold == 0.0
    nonzero = FixedTrial({"threshold_is_zero": False, "threshold": 3e-7})
    assert build_train_config(spec, nonzero).optimizer.threshold == pytest.approx(3e-7)


def test_fixed_values_are_not_sampled_but_recorded() -> None:
    spec = _spec(
        search_space={
            "gamma": {"low": 1e-5, "high": 1e-3, "log": True},
            "threshold": 1e-7,
            "real_lr": 0.005,
            "gamma_schedule": {"kind": "staircase", "factor": 0.5, "every_epochs": 3},
        }
    )
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    config = build_train_config(spec, trial)
    assert set(trial.params) == {"gamma"}
    assert config.optimizer.threshold == 1e-7 and config.optimizer.real_lr == 0.005
    assert config.optimizer.gamma_schedule == Schedule("staircase", 0.5, 3)
    fixed = study.trials[0].user_attrs["fixed_params"]
    assert fixed["threshold"] == 1e-7 and fixed["gamma_schedule"]["kind"] == "staircase"


def test_schedule_choices_become_schedule_objects() -> None:
    spec = _spec(search_space={"gamma_schedule": {"choices": ["constant", "cosine"]}})
    config = build_train_config(spec, FixedTrial({"gamma_schedule": "cosine"}))
    assert config.optimizer.gamma_schedule == Schedule(kind="cosine")


def test_bop2_sigma_schedule_and_bias_correction_reach_the_optimizer_config() -> None:
    linear = {"kind": "linear", "end_value": 1e-2}
    spec = _spec(
        optimizer="bop2",
        search_space={"sigma": 1e-7, "sigma_schedule": linear, "bias_correction": True},
    )
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    optimizer = build_train_config(spec, trial).optimizer
    assert optimizer.name == "bop2" and optimizer.bias_correction is True
    assert optimizer.sigma == 1e-7
    assert optimizer.sigma_schedule == Schedule(kind="linear", end_value=1e-2)
    assert trial.params == {}
    assert study.trials[0].user_attrs["fixed_params"]["bias_correction"] is True
    spec = _spec(
        optimizer="bop2",
        search_space={
            "sigma_schedule": {"choices": ["constant", "cosine"]},
            "bias_correction": {"choices": [True, False]},
        },
    )
    for flag in (True, False):
        trial = FixedTrial({"sigma_schedule": "cosine", "bias_correction": flag})
        optimizer = build_train_config(spec, trial).optimizer
        assert optimizer.bias_correction is flag
        assert optimizer.sigma_schedule == Schedule(kind="cosine")
    default = build_train_config(_spec(optimizer="bop2", search_space={"gamma": 1e-4}), trial)
    assert default.optimizer.bias_correction is False


def test_filter_alpha_never_exceeds_gamma() -> None:
    spec = _spec(
        optimizer="filter",
        search_space={
            "alpha": {"low": 1e-4, "high": 0.5, "log": True},
            "gamma": {"low": 1e-3, "high": 1.0, "log": True},
            "alpha_schedule": "constant",  # the order is a symmetry only for a constant alpha
        },
        sampler={"name": "random", "seed": 3},
    )
    study = optuna.create_study(sampler=build_sampler(spec), direction="maximize")
    for _ in range(60):
        trial = study.ask()
        optimizer = build_train_config(spec, trial).optimizer
        assert optimizer.alpha <= optimizer.gamma
        study.tell(trial, 0.0)


def test_filter_without_a_valid_alpha_is_infeasible() -> None:
    spec = _spec(
        optimizer="filter",
        search_space={
            "alpha": {"low": 1e-2, "high": 0.5, "log": True},
            "gamma": {"low": 1e-3, "high": 1.0, "log": True},
            "alpha_schedule": "constant",
        },
    )
    with pytest.raises(InfeasibleParams, match="alpha"):
        suggest_params(FixedTrial({"gamma": 2e-3}), spec)


def test_filter_fixed_alpha_raises_gammas_low() -> None:
    spec = _spec(
        optimizer="filter",
        search_space={
            "alpha": 0.05,
            "gamma": {"low": 1e-3, "high": 1.0, "log": True},
            "alpha_schedule": "constant",
        },
        sampler={"name": "random", "seed": 0},
    )
    for trial in _sample(spec, 20):
        assert trial.params["gamma"] >= 0.05


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("qmc", optuna.samplers.QMCSampler),
    ],
)
def test_samplers(name: str, cls: type) -> None:
    spec = _spec(sampler={"name": name, "seed": 1})
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        with pytest.raises(ValueError, match="pip install cmaes"):
            build_sampler(spec)
        return
    assert isinstance(build_sampler(spec), cls)
    assert len(_sample(spec, 3)) == 3


def test_tpe_is_multivariate_with_constant_liar() -> None:
    sampler = build_sampler(_spec())
    assert sampler._multivariate and sampler._constant_liar


def test_grid_sampler_needs_a_discrete_space() -> None:
    grid = _spec(
        sampler={"name": "grid"},
        search_space={
            "gamma": {"choices": [1e-4, 1e-3]},
            "threshold": {"low": 0.0, "high": 2e-6, "step": 1e-6},
            "real_lr": 0.01,
        },
    )
    assert isinstance(build_sampler(grid), optuna.samplers.GridSampler)
    values = {(t.params["gamma"], t.params["threshold"]) for t in _sample(grid, 6)}
    assert len(values) == 6
    continuous = _spec(search_space={"gamma": {"low": 1e-4, "high": 1e-3}, "real_lr": 0.01})
    continuous = continuous.model_copy(update={"sampler": SamplerSpec(name="grid")})
    with pytest.raises(ValueError, match="continuous range"):
        build_sampler(continuous)


def test_unknown_sampler_is_a_clear_error() -> None:
    spec = _spec().model_copy(update={"sampler": SamplerSpec.model_construct(name="bogus")})
    with pytest.raises(ValueError, match="unknown sampler 'bogus'"):
        build_sampler(spec)


def test_pruners() -> None:
    assert isinstance(build_pruner(_spec()), optuna.pruners.NopPruner)
    median = build_pruner(_spec(pruner={"name": "median", "n_startup_trials": 2}))
    assert isinstance(median, optuna.pruners.MedianPruner)
    hyperband = build_pruner(_spec(epochs=27, pruner={"name": "hyperband"}))
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert hyperband._max_resource == 27
    multi = _spec(objectives=["val_accuracy", "flip_ratio"])
    assert isinstance(build_pruner(multi), optuna.pruners.NopPruner)


INPUT_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28)}
INPUT_SHAPES["cifar10"] = (3, 32, 32)


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("dataset", DATASET_NAMES)
def test_the_spec_rejects_exactly_the_model_dataset_pairs_bnn_core_cannot_build(
    model: str, dataset: str
) -> None:
    """A pair bnn_core cannot build would fail every trial; the spec must refuse it up front
    (422 naming ``model``), and only such pairs."""
    from bnn_core.config import ConfigError
    from bnn_core.models import build_model

    try:
        build_model(model, INPUT_SHAPES[dataset], 10)
        buildable = True
    except ConfigError:
        buildable = False
    if buildable:
        _spec(model=model, dataset=dataset)
    else:
        with pytest.raises(SpecError) as info:
            _spec(model=model, dataset=dataset)
        assert info.value.errors[0]["field"] == "model"


@pytest.mark.parametrize("family", ["latent-adam", "latent-sgd"])
def test_latent_weight_clip_reaches_the_optimizer_config(family: str) -> None:
    fixed = _spec(optimizer=family, search_space={"lr": 1e-3, "latent_weight_clip": 1})
    study = optuna.create_study(direction="maximize")
    optimizer = build_train_config(fixed, study.ask()).optimizer
    assert optimizer.latent_weight_clip == 1.0 and isinstance(optimizer.latent_weight_clip, float)
    assert study.trials[0].user_attrs["fixed_params"]["latent_weight_clip"] == 1
    ranged = _spec(
        optimizer=family, search_space={"latent_weight_clip": {"low": 0.5, "high": 2.0}}
    )
    optimizer = build_train_config(ranged, FixedTrial({"latent_weight_clip": 1.5})).optimizer
    assert optimizer.latent_weight_clip == 1.5
    for trial in _sample(ranged, n=5):
        assert 0.5 <= trial.params["latent_weight_clip"] <= 2.0
    default = build_train_config(
        _spec(optimizer=family, search_space={"lr": 1e-3}), FixedTrial({})
    )
    assert default.optimizer.latent_weight_clip is None


def test_cuda_trials_are_channels_last_and_compile_is_the_workers_choice() -> None:
    spec = _spec()
    trial = optuna.create_study().ask()
    on_cpu = build_train_config(spec, trial, device="cpu")
    assert (on_cpu.channels_last, on_cpu.compile) == (False, False)
    on_gpu = build_train_config(spec, trial, device="cuda:1", compile=True)
    assert (on_gpu.channels_last, on_gpu.compile) == (True, True)


@pytest.mark.parametrize(
    ("setting", "device", "stacked", "expected"),
    [
        ("auto", "cuda", True, True),
        ("auto", "cuda:2", False, False),
        ("auto", "cpu", True, False),
        ("on", "cpu", False, True),
        ("off", "cuda", True, False),
    ],
)
def test_compile_setting(setting: str, device: str, stacked: bool, expected: bool) -> None:
    assert use_compile(setting, device, stacked) is expected


def test_compile_setting_is_read_from_the_environment_and_checked(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("BNN_TUNE_COMPILE", "off")
    assert WorkerSettings().compile == "off"
    monkeypatch.setenv("BNN_TUNE_COMPILE", "sometimes")
    with pytest.raises(ValidationError, match="compile"):
        WorkerSettings()


@pytest.mark.parametrize("protocol", ["holdout", "test"])
def test_the_spec_eval_protocol_reaches_the_train_config(protocol: str) -> None:
    spec = parse_spec({**SPEC_EXAMPLES["bop"], "eval_protocol": protocol})
    trial = optuna.create_study(directions=spec.directions).ask()
    assert build_train_config(spec, trial, device="cpu").eval_protocol == protocol
