"""The spec's ``latent_lr_scaling``: a string parameter of the latent families only."""

from __future__ import annotations

import pytest

from service.spec import FAMILY_PARAMS, STRING_PARAMS, SpecError, StudySpec, parse_spec


def _parse(family: str, param: object) -> StudySpec:
    return parse_spec(
        {"name": "xavier", "optimizer": family, "search_space": {"latent_lr_scaling": param}}
    )


@pytest.mark.parametrize("family", ["latent-adam", "latent-sgd"])
@pytest.mark.parametrize("param", ["xavier", "none", {"choices": ["none", "xavier"]}])
def test_latent_families_accept_latent_lr_scaling(family: str, param: object) -> None:
    spec = _parse(family, param)
    assert "latent_lr_scaling" in FAMILY_PARAMS[family]
    assert "latent_lr_scaling" in spec.space
    assert StudySpec.model_validate(spec.model_dump(mode="json")) == spec


def test_allowed_values() -> None:
    assert STRING_PARAMS["latent_lr_scaling"] == ("none", "xavier")


@pytest.mark.parametrize(
    ("family", "param", "field", "needle"),
    [
        ("bop", "xavier", "search_space.latent_lr_scaling", "not a parameter of optimizer 'bop'"),
        ("bop2", "none", "search_space.latent_lr_scaling", "not a parameter"),
        ("filter", {"choices": ["xavier"]}, "search_space.latent_lr_scaling", "not a parameter"),
        ("latent-adam", "glorot", "search_space.latent_lr_scaling", "none, xavier"),
        ("latent-sgd", 1.0, "search_space.latent_lr_scaling", "none, xavier"),
        ("latent-adam", True, "search_space.latent_lr_scaling", "none, xavier"),
        ("latent-adam", {"low": 0, "high": 1}, "search_space.latent_lr_scaling", "a range"),
        (
            "latent-sgd",
            {"choices": ["xavier", "he"]},
            "search_space.latent_lr_scaling.choices.1",
            "'he'",
        ),
    ],
)
def test_latent_lr_scaling_is_rejected_elsewhere_and_when_unknown(
    family: str, param: object, field: str, needle: str
) -> None:
    with pytest.raises(SpecError) as err:
        _parse(family, param)
    assert err.value.errors[0]["field"] == field
    assert needle in err.value.errors[0]["message"]
