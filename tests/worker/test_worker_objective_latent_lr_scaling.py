"""``latent_lr_scaling`` of a spec reaches ``OptimizerConfig`` as a string."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import FixedTrial

from bnn_core.config import LATENT_LR_SCALINGS
from service.spec import STRING_PARAMS, parse_spec
from worker.objective import build_optimizer_config, build_train_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spec(family: str, param: object):
    return parse_spec(
        {
            "name": "t",
            "optimizer": family,
            "search_space": {"lr": 1e-3, "latent_lr_scaling": param},
        }
    )


def test_spec_and_bnn_core_agree_on_the_values() -> None:
    assert STRING_PARAMS["latent_lr_scaling"] == LATENT_LR_SCALINGS


@pytest.mark.parametrize("family", ["latent-adam", "latent-sgd"])
def test_fixed_latent_lr_scaling_reaches_the_optimizer_config(family: str) -> None:
    study = optuna.create_study(direction="maximize")
    optimizer = build_train_config(_spec(family, "xavier"), study.ask()).optimizer
    assert optimizer.latent_lr_scaling == "xavier"
    assert study.trials[0].user_attrs["fixed_params"]["latent_lr_scaling"] == "xavier"


@pytest.mark.parametrize("value", ["none", "xavier"])
def test_sampled_latent_lr_scaling_reaches_the_optimizer_config(value: str) -> None:
    spec = _spec("latent-adam", {"choices": ["none", "xavier"]})
    trial = FixedTrial({"latent_lr_scaling": value})
    assert build_train_config(spec, trial).optimizer.latent_lr_scaling == value


def test_build_optimizer_config_keeps_it_a_string_and_defaults_to_none() -> None:
    config = build_optimizer_config("latent-sgd", {"lr": 1e-2, "latent_lr_scaling": "xavier"})
    assert config.latent_lr_scaling == "xavier" and config.lr == 1e-2
    assert build_optimizer_config("latent-sgd", {"lr": 1e-2}).latent_lr_scaling == "none"
