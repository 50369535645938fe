"""Every schedule the optimizer configuration supports is expressible in the spec, per family;
latent-sgd's decoupled weight decay; eval_protocol."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from bnn_core.config import SCHEDULED_HYPERPARAMETERS, OptimizerConfig, Schedule
from bnn_core.optim import build_optimizer
from service.spec import SpecError, parse_spec
from service.spec.params import BOOL_PARAMS, FAMILY_PARAMS, SCHEDULE_PARAMS
from service.vocabulary import OPTIMIZER_FAMILIES, SCHEDULE_KINDS


def _spec(optimizer: str, space: dict | None = None, **extra: object):
    return parse_spec({"name": "t", "optimizer": optimizer, "search_space": space, **extra})


def test_schedule_params_are_bnn_cores_scheduled_hyperparameters() -> None:
    assert {f"{name}_schedule" for name in SCHEDULED_HYPERPARAMETERS} == SCHEDULE_PARAMS
    fields = {f.name for f in dataclasses.fields(OptimizerConfig)}
    assert SCHEDULE_PARAMS <= fields


@pytest.mark.parametrize("family", OPTIMIZER_FAMILIES)
def test_each_family_offers_exactly_the_schedules_its_optimizer_applies(family: str) -> None:
    # The optimizer pair of bnn_core says which hyperparameters follow a schedule; constant
    # ones (the filter's gamma) have no schedule to offer.
    cosine = Schedule(kind="cosine")
    config = OptimizerConfig(name=family, **dict.fromkeys(SCHEDULE_PARAMS, cosine))
    pair = build_optimizer(nn.Linear(2, 2), config, 1, 1)
    applied = {f"{item.name}_schedule" for item in pair.scheduled if item.schedule == cosine}
    offered = {name for name in FAMILY_PARAMS[family] if name in SCHEDULE_PARAMS}
    assert offered == applied


@pytest.mark.parametrize("family", OPTIMIZER_FAMILIES)
def test_every_schedule_kind_with_its_options_is_accepted(family: str) -> None:
    names = [name for name in FAMILY_PARAMS[family] if name in SCHEDULE_PARAMS]
    for kind in SCHEDULE_KINDS:
        schedule = {"kind": kind, "factor": 0.5, "every_epochs": 7, "end_value": 1e-6}
        if kind == "polynomial":
            schedule["power"] = 2.0
        spec = _spec(family, dict.fromkeys(names, schedule))
        for name in names:
            assert spec.space[name].kind == kind and spec.space[name].every_epochs == 7
        choices = _spec(family, {name: {"choices": ["constant", kind]} for name in names})
        assert all(choices.space[name].choices == ["constant", kind] for name in names)


def test_a_schedule_of_another_family_is_refused() -> None:
    with pytest.raises(SpecError) as info:
        _spec("latent-adam", {"gamma_schedule": "cosine"})
    assert info.value.errors[0]["field"] == "search_space.gamma_schedule"
    with pytest.raises(SpecError) as info:
        _spec("filter", {"gamma_schedule": "cosine"})  # the filter's gamma is constant
    assert info.value.errors[0]["field"] == "search_space.gamma_schedule"


def test_bad_schedule_options_name_the_field() -> None:
    with pytest.raises(SpecError) as info:
        _spec("bop", {"threshold_schedule": {"kind": "polynomial", "power": -1}})
    assert info.value.errors[0]["field"].startswith("search_space.threshold_schedule")
    with pytest.raises(SpecError) as info:
        _spec("latent-adam", {"lr_schedule": {"kind": "staircase", "every_epochs": 0}})
    assert info.value.errors[0]["field"].startswith("search_space.lr_schedule")


def test_decoupled_weight_decay_is_a_latent_sgd_bool() -> None:
    assert "decoupled_weight_decay" in BOOL_PARAMS
    assert _spec("latent-sgd", {"decoupled_weight_decay": True}).space["decoupled_weight_decay"]
    both = _spec("latent-sgd", {"decoupled_weight_decay": {"choices": [True, False]}})
    assert both.space["decoupled_weight_decay"].choices == [True, False]
    for bad in (1, "yes", {"low": 0, "high": 1}):
        with pytest.raises(SpecError) as info:
            _spec("latent-sgd", {"decoupled_weight_decay": bad})
        assert info.value.errors[0]["field"] == "search_space.decoupled_weight_decay"
    with pytest.raises(SpecError) as info:
        _spec("latent-adam", {"decoupled_weight_decay": True})
    assert "not a parameter" in info.value.errors[0]["message"]


def test_eval_protocol_defaults_to_holdout_and_test_is_documented_as_leakage() -> None:
    assert _spec("bop").eval_protocol == "holdout"
    assert _spec("bop", eval_protocol="test").eval_protocol == "test"
    with pytest.raises(SpecError) as info:
        _spec("bop", eval_protocol="train")
    assert info.value.errors[0]["field"] == "eval_protocol"
    from service.spec import StudySpec

    schema = StudySpec.model_json_schema()["properties"]["eval_protocol"]
    assert schema["enum"] == ["holdout", "test"] and schema["default"] == "holdout"
    assert "REPRODUCTION MODE" in schema["description"] and "leakage" in schema["description"]
