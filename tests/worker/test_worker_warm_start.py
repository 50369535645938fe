"""Warm start with the real worker on digits (PostgreSQL): a TPE study warm-started from a
finished study reaches that study's best sooner than the same study started cold, and the
source's trials use none of its budget."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState
from worker_helpers import new_study, study_row, study_trials, worker_settings

from worker.loop import run_study
from worker.warm_start import fitting_trials

pytestmark = pytest.mark.postgres

SOURCE_TRIALS, NEW_TRIALS, SEEDS, K = 12, 6, (1, 2, 3, 4), 3
TOLERANCE = 0.02  # "reached the source's best": within 2 points of accuracy
# two parameters with a bad corner (a threshold the momentum never crosses: no flips, chance
# accuracy), 1000 images (100 to validate): enough signal for 12 trials to teach TPE something
COMMON = {
    "search_space": {
        "gamma": {"low": 1e-6, "high": 1e-2, "log": True},
        "threshold": {"low": 1e-9, "high": 1e-3, "log": True},
        "real_lr": 1e-3,
    },
    "max_train_samples": 1000,
    "epochs": 2,
}


def _values(url: str, study_id: int) -> list[float]:
    trials = study_trials(url, study_id)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(trials)
    return [t.values[0] for t in trials]


def _trials_to_reach(values: list[float], target: float) -> int:
    """How many trials it took to get within TOLERANCE of ``target`` (len + 1: never)."""
    for count, value in enumerate(values, start=1):
        if value >= target - TOLERANCE:
            return count
    return len(values) + 1


def test_warm_started_tpe_reaches_the_source_best_sooner(postgres_url: str) -> None:
    source = new_study(
        postgres_url, n_trials=SOURCE_TRIALS, sampler={"name": "tpe", "seed": 0}, **COMMON
    )
    run_study(source, worker_settings(postgres_url))
    source_values = _values(postgres_url, source)
    best = max(source_values)

    warm_steps, cold_steps, warm_best_k, cold_best_k = 0, 0, 0.0, 0.0
    for seed in SEEDS:
        sampler = {"name": "tpe", "seed": seed}
        warm = new_study(
            postgres_url,
            n_trials=NEW_TRIALS,
            sampler=sampler,
            warm_start={"study": source},
            **COMMON,
        )
        cold = new_study(postgres_url, n_trials=NEW_TRIALS, sampler=sampler, **COMMON)
        for study_id in (warm, cold):
            run_study(study_id, worker_settings(postgres_url))
        warm_values, cold_values = _values(postgres_url, warm), _values(postgres_url, cold)
        # the source's 12 trials are no trials of the new study and use none of its budget
        assert len(warm_values) == NEW_TRIALS
        row = study_row(postgres_url, warm)
        assert (row.status, row.n_claimed, row.n_trials) == ("completed", NEW_TRIALS, NEW_TRIALS)
        assert row.spec["warm_start"] == {"study": source}  # stored by id (never reused)
        warm_steps += _trials_to_reach(warm_values, best)
        cold_steps += _trials_to_reach(cold_values, best)
        warm_best_k += max(warm_values[:K]) / len(SEEDS)
        cold_best_k += max(cold_values[:K]) / len(SEEDS)
    print(
        f"source best {best:.3f}; trials to reach it (sum over seeds {SEEDS}): warm {warm_steps},"
        f" cold {cold_steps}; mean best of the first {K}: warm {warm_best_k:.3f},"
        f" cold {cold_best_k:.3f}"
    )
    assert warm_steps < cold_steps
    assert warm_best_k > cold_best_k


def test_only_fitting_complete_trials_inform_the_sampler() -> None:
    import optuna
    from optuna.distributions import FloatDistribution

    from service.spec import parse_spec

    spec = parse_spec(
        {
            "name": "fit",
            "optimizer": "bop",
            "search_space": {
                "gamma": {"low": 1e-4, "high": 1e-2, "log": True},
                "threshold": {"low": 1e-6, "high": 1e-3, "log": True},
            },
        }
    )
    wide = FloatDistribution(1e-6, 1e-1, log=True)
    made = [
        optuna.trial.create_trial(  # fits: kept, re-expressed in the new distributions
            params={"gamma": 1e-3, "threshold": 1e-5},
            distributions={"gamma": wide, "threshold": wide},
            values=[0.9],
        ),
        optuna.trial.create_trial(  # gamma outside the new range
            params={"gamma": 5e-2, "threshold": 1e-5},
            distributions={"gamma": wide, "threshold": wide},
            values=[0.95],
        ),
        optuna.trial.create_trial(  # not COMPLETE
            params={"gamma": 1e-3, "threshold": 1e-5},
            distributions={"gamma": wide, "threshold": wide},
            state=TrialState.PRUNED,
        ),
    ]
    (kept,) = fitting_trials(spec, made)
    assert kept.params == {"gamma": 1e-3, "threshold": 1e-5} and kept.values == [0.9]
    assert kept.distributions["gamma"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert kept.number == -1  # before the new study's own trial 0, never equal to one
