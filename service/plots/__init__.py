"""Study plots as PNG or SVG: what ``GET /api/v1/studies/{id}/plots/{kind}`` and
``bnn-tune plot`` serve.

Contract:

* :func:`render_plot` is the one entry point: it takes the study's spec and its trials as
  already loaded from the Optuna storage (one read per request; nothing here touches a
  database), the study's status and error, and returns the bytes of ``kind`` in ``fmt``.
* The kinds are :data:`service.vocabulary.PLOT_KINDS`; each is drawn by one module:

  - ``params`` (``params``): each objective against every sampled parameter, log axes where
    the range is log-scaled, a "0" strip beside the log axis for ``include_zero`` ranges;
  - ``importance`` (Optuna, ``optuna_views``): parameter importances (PED-ANOVA);
  - ``pareto`` (Optuna, ``optuna_views``): the Pareto front of a two-objective study;
  - ``curves`` / ``flips`` (``curves``): validation accuracy / flip ratio per epoch, every
    trial, the best one in black;
  - ``layer-flips`` (``curves``): each binary layer's flip ratio per epoch in one trial (the
    best by default, ``trial=N``);
  - ``filter`` (``filters``): |H(f)| of the best trials' gradient filters on log-log axes,
    cutoffs marked, the pass band in steps and epochs (``compare``: another study's best).

  Each module says why it draws itself where Optuna has a similar plot.
* Nothing to draw is never an error: the figure says why ("no completed trials yet", "N
  trials running, none completed yet", "study failed: <its error, shortened>"). An unknown
  kind or format is a ``ValueError``; ``trial=N`` naming no trial of the study is a
  :class:`service.errors.NotFoundError` (404).
* Keys never silently stop: beyond :data:`service.plots.common.LEGEND_MAX` trials, lines and
  points are coloured by trial number with a colour bar instead of a legend.
* No torch, no ``bnn_core``: the filter view draws the response the worker stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optuna.trial import FrozenTrial

from service.plots.common import DRAWING, MessageFigure, StudyData, nothing_yet
from service.plots.curves import plot_curves, plot_flips, plot_layer_flips
from service.plots.filters import plot_filter
from service.plots.optuna_views import optuna_figure_bytes, plot_importance, plot_pareto
from service.plots.params import plot_params
from service.spec import StudySpec
from service.vocabulary import PLOT_KINDS, PLOT_MEDIA_TYPES

__all__ = ["PLOT_KINDS", "MEDIA_TYPES", "StudyData", "render_plot"]

MEDIA_TYPES = PLOT_MEDIA_TYPES

_DRAW: dict[str, Callable[..., Any]] = {
    "params": plot_params,
    "importance": plot_importance,
    "pareto": plot_pareto,
    "curves": plot_curves,
    "flips": plot_flips,
    "layer-flips": plot_layer_flips,
    "filter": plot_filter,
}
assert set(_DRAW) == set(PLOT_KINDS), "every plot kind of the vocabulary has a drawer"


def render_plot(
    kind: str,
    spec: StudySpec,
    trials: list[FrozenTrial],
    fmt: str = "png",
    *,
    status: str | None = None,
    error: str | None = None,
    trial: int | None = None,
    compare: StudyData | None = None,
) -> bytes:
    """Render plot ``kind`` of a study as PNG or SVG bytes.

    ``trials``: the study's Optuna trials; ``status``/``error``: its lifecycle status and
    error (for the "nothing yet" messages); ``trial``: the trial number of ``layer-flips``;
    ``compare``: another study whose best filters ``filter`` overlays.
    """
    if kind not in _DRAW:
        raise ValueError(f"unknown plot kind {kind!r}; one of {PLOT_KINDS}")
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"unknown format {fmt!r}; one of {tuple(MEDIA_TYPES)}")
    data = StudyData(spec=spec, trials=trials, status=status, error=error)
    with DRAWING:
        figure = _DRAW[kind](data, trial=trial, compare=compare)
        if status == "failed" and not isinstance(figure, MessageFigure):
            # what was drawn came before the failure: say so above (or under) the picture
            fig = getattr(figure, "fig", figure)
            place = fig.supxlabel if fig.get_suptitle() else fig.suptitle
            place(nothing_yet(data), color="C3", fontsize="medium")
        return optuna_figure_bytes(figure, fmt)
