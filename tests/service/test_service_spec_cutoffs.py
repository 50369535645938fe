"""Spec rules of the cutoff parameters: one rate or its cutoff, in (0, 0.5], log ranges, the
constant-alpha order in cutoff terms, and the service's closed form equal to bnn_core's."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnn_core import filters
from service.spec import SpecError, parse_spec
from service.spec import cutoffs as spec_cutoffs
from service.spec.params import FAMILY_PARAMS


def _spec(optimizer: str, space: dict, **extra: object):
    return parse_spec({"name": "t", "optimizer": optimizer, "search_space": space, **extra})


def _errors(optimizer: str, space: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        _spec(optimizer, space)
    return {e["field"]: e["message"] for e in info.value.errors}


def test_the_service_closed_form_agrees_with_bnn_core_over_a_grid() -> None:
    for cutoff in np.concatenate([np.logspace(-9, math.log10(0.5), 400), [0.25, 0.5]]):
        expected = filters.cutoff_to_rate(float(cutoff))
        assert spec_cutoffs.cutoff_to_rate(float(cutoff)) == pytest.approx(expected, rel=1e-12)
    for rate in np.concatenate([np.logspace(-9, 0, 400), [filters.MAX_RATE_WITH_CUTOFF]]):
        rate = float(rate)
        mine = spec_cutoffs.rate_to_cutoff(rate)
        if rate > filters.MAX_RATE_WITH_CUTOFF:
            assert mine is None
            with pytest.raises(ValueError, match="no -3 dB cutoff"):
                filters.rate_to_cutoff(rate)
        else:
            assert mine == pytest.approx(filters.rate_to_cutoff(rate), rel=1e-12)
    assert spec_cutoffs.MAX_RATE_WITH_CUTOFF == filters.MAX_RATE_WITH_CUTOFF
    assert spec_cutoffs.MAX_CUTOFF == pytest.approx(
        filters.rate_to_cutoff(filters.MAX_RATE_WITH_CUTOFF), rel=1e-12
    )


@pytest.mark.parametrize(
    ("optimizer", "rate"),
    [("bop", "gamma"), ("bop2", "gamma"), ("bop2", "sigma"), ("filter", "alpha"),
     ("filter", "gamma")],
)  # fmt: skip
def test_every_ema_rate_may_be_given_as_its_cutoff(optimizer: str, rate: str) -> None:
    name = f"{rate}_cutoff"
    assert name in FAMILY_PARAMS[optimizer]
    for value in (1e-4, {"low": 1e-6, "high": 1e-2, "log": True}, {"choices": [1e-3, 0.5]}):
        assert _spec(optimizer, {name: value}).space[name] is not None


def test_both_the_rate_and_its_cutoff_is_a_422_naming_both() -> None:
    errors = _errors("bop", {"gamma": 1e-3, "gamma_cutoff": 1e-4})
    assert list(errors) == ["search_space.gamma_cutoff"]
    assert "gamma" in errors["search_space.gamma_cutoff"].replace("gamma_cutoff", "")
    assert "not both" in errors["search_space.gamma_cutoff"]


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (0.6, "search_space.sigma_cutoff"),
        (0.0, "search_space.sigma_cutoff"),
        (-1e-3, "search_space.sigma_cutoff"),
        ({"low": 1e-4, "high": 0.7, "log": True}, "search_space.sigma_cutoff.high"),
        ({"choices": [1e-3, 2.0]}, "search_space.sigma_cutoff.choices.1"),
    ],
)
def test_a_cutoff_outside_0_to_nyquist_is_refused(value: object, field: str) -> None:
    errors = _errors("bop2", {"sigma_cutoff": value})
    assert field in errors, errors
    assert "0.5]" in errors[field] and "cycles per step" in errors[field]


def test_the_nyquist_cutoff_itself_is_allowed() -> None:
    assert _spec("bop", {"gamma_cutoff": 0.5}).space["gamma_cutoff"] == 0.5


def test_cutoffs_are_not_parameters_of_the_latent_families() -> None:
    errors = _errors("latent-sgd", {"gamma_cutoff": 1e-3})
    assert "not a parameter" in errors["search_space.gamma_cutoff"]


def test_constant_alpha_cutoff_above_every_gamma_is_refused_in_rate_terms() -> None:
    # alpha cutoff 0.1 is rate 0.456..., above gamma 0.1 (both constant stages)
    space = {"alpha_cutoff": 0.1, "gamma": 0.1, "alpha_schedule": "constant"}
    errors = _errors("filter", space)
    assert "alpha <= gamma" in errors["search_space.alpha_cutoff"]
    # the same pair with the default (scheduled) alpha is a valid, different filter
    assert _spec("filter", {"alpha_cutoff": 0.1, "gamma": 0.1}).space["alpha_cutoff"] == 0.1
    # and overlapping cutoff ranges are fine: the worker clips alpha's
    overlapping = {
        "alpha_cutoff": {"low": 1e-6, "high": 0.1, "log": True},
        "gamma_cutoff": {"low": 1e-4, "high": 0.5, "log": True},
        "alpha_schedule": "constant",
    }
    assert _spec("filter", overlapping).space["alpha_cutoff"].high == 0.1


def test_a_cutoff_range_is_log_scaled_unless_it_says_otherwise() -> None:
    assert _spec("bop", {"gamma_cutoff": {"low": 1e-6, "high": 1e-2}}).space["gamma_cutoff"].log
    linear = {"gamma_cutoff": {"low": 1e-3, "high": 1e-2, "log": False}}
    assert not _spec("bop", linear).space["gamma_cutoff"].log
    stepped = {"gamma_cutoff": {"low": 1e-3, "high": 1e-2, "step": 1e-3}}
    assert not _spec("bop", stepped).space["gamma_cutoff"].log
    assert not _spec("bop", {"gamma": {"low": 1e-3, "high": 1e-2}}).space["gamma"].log
