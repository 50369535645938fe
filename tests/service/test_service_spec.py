"""StudySpec, load_spec and Settings without a server."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import yaml

from service.settings import Settings
from service.spec import (
    DEFAULT_SEARCH_SPACES,
    FAMILY_PARAMS,
    SPEC_EXAMPLES,
    ChoiceSpec,
    RangeSpec,
    ScheduleSpec,
    SpecError,
    StudySpec,
    load_spec,
    parse_spec,
    spec_examples,
    stored_spec,
)
from service.vocabulary import OPTIMIZER_FAMILIES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("family", list(SPEC_EXAMPLES))
def test_examples_are_valid_and_round_trip(family: str) -> None:
    spec = parse_spec(SPEC_EXAMPLES[family])
    assert spec.optimizer == family
    assert set(spec.space) <= set(FAMILY_PARAMS[family])
    assert StudySpec.model_validate(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize("family", list(DEFAULT_SEARCH_SPACES))
def test_default_search_space_per_family(family: str) -> None:
    spec = parse_spec({"name": "defaults", "optimizer": family})
    assert set(spec.space) == set(DEFAULT_SEARCH_SPACES[family])
    assert all(isinstance(p, RangeSpec | ChoiceSpec) for p in spec.space.values())


def test_tau_alias_and_include_zero() -> None:
    spec = parse_spec(
        {
            "name": "tau",
            "optimizer": "bop",
            "search_space": {
                "tau": {"low": 1e-10, "high": 1e-5, "log": True, "include_zero": True}
            },
        }
    )
    assert "tau" not in spec.space and spec.space["threshold"].include_zero
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "tau", "optimizer": "bop", "search_space": {"tau": 0, "threshold": 0}})
    assert err.value.errors[0]["field"] == "search_space.tau"


def test_schedules_normalise_to_objects() -> None:
    spec = parse_spec(
        {
            "name": "sched",
            "optimizer": "bop",
            "search_space": {"gamma_schedule": "cosine", "gamma": 1e-4},
        }
    )
    assert spec.space["gamma_schedule"] == ScheduleSpec(kind="cosine")
    staircase = {"kind": "staircase", "factor": 0.1, "every_epochs": 30}
    spec = parse_spec(
        {"name": "sched", "optimizer": "bop", "search_space": {"gamma_schedule": staircase}}
    )
    assert spec.space["gamma_schedule"].every_epochs == 30


def test_bop2_sigma_schedule_and_bias_correction() -> None:
    linear = {"kind": "linear", "end_value": 1e-2}
    spec = parse_spec(
        {
            "name": "bop2-opts",
            "optimizer": "bop2",
            "search_space": {"sigma_schedule": linear, "bias_correction": True, "sigma": 1e-7},
        }
    )
    assert spec.space["sigma_schedule"] == ScheduleSpec(kind="linear", end_value=1e-2)
    assert spec.space["bias_correction"] is True
    assert StudySpec.model_validate(spec.model_dump(mode="json")) == spec
    spec = parse_spec(
        {
            "name": "bop2-opts",
            "optimizer": "bop2",
            "search_space": {
                "sigma_schedule": {"choices": ["constant", "linear"]},
                "bias_correction": {"choices": [True, False]},
            },
        }
    )
    assert spec.space["bias_correction"] == ChoiceSpec(choices=[True, False])
    assert parse_spec(
        {"name": "k", "optimizer": "bop2", "search_space": {"sigma_schedule": "cosine"}}
    ).space["sigma_schedule"] == ScheduleSpec(kind="cosine")


@pytest.mark.parametrize(
    ("family", "space", "field"),
    [
        ("bop", {"bias_correction": True}, "search_space.bias_correction"),
        ("bop", {"sigma_schedule": "cosine"}, "search_space.sigma_schedule"),
        ("filter", {"bias_correction": False}, "search_space.bias_correction"),
        ("latent-adam", {"sigma_schedule": "linear"}, "search_space.sigma_schedule"),
        ("bop2", {"bias_correction": 1}, "search_space.bias_correction"),
        ("bop2", {"bias_correction": "yes"}, "search_space.bias_correction"),
        ("bop2", {"bias_correction": {"low": 0, "high": 1}}, "search_space.bias_correction"),
        ("bop2", {"bias_correction": {"choices": [True, 0]}}, "search_space.bias_correction"),
        ("bop2", {"sigma_schedule": "weekly"}, "search_space.sigma_schedule"),
        ("bop2", {"gamma": True}, "search_space.gamma"),
    ],
)
def test_bop2_options_are_rejected_elsewhere_and_when_malformed(
    family: str, space: dict, field: str
) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "bad", "optimizer": family, "search_space": space})
    assert err.value.errors[0]["field"].startswith(field)


def test_objectives_and_directions() -> None:
    base = {"name": "mo", "optimizer": "bop"}
    assert parse_spec(base).directions == ["maximize"]
    spec = parse_spec({**base, "objectives": ["val_accuracy", "time"]})
    assert spec.directions == ["maximize", "minimize"] and spec.is_multi_objective
    with pytest.raises(SpecError) as err:
        parse_spec({**base, "objectives": ["flip_ratio"]})
    assert err.value.errors[0]["field"] == "objectives"


def test_filter_overlapping_ranges_are_accepted() -> None:
    spec = parse_spec(
        {
            "name": "overlap",
            "optimizer": "filter",
            "search_space": {
                "alpha": {"low": 1e-3, "high": 0.5},
                "gamma": {"low": 0.1, "high": 1},
            },
        }
    )
    assert spec.space["alpha"].high > spec.space["gamma"].low  # the worker clips alpha to <= gamma


def test_grid_sampler_needs_discrete_space() -> None:
    base = {"name": "grid", "optimizer": "bop", "sampler": {"name": "grid"}}
    with pytest.raises(SpecError):
        parse_spec({**base, "search_space": {"gamma": {"low": 1e-4, "high": 1e-2}}})
    grid = {
        "gamma": {"choices": [1e-4, 1e-3]},
        "real_lr": {"low": 0.001, "high": 0.01, "step": 0.001},
    }
    assert parse_spec({**base, "search_space": grid}).sampler.name == "grid"


def test_limits_come_from_settings() -> None:
    settings = Settings(
        database_url="sqlite://", max_trials=10, max_epochs=5, max_trials_per_gpu=2
    )
    spec = {"name": "limits", "optimizer": "bop", "n_trials": 11, "epochs": 6, "trials_per_gpu": 3}
    with pytest.raises(SpecError) as err:
        parse_spec(spec, settings)
    assert {e["field"] for e in err.value.errors} == {"n_trials", "epochs", "trials_per_gpu"}
    assert parse_spec(spec).n_trials == 11  # without settings: no service limits


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_load_spec_yaml_and_json(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"study{suffix}"
    data = SPEC_EXAMPLES["latent-adam"]
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    assert load_spec(path).name == data["name"]


def test_load_spec_errors_name_fields(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\noptimizer: bop\nsearch_space:\n  gamma: {low: 1, high: 0.1}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert err.value.errors[0]["field"] == "search_space.gamma"
    assert "search_space.gamma: low (1.0) must be < high (0.1)" in str(err.value)
    with pytest.raises(SpecError, match="<file>"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_settings_normalise_database_url(
    given: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BNN_TUNE_DATABASE_URL", given)
    monkeypatch.setenv("BNN_TUNE_API_KEY", "k")
    settings = Settings()
    assert settings.database_url == expected and settings.api_key == "k"
    assert (settings.max_trials, settings.max_epochs, settings.max_retries) == (1000, 1000, 2)
    assert (settings.heartbeat_interval_s, settings.grace_period_s) == (10, 30)


@pytest.mark.parametrize("family", ["latent-adam", "latent-sgd"])
@pytest.mark.parametrize(
    "param",
    [1.0, {"low": 0.5, "high": 2.0}, {"low": 0.1, "high": 10.0, "log": True}, {"choices": [1.0]}],
)
def test_latent_families_accept_latent_weight_clip(family: str, param: object) -> None:
    spec = parse_spec(
        {
            "name": "clip",
            "optimizer": family,
            "search_space": {"lr": 1e-3, "latent_weight_clip": param},
        }
    )
    assert "latent_weight_clip" in spec.space
    assert StudySpec.model_validate(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize(
    ("family", "param", "field"),
    [
        ("bop", 1.0, "search_space.latent_weight_clip"),
        ("bop2", 1.0, "search_space.latent_weight_clip"),
        ("filter", {"choices": [1.0]}, "search_space.latent_weight_clip"),
        ("latent-adam", 0.0, "search_space.latent_weight_clip"),
        ("latent-sgd", -1.0, "search_space.latent_weight_clip"),
        ("latent-sgd", {"low": 0.0, "high": 1.0}, "search_space.latent_weight_clip.low"),
        ("latent-adam", {"choices": [1.0, 0.0]}, "search_space.latent_weight_clip.choices.1"),
        ("latent-adam", True, "search_space.latent_weight_clip"),
    ],
)
def test_latent_weight_clip_is_rejected_elsewhere_and_when_not_positive(
    family: str, param: object, field: str
) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(
            {"name": "bad", "optimizer": family, "search_space": {"latent_weight_clip": param}}
        )
    assert err.value.errors[0]["field"] == field


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "cuda:63"])
def test_device_accepts_what_a_worker_can_take(device: str) -> None:
    assert parse_spec({"name": "dev", "optimizer": "bop", "device": device}).device == device


@pytest.mark.parametrize(
    "device", ["mps", "mps:0", "cuda:64", "cuda:99999999999999999999", "cuda:01", "CPU", "tpu"]
)
def test_device_rejects_what_no_worker_can_take(device: str) -> None:
    """``mps`` used to be accepted though no worker resolves it: the study would never run."""
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "dev", "optimizer": "bop", "device": device})
    assert [e["field"] for e in info.value.errors] == ["device"]


@pytest.mark.parametrize("subdir", ["cifar10", "cifar-10-batches-py", "MNIST.v2", "a"])
def test_data_subdir_is_one_folder_name(subdir: str) -> None:
    spec = parse_spec({"name": "sub", "optimizer": "bop", "data_subdir": subdir})
    assert spec.data_subdir == subdir


@pytest.mark.parametrize(
    "subdir", ["..", ".", "../x", "/abs", "a/b", "a\\b", ".hidden", "", "x" * 65, "a\nb"]
)
def test_data_subdir_rejects_paths(subdir: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "sub", "optimizer": "bop", "data_subdir": subdir})
    assert [e["field"] for e in info.value.errors] == ["data_subdir"]


@pytest.mark.parametrize("field", ["data_dir", "download"])
def test_new_specs_cannot_name_a_data_location(field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "old", "optimizer": "bop", field: "/etc"})
    assert [e["field"] for e in info.value.errors] == [field]


def test_stored_spec_reads_old_specs_with_a_data_location() -> None:
    old = {"name": "old", "optimizer": "bop", "data_dir": "/srv/data", "download": True}
    spec = stored_spec(old)
    assert spec.data_subdir is None and "data_dir" not in spec.model_dump()


def test_spec_examples_are_the_example_files() -> None:
    files = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))}
    assert spec_examples() == files
    first_per_family: dict[str, dict] = {}
    for data in files.values():
        first_per_family.setdefault(data["optimizer"], data)
    assert SPEC_EXAMPLES == first_per_family
    assert set(SPEC_EXAMPLES) == set(OPTIMIZER_FAMILIES)


def test_pyproject_installs_every_example_file() -> None:
    """``pip install .`` puts examples/*.yaml under <prefix>/share/bnn-tune/examples, where
    service.spec.examples looks when the package runs outside a checkout (the API image)."""
    pyproject = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())
    data_files = pyproject["tool"]["setuptools"]["data-files"]
    assert data_files["share/bnn-tune/examples"] == ["examples/*.yaml"]


def test_stored_spec_still_invalid_raises_spec_error_naming_the_field() -> None:
    with pytest.raises(SpecError) as info:
        stored_spec({"name": "old", "optimizer": "bop", "device": "mps", "download": False})
    assert [e["field"] for e in info.value.errors] == ["device"]
