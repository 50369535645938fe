"""The paper specs of ``examples/paper/`` run the protocols ``bnn_core.recipes`` owns.

Each spec is mapped to its trials' ``TrainConfig`` by the worker (``build_train_config``, the
same code a worker runs) and compared, field by field, with the recipe's ``TrainConfig``; a
sweep is compared at the recipe's own point. The searched parameters of the cutoff study are
checked to contain the recipe's rates. Each file states its published number in its header.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from optuna.trial import FixedTrial

from bnn_core.config import TrainConfig
from bnn_core.data import random_cifar10
from bnn_core.filters import rate_to_cutoff
from bnn_core.recipes import RECIPES
from service.spec import load_spec, spec_examples
from worker.objective import build_train_config

PAPER = Path(__file__).resolve().parents[1] / "examples" / "paper"

# file -> [(recipe, the trial's sampled params at the recipe's point)]
PAPER_SPECS: dict[str, list[tuple[str, dict[str, object]]]] = {
    "bop-5.1-gamma.yaml": [("bop-cifar10-sweep-centre", {"gamma": 1e-3})],
    "bop-5.1-tau.yaml": [("bop-cifar10-sweep-centre", {"threshold": 1e-6})],
    "bop-5.2.yaml": [("bop-cifar10", {})],
    "latent-adam-baseline.yaml": [("latent-adam-cifar10", {})],
    "bop2-cifar10.yaml": [
        ("bop2-cifar10", {"bias_correction": False}),
        ("bop2-unbiased-cifar10", {"bias_correction": True}),
    ],
}
# The training fields a protocol consists of (the rest is where and how fast it runs).
PROTOCOL_FIELDS = (
    "model", "dataset", "epochs", "batch_size", "optimizer", "seed", "val_fraction",
    "eval_protocol", "max_train_samples", "precision",
)  # fmt: skip


def _protocol(config: TrainConfig) -> dict[str, object]:
    fields = {name: getattr(config, name) for name in PROTOCOL_FIELDS}
    dataset_default = random_cifar10(4).augment_by_default if config.dataset == "cifar10" else None
    fields["augment"] = dataset_default if config.augment is None else config.augment
    return fields


def test_every_paper_spec_is_checked_here() -> None:
    assert {path.name for path in PAPER.glob("*.yaml")} == {*PAPER_SPECS, "filter-cutoffs.yaml"}


@pytest.mark.parametrize("name", sorted(PAPER_SPECS))
def test_a_paper_spec_trains_its_recipe(name: str) -> None:
    spec = load_spec(PAPER / name)
    assert spec.n_trials == len(PAPER_SPECS[name]) or name.startswith("bop-5.1")
    for recipe_name, params in PAPER_SPECS[name]:
        recipe = RECIPES[recipe_name].build()
        config = build_train_config(spec, FixedTrial(params))
        assert _protocol(config) == _protocol(recipe), recipe_name


@pytest.mark.parametrize("name", sorted(PAPER_SPECS))
def test_each_paper_spec_states_its_published_number(name: str) -> None:
    header = (PAPER / name).read_text(encoding="utf-8").split("\nname:")[0]
    for recipe_name, _ in PAPER_SPECS[name]:
        target = RECIPES[recipe_name].target
        if target is None:
            assert "no number" in header
        else:
            assert f"{target * 100:.1f} %" in header
        assert f"`{recipe_name}`" in header


def test_the_sweeps_cover_the_papers_values() -> None:
    gamma = load_spec(PAPER / "bop-5.1-gamma.yaml")
    assert gamma.space["gamma"].choices == [1e-2, 1e-3, 1e-4]
    assert gamma.space["threshold"] == 1e-6
    tau = load_spec(PAPER / "bop-5.1-tau.yaml")
    assert tau.space["threshold"].choices == [0.0, 1e-6, 1e-5]
    assert tau.space["gamma"] == 1e-3


def test_the_cutoff_study_is_the_filter_recipe_searched_over_its_cutoffs() -> None:
    spec = load_spec(PAPER / "filter-cutoffs.yaml")
    recipe = RECIPES["filter-cifar10"].build()
    assert spec.eval_protocol == "holdout"  # a real search never tunes on the test set
    alpha, gamma = spec.space["alpha_cutoff"], spec.space["gamma_cutoff"]
    assert alpha.log and gamma.log
    assert alpha.low <= rate_to_cutoff(recipe.optimizer.alpha) <= alpha.high
    assert gamma.low <= rate_to_cutoff(recipe.optimizer.gamma) <= gamma.high
    # at the recipe's own cutoffs, the study trains the recipe (on its held-out split)
    params = {
        "alpha_cutoff": rate_to_cutoff(recipe.optimizer.alpha),
        "gamma_cutoff": rate_to_cutoff(recipe.optimizer.gamma),
    }
    config = build_train_config(spec, FixedTrial(params))
    expected = _protocol(dataclasses.replace(recipe, eval_protocol="holdout"))
    actual = _protocol(config)
    for rate in ("alpha", "gamma"):
        assert getattr(config.optimizer, rate) == pytest.approx(getattr(recipe.optimizer, rate))
    same_rates = dataclasses.replace(
        config.optimizer, alpha=recipe.optimizer.alpha, gamma=recipe.optimizer.gamma
    )
    assert {**actual, "optimizer": same_rates} == expected


def test_paper_specs_are_not_the_openapi_examples() -> None:
    # The OpenAPI shows the short top-level examples; the paper protocols (500 CIFAR-10 epochs)
    # live one folder down and are read from there by `bnn-tune create`.
    names = {data["name"] for data in spec_examples().values()}
    assert not any(name.startswith("paper-") for name in names)


def test_the_top_level_bop_example_is_the_section_5_1_protocol() -> None:
    spec = load_spec(PAPER.parent / "bop-binarynet-cifar10.yaml")
    centre = RECIPES["bop-cifar10-sweep-centre"].build()
    assert (spec.model, spec.dataset, spec.epochs, spec.batch_size) == (
        centre.model, centre.dataset, centre.epochs, centre.batch_size,
    )  # fmt: skip
    assert set(spec.space) == {"gamma", "threshold", "real_lr"}  # constant schedules, as 5.1
    assert spec.space["real_lr"] == centre.optimizer.real_lr
    assert spec.space["gamma"].low == 1e-4 and spec.space["gamma"].high == 1e-2
    assert spec.space["threshold"].include_zero and spec.space["threshold"].high == 1e-5


@pytest.mark.parametrize("name", ["bop-5.1-gamma.yaml", "bop-5.1-tau.yaml", "bop2-cifar10.yaml"])
def test_grid_specs_visit_each_point_once(name: str) -> None:
    from worker.objective import grid_search_space

    spec = load_spec(PAPER / name)
    assert spec.sampler.name == "grid"
    (values,) = grid_search_space(spec).values()
    assert spec.n_trials == len(values)
