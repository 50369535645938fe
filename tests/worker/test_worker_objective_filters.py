"""Spec -> TrainConfig for the filter view: cutoffs sampled and converted, every schedule,
decoupled weight decay, eval_protocol, and the alpha <= gamma rule only where it is a symmetry."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import FixedTrial

from bnn_core.config import Schedule
from bnn_core.filters import cutoff_to_rate, filter_summary, order_is_symmetric, rate_to_cutoff
from service.spec import parse_spec
from worker.objective import (
    InfeasibleParams,
    build_sampler,
    build_train_config,
    filter_attr,
    steps_per_epoch,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spec(**overrides: object):
    base = {"name": "t", "optimizer": "bop", "model": "mlp", "dataset": "digits"}
    return parse_spec({**base, **overrides})


def _ask(spec, n: int):
    study = optuna.create_study(sampler=build_sampler(spec), direction="maximize")
    for _ in range(n):
        trial = study.ask()
        config = build_train_config(spec, trial)
        study.tell(trial, 0.0)
        yield study.trials[-1], config


# -- cutoffs ---------------------------------------------------------------------------------


def test_a_sampled_cutoff_is_the_param_and_its_rate_is_derived_exactly() -> None:
    spec = _spec(
        search_space={"gamma_cutoff": {"low": 1e-6, "high": 1e-2, "log": True}},
        sampler={"name": "random", "seed": 1},
    )
    for frozen, config in _ask(spec, 10):
        cutoff = frozen.params["gamma_cutoff"]
        assert set(frozen.params) == {"gamma_cutoff"}
        assert frozen.distributions["gamma_cutoff"].log
        assert config.optimizer.gamma == cutoff_to_rate(cutoff)
        assert rate_to_cutoff(config.optimizer.gamma) == pytest.approx(cutoff, rel=1e-9)
        assert frozen.user_attrs["rates"] == {"gamma": config.optimizer.gamma}


def test_fixed_and_chosen_cutoffs_of_bop2() -> None:
    spec = _spec(
        optimizer="bop2",
        search_space={"gamma_cutoff": 1e-5, "sigma_cutoff": {"choices": [1e-3, 1e-2]}},
    )
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    optimizer = build_train_config(spec, trial).optimizer
    frozen = study.trials[0]
    assert optimizer.gamma == cutoff_to_rate(1e-5)
    assert optimizer.sigma == cutoff_to_rate(frozen.params["sigma_cutoff"])
    assert frozen.user_attrs["fixed_params"]["gamma_cutoff"] == 1e-5
    assert frozen.user_attrs["rates"] == {"gamma": optimizer.gamma, "sigma": optimizer.sigma}


def test_rates_given_as_rates_record_no_rates_attr() -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    build_train_config(_spec(search_space={"gamma": 1e-3}), trial)
    assert "rates" not in study.trials[0].user_attrs


@pytest.mark.parametrize(
    "space",
    [
        {
            "alpha_cutoff": {"low": 1e-6, "high": 0.1, "log": True},
            "gamma_cutoff": {"low": 1e-4, "high": 0.5, "log": True},
        },
        {
            "alpha_cutoff": {"low": 1e-6, "high": 0.5, "log": True},
            "gamma": {"low": 1e-3, "high": 1.0, "log": True},
        },
        {
            "alpha": {"low": 1e-6, "high": 0.5, "log": True},
            "gamma_cutoff": {"low": 1e-4, "high": 0.5, "log": True},
        },
    ],
)
def test_constant_alpha_stays_below_gamma_in_cutoff_terms(space: dict) -> None:
    spec = _spec(
        optimizer="filter",
        search_space={**space, "alpha_schedule": "constant"},
        sampler={"name": "random", "seed": 2},
    )
    for _, config in _ask(spec, 40):
        assert config.optimizer.alpha <= config.optimizer.gamma


def test_constant_alpha_cutoff_above_every_gamma_is_infeasible() -> None:
    spec = _spec(
        optimizer="filter",
        search_space={
            "alpha_cutoff": {"low": 1e-3, "high": 0.1, "log": True},
            "gamma_cutoff": {"low": 1e-4, "high": 0.5, "log": True},
            "alpha_schedule": "constant",
        },
    )
    with pytest.raises(InfeasibleParams, match="alpha > gamma"):
        build_train_config(spec, FixedTrial({"gamma_cutoff": 2e-4}))


# -- alpha <= gamma only where swapping the stages is a symmetry ----------------------------


def test_scheduled_alpha_above_gamma_is_a_valid_trial() -> None:
    space = {
        "alpha": {"low": 1e-2, "high": 0.5, "log": True},
        "gamma": {"low": 1e-3, "high": 1.0, "log": True},
    }
    spec = _spec(optimizer="filter", search_space=space)  # alpha: linear-epoch (default)
    config = build_train_config(spec, FixedTrial({"gamma": 2e-3, "alpha": 0.1}))
    assert (config.optimizer.alpha, config.optimizer.gamma) == (0.1, 2e-3)
    assert not order_is_symmetric(config.optimizer)


def test_the_pruning_follows_the_sampled_alpha_schedule() -> None:
    space = {
        "alpha": {"low": 1e-2, "high": 0.5, "log": True},
        "gamma": {"low": 1e-3, "high": 1.0, "log": True},
        "alpha_schedule": {"choices": ["constant", "linear-epoch"]},
    }
    spec = _spec(optimizer="filter", search_space=space)
    scheduled = FixedTrial({"alpha_schedule": "linear-epoch", "gamma": 2e-3, "alpha": 0.1})
    assert build_train_config(spec, scheduled).optimizer.alpha == 0.1
    with pytest.raises(InfeasibleParams, match="alpha > gamma"):
        build_train_config(spec, FixedTrial({"alpha_schedule": "constant", "gamma": 2e-3}))


def test_scheduled_alpha_samples_both_rates_over_their_whole_ranges() -> None:
    space = {
        "alpha": {"low": 1e-3, "high": 0.5, "log": True},
        "gamma": {"low": 1e-3, "high": 0.5, "log": True},
    }
    spec = _spec(optimizer="filter", search_space=space, sampler={"name": "random", "seed": 0})
    pairs = [(c.optimizer.alpha, c.optimizer.gamma) for _, c in _ask(spec, 30)]
    assert any(alpha > gamma for alpha, gamma in pairs)


# -- schedules, decoupled weight decay, eval_protocol ---------------------------------------

SCHEDULES = {
    "bop": ("gamma", "threshold", "real_lr"),
    "bop2": ("gamma", "sigma", "threshold", "real_lr"),
    "filter": ("alpha", "real_lr"),
    "latent-adam": ("lr", "real_lr"),
    "latent-sgd": ("lr", "real_lr"),
}


@pytest.mark.parametrize("family", sorted(SCHEDULES))
def test_every_schedule_of_the_family_reaches_the_optimizer_config(family: str) -> None:
    kinds = [
        {"kind": "staircase", "factor": 0.5, "every_epochs": 3},
        {"kind": "polynomial", "power": 2.0, "end_value": 1e-6},
        {"kind": "cosine", "end_value": 1e-5},
        {"kind": "linear-epoch"},
    ]
    space = {f"{name}_schedule": kinds[i % len(kinds)] for i, name in enumerate(SCHEDULES[family])}
    optimizer = build_train_config(_spec(optimizer=family, search_space=space), FixedTrial({}))
    for name, raw in space.items():
        assert getattr(optimizer.optimizer, name) == Schedule(**raw), name


def test_tau_schedule_is_the_threshold_schedule() -> None:
    spec = _spec(search_space={"tau_schedule": {"kind": "linear", "end_value": 1e-8}})
    config = build_train_config(spec, FixedTrial({}))
    assert config.optimizer.threshold_schedule == Schedule(kind="linear", end_value=1e-8)


def test_decoupled_weight_decay_reaches_latent_sgd() -> None:
    spec = _spec(
        optimizer="latent-sgd",
        search_space={"decoupled_weight_decay": {"choices": [True, False]}, "weight_decay": 1e-3},
    )
    for flag in (True, False):
        config = build_train_config(spec, FixedTrial({"decoupled_weight_decay": flag}))
        assert config.optimizer.decoupled_weight_decay is flag
    fixed = _spec(optimizer="latent-sgd", search_space={"decoupled_weight_decay": True})
    assert build_train_config(fixed, FixedTrial({})).optimizer.decoupled_weight_decay is True


@pytest.mark.parametrize("protocol", ["holdout", "test"])
def test_eval_protocol_reaches_the_train_config(protocol: str) -> None:
    spec = _spec(eval_protocol=protocol, search_space={"gamma": 1e-3})
    assert build_train_config(spec, FixedTrial({})).eval_protocol == protocol
    assert _spec(search_space={"gamma": 1e-3}).eval_protocol == "holdout"


# -- the filter view stored per trial --------------------------------------------------------


@pytest.mark.parametrize(("protocol", "cap", "batch"), [("holdout", 300, 50), ("test", 300, 64)])
def test_steps_per_epoch_is_what_the_trainer_steps(protocol: str, cap: int, batch: int) -> None:
    from bnn_core.data import load_dataset
    from bnn_core.train import train

    spec = _spec(
        eval_protocol=protocol,
        search_space={"gamma": 1e-3},
        max_train_samples=cap,
        batch_size=batch,
        epochs=1,
    )
    config = build_train_config(spec, FixedTrial({}))
    seen: list[int] = []
    train(config, on_setup=lambda model, pair: seen.append(pair.steps_per_epoch))
    images = len(load_dataset("digits").y_train)
    assert steps_per_epoch(config, images) == seen[0]


@pytest.mark.parametrize("family", ["bop", "bop2", "filter", "latent-sgd", "latent-adam"])
def test_filter_attr_is_the_json_filter_summary(family: str) -> None:
    space = {"weight_decay": 1e-4} if family == "latent-sgd" else {"real_lr": 0.01}
    config = build_train_config(_spec(optimizer=family, search_space=space), FixedTrial({}))
    record = filter_attr(config, 1000)
    if family == "latent-adam":
        assert record is None
        return
    assert record == filter_summary(config.optimizer, steps_per_epoch(config, 1000), epochs=10)
    assert record["family"] == family and record["steps_per_epoch"] == 9
    assert len(json.dumps(record)) < 4096
