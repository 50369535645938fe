"""A stacked trial honours ``eval_protocol``: under "test" it trains on the whole training set
and its "val" metrics are the test set's, exactly as the solo trainer measures them."""

from __future__ import annotations

import dataclasses

import pytest

from bnn_core.config import OptimizerConfig, TrainConfig
from bnn_core.data import load_dataset
from bnn_core.stacked import train_stacked
from bnn_core.train import evaluation_split, train


def _config(seed: int, eval_protocol: str) -> TrainConfig:
    return TrainConfig(
        model="mlp",
        dataset="digits",
        epochs=1,
        batch_size=50,
        seed=seed,
        max_train_samples=300,
        eval_protocol=eval_protocol,  # type: ignore[arg-type]
        optimizer=OptimizerConfig(name="bop", gamma=1e-3, threshold=1e-6),
    )


@pytest.mark.parametrize("eval_protocol", ["test", "holdout"])
def test_stacked_run_evaluates_where_the_solo_run_does(eval_protocol: str) -> None:
    configs = [_config(0, eval_protocol), _config(1, eval_protocol)]
    options = {"hidden": 32}
    stacked = train_stacked(configs, model_options=options)
    data = load_dataset("digits")
    for config, result in zip(configs, stacked, strict=True):
        solo = train(config, model_options=options)
        a, b = result.epochs[0], solo.epochs[0]
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4, abs=1e-5)
        # The same images scored: the accuracy is a multiple of 1/len(val) and equal.
        _, _, _, val_y = evaluation_split(data, config)
        assert round(a.val_accuracy * len(val_y)) == round(b.val_accuracy * len(val_y))
        assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=1e-9)
        if eval_protocol == "test":
            assert len(val_y) == len(data.y_test)
            assert result.test_accuracy == pytest.approx(solo.test_accuracy, abs=1e-9)


def test_test_protocol_scores_the_test_set_not_a_holdout() -> None:
    # A trial that trained on all images but is scored on a held-out part of them would score
    # the images it trained on; under "test" both trainers score the test set.
    config = _config(0, "test")
    holdout = dataclasses.replace(config, eval_protocol="holdout")
    data = load_dataset("digits")
    assert len(evaluation_split(data, config)[3]) == len(data.y_test)
    assert len(evaluation_split(data, holdout)[3]) != len(data.y_test)
