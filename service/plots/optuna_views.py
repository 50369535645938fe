"""``importance`` and ``pareto``: drawn by ``optuna.visualization.matplotlib``.

* ``importance``: :func:`plot_param_importances` with Optuna's default evaluator (PED-ANOVA,
  which also assesses conditional parameters, so ``threshold`` of an ``include_zero`` range
  counts next to its ``threshold_is_zero`` choice); one bar per parameter and objective.
* ``pareto``: :func:`plot_pareto_front` of a two-objective study, axes named after the
  objectives, the front highlighted.

Optuna's functions take a ``Study``: the trials already loaded for the request are copied,
without their user attrs and intermediate values (the bulk of a stored trial), into an
in-memory study, so the database is read once. They draw through pyplot, whose figure registry
and ``plt.style.use`` (they switch to ``ggplot``) are process-wide: drawing holds
``common.DRAWING`` (so no other figure is drawn meanwhile), runs inside ``rc_context`` (the
style change is undone on exit) and closes the figure in pyplot before it is saved, so a
request never sees another request's figure or style.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from optuna.storages import InMemoryStorage  # noqa: E402
from optuna.trial import FrozenTrial, TrialState, create_trial  # noqa: E402
from optuna.visualization.matplotlib import (  # noqa: E402
    plot_param_importances,
    plot_pareto_front,
)

from service.plots.common import (  # noqa: E402
    DRAWING,
    StudyData,
    best_trials,
    completed,
    figure_bytes,
    message_figure,
    nothing_yet,
)
from service.vocabulary import OBJECTIVE_DIRECTIONS  # noqa: E402

__all__ = [
    "plot_importance",
    "plot_pareto",
    "optuna_figure_bytes",
    "in_memory_study",
    "MIN_IMPORTANCE_TRIALS",
]

# Each request's in-memory copy would log "A new study created in memory" at INFO.
logging.getLogger("optuna.storages._in_memory").setLevel(logging.WARNING)

MIN_IMPORTANCE_TRIALS = 2  # Optuna's evaluators need two completed trials to compare


def in_memory_study(
    data: StudyData, trials: list[FrozenTrial], all_minimized: bool = False
) -> optuna.Study:
    """The completed ``trials`` in an in-memory study. ``all_minimized``: maximized objectives
    negated and every direction "minimize" (what the importance evaluators assume of each
    objective of a multi-objective study; the importances do not change for one objective)."""
    directions = [OBJECTIVE_DIRECTIONS[o] for o in data.objectives]
    signs = [-1.0 if all_minimized and d == "maximize" else 1.0 for d in directions]
    study = optuna.create_study(
        storage=InMemoryStorage(),
        directions=["minimize" if all_minimized else d for d in directions],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(data.objectives)
    study.add_trials(
        [
            create_trial(
                state=TrialState.COMPLETE,
                values=[sign * v for sign, v in zip(signs, t.values, strict=True)],
                params=t.params,
                distributions=t.distributions,
            )
            for t in trials
        ]
    )
    return study


class _OptunaFigure:
    """A figure Optuna drew with pyplot, detached from pyplot (see the module docstring).
    ``draw(study)`` returns Optuna's Axes (or array of Axes)."""

    def __init__(self, draw: Any, study: optuna.Study) -> None:
        with DRAWING, matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # true here: the copy minimizes every objective (see in_memory_study)
            warnings.filterwarnings("ignore", message=".* to achieve low `target` values")
            axes = draw(study)
            self.ax = axes.flat[0] if hasattr(axes, "flat") else axes
            self.fig: Figure = self.ax.figure
            plt.close(self.fig)

    def bytes(self, fmt: str) -> bytes:
        return figure_bytes(self.fig, fmt)


def optuna_figure_bytes(figure: Any, fmt: str) -> bytes:
    """PNG/SVG bytes of an Optuna figure or of one of ours."""
    if isinstance(figure, _OptunaFigure):
        return figure.bytes(fmt)
    return figure_bytes(figure, fmt)


def plot_importance(data: StudyData, **_: Any) -> Any:
    title = f"{data.name}: parameter importances"
    done = completed(data.trials)
    if not done:
        return message_figure(title, nothing_yet(data))
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return message_figure(title, "parameter importances need at least 2 completed trials")
    if not any(t.distributions for t in done):
        return message_figure(title, "no sampled parameters: every value is fixed in the spec")
    study = in_memory_study(data, done, all_minimized=True)
    figure = _OptunaFigure(plot_param_importances, study)
    figure.ax.set_title(f"{title} (PED-ANOVA, {len(done)} completed trials)", loc="left")
    figure.fig.set_size_inches(8, 1.8 + 0.45 * len(figure.ax.get_yticks()) * len(data.objectives))
    figure.fig.set_layout_engine("constrained")
    return figure


def plot_pareto(data: StudyData, **_: Any) -> Any:
    title = f"{data.name}: Pareto front"
    if len(data.objectives) != 2:
        return message_figure(
            title,
            f"a Pareto front needs two objectives; this study optimises {data.objectives[0]} "
            "only (see the params and importance plots)",
        )
    done = completed(data.trials)
    if not done:
        return message_figure(title, nothing_yet(data))

    def draw(study: optuna.Study) -> Any:
        return plot_pareto_front(study, target_names=data.objectives)

    figure = _OptunaFigure(draw, in_memory_study(data, done))
    ax = figure.ax
    directions = ", ".join(f"{o} {OBJECTIVE_DIRECTIONS[o]}d" for o in data.objectives)
    ax.set_title(f"{title} of {len(done)} completed trials\n({directions})")
    front = best_trials(data, len(done))
    ax.plot(*zip(*sorted(t.values for t in front), strict=True), "--", color="C3", lw=1,
            zorder=1)  # fmt: skip
    legend = ax.get_legend()
    for text in legend.get_texts() if legend is not None else []:
        text.set_text({"Best Trial": f"Pareto front ({len(front)})"}.get(text.get_text(),
                      text.get_text()))  # fmt: skip
    if data.objectives[1] == "flip_ratio" and all(t.values[1] > 0 for t in done):
        ax.set_yscale("log")
    figure.fig.set_size_inches(8, 5.5)
    figure.fig.set_layout_engine("constrained")
    return figure
