"""End to end: a tiny digits study of the cascaded filter over cutoffs, trained by the real
worker (solo and stacked) on PostgreSQL; each trial stores its sampled cutoffs, the derived
rates and its filter view, which the API view, ``bnn-tune status`` and the ``filter`` plot
show."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState
from worker_helpers import new_study, study_row, study_trials, worker_settings

from bnn_core.config import OptimizerConfig
from bnn_core.filters import cutoff_to_rate, filter_summary
from service.cli.tables import study_summary
from service.plots import render_plot
from service.spec import stored_spec
from service.trial_views import trial_public
from worker.loop import run_study

SPACE = {
    "alpha_cutoff": {"low": 1e-5, "high": 1e-2, "log": True},
    "gamma_cutoff": {"low": 1e-3, "high": 0.2, "log": True},
    "real_lr": 0.01,
}  # alpha_schedule unset: linear-epoch, so alpha > gamma pairs train too


@pytest.mark.parametrize("stacked", [False, True], ids=["solo", "stacked"])
def test_filter_study_over_cutoffs_stores_and_draws_its_filters(
    postgres_url: str, stacked: bool
) -> None:
    study_id = new_study(
        postgres_url,
        optimizer="filter",
        search_space=SPACE,
        n_trials=2,
        trials_per_gpu=2 if stacked else 1,
        sampler={"name": "random", "seed": 4},
    )
    stats = run_study(study_id, worker_settings(postgres_url, stack_on_cpu=stacked))
    assert stats.by_state == {"COMPLETE": 2}
    trials = study_trials(postgres_url, study_id)
    for trial in trials:
        assert trial.state == TrialState.COMPLETE
        assert set(trial.params) == {"alpha_cutoff", "gamma_cutoff"}
        rates = {
            name: cutoff_to_rate(trial.params[f"{name}_cutoff"]) for name in ("alpha", "gamma")
        }
        assert trial.user_attrs["rates"] == rates
        assert trial_public(trial).rates == rates
        optimizer = OptimizerConfig(name="filter", real_lr=0.01, **rates)
        # 300 digits images, 10 % held out: 270 // 50 = 5 steps per epoch
        assert trial.user_attrs["filter"] == filter_summary(optimizer, 5, epochs=2)

    row = study_row(postgres_url, study_id)
    spec = stored_spec(row.spec)
    svg = render_plot("filter", spec, trials, "svg", status=row.status).decode()
    assert "gradient filters of the best trials" in svg
    assert "pass band of #" in svg and "epochs of 5 steps" in svg
    best = max(trials, key=lambda t: t.values[0])
    assert f"γ = {best.user_attrs['rates']['gamma']:.3g}" in svg

    views = [trial_public(t).model_dump(mode="json") for t in trials]
    text = study_summary({"id": study_id, "name": row.name, "status": row.status}, views)
    header = next(line for line in text.splitlines() if line.startswith("trial "))
    assert header.split()[1:5] == ["alpha", "alpha_cutoff", "gamma", "gamma_cutoff"]
    assert f"gamma = {best.user_attrs['rates']['gamma']:.4g}" in text
