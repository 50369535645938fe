"""service.vocabulary against bnn_core's own lists: adding a name on one side only fails here.

The service cannot import bnn_core (the API image has no torch), so it keeps its own copy of
each list; these tests are what keeps the copies equal.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest

from bnn_core import data, models
from bnn_core.config import (
    EVAL_PROTOCOLS,
    LATENT_LR_SCALINGS,
    SCHEDULE_KINDS,
    ConfigError,
    Schedule,
    TrainConfig,
)
from bnn_core.devices import resolve_device
from bnn_core.optim import REAL_ADAM_EPS
from bnn_core.stacked import BINARY_FAMILIES, LATENT_FAMILIES, STACKABLE_FAMILIES
from service import vocabulary
from service.spec import ScheduleSpec


def test_models_match_bnn_core() -> None:
    assert set(vocabulary.MODEL_NAMES) == set(models.MODEL_NAMES)


def test_datasets_match_bnn_core() -> None:
    assert set(vocabulary.DATASET_NAMES) == set(data.DATASET_NAMES)


def test_schedule_kinds_match_bnn_core() -> None:
    assert set(vocabulary.SCHEDULE_KINDS) == set(SCHEDULE_KINDS)


def test_schedule_spec_has_the_fields_of_bnn_core_schedule() -> None:
    assert set(ScheduleSpec.model_fields) == {f.name for f in dataclasses.fields(Schedule)}
    assert ScheduleSpec().model_dump() == dataclasses.asdict(Schedule())


def test_latent_lr_scalings_match_bnn_core() -> None:
    assert set(vocabulary.LATENT_LR_SCALINGS) == set(LATENT_LR_SCALINGS)


def test_eval_protocols_match_bnn_core() -> None:
    assert vocabulary.EVAL_PROTOCOLS == EVAL_PROTOCOLS


def test_families_match_the_stacked_optimizer() -> None:
    assert set(vocabulary.BINARY_FAMILIES) == set(BINARY_FAMILIES)
    assert set(vocabulary.LATENT_FAMILIES) == set(LATENT_FAMILIES)
    assert set(vocabulary.OPTIMIZER_FAMILIES) == set(STACKABLE_FAMILIES)
    assert set(vocabulary.OPTIMIZER_FAMILIES) == (
        set(vocabulary.BINARY_FAMILIES) | set(vocabulary.LATENT_FAMILIES)
    )


def test_precisions_match_train_config() -> None:
    hints = typing.get_type_hints(TrainConfig)
    assert set(vocabulary.PRECISIONS) == set(typing.get_args(hints["precision"]))


def test_real_adam_eps_matches_bnn_core() -> None:
    assert vocabulary.REAL_ADAM_EPS == REAL_ADAM_EPS


def test_objectives_have_a_direction() -> None:
    assert set(vocabulary.OBJECTIVE_DIRECTIONS) == set(vocabulary.OBJECTIVES)
    assert set(vocabulary.OBJECTIVE_DIRECTIONS.values()) <= {"maximize", "minimize"}


def test_plot_formats_have_a_media_type() -> None:
    assert set(vocabulary.PLOT_MEDIA_TYPES) == set(vocabulary.PLOT_FORMATS)


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_devices_of_the_vocabulary_resolve_on_a_cpu_host(device: str) -> None:
    assert vocabulary.is_device(device)
    resolve_device(device)


@pytest.mark.parametrize("device", ["mps", "xla", "meta", "ipu"])
def test_devices_bnn_core_rejects_are_not_in_the_vocabulary(device: str) -> None:
    with pytest.raises(ConfigError):
        resolve_device(device)
    assert not vocabulary.is_device(device)


@pytest.mark.parametrize(
    ("device", "ok"),
    [("cuda", True), ("cuda:0", True), ("cuda:63", True), ("cuda:64", False), ("cuda:007", False)],
)
def test_cuda_indices_are_bounded(device: str, ok: bool) -> None:
    assert vocabulary.is_device(device) is ok
