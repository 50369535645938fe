"""Study plots rendered with matplotlib's Agg backend (no pyplot state, no torch).

* ``params``: the objective against the two main tuned parameters (scatter coloured by the
  objective; log axes for log ranges); with one tuned parameter, objective against it.
* ``curves``: validation-accuracy learning curves, one line per trial.
* ``flips``: flip-ratio curves per trial (log y axis).

Curves come from the trial user_attr ``epochs`` (list of per-epoch dicts); ``curves`` falls back
to the trial's intermediate values when a trial has none.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from service.spec import ChoiceSpec, RangeSpec, StudySpec  # noqa: E402
from service.vocabulary import PLOT_KINDS, PLOT_MEDIA_TYPES  # noqa: E402

__all__ = ["PLOT_KINDS", "MEDIA_TYPES", "render_plot"]

MEDIA_TYPES = PLOT_MEDIA_TYPES


def render_plot(kind: str, spec: StudySpec, trials: list[FrozenTrial], fmt: str = "png") -> bytes:
    """Render plot ``kind`` of a study as PNG or SVG bytes."""
    if kind not in PLOT_KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; one of {PLOT_KINDS}")
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"unknown format {fmt!r}; one of {tuple(MEDIA_TYPES)}")
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    {"params": _plot_params, "curves": _plot_curves, "flips": _plot_flips}[kind](ax, spec, trials)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=100)
    return buffer.getvalue()


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _main_params(spec: StudySpec) -> list[tuple[str, bool]]:
    """Up to two sampled numeric parameters, in spec order, with whether their axis is log."""
    out = []
    for name, param in spec.space.items():
        if isinstance(param, RangeSpec):
            out.append((name, param.log))
        elif isinstance(param, ChoiceSpec) and all(
            isinstance(c, int | float) and not isinstance(c, bool) for c in param.choices
        ):
            low, high = min(param.choices), max(param.choices)
            out.append((name, low > 0 and high / low > 100))
    return out[:2]


def _plot_params(ax: Any, spec: StudySpec, trials: list[FrozenTrial]) -> None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    params = _main_params(spec)
    if not done or not params:
        _empty(ax, "no completed trials" if params else "no sampled numeric parameters")
        return
    objective = spec.objectives[0]
    values = [t.values[0] for t in done]
    x_name, x_log = params[0]
    xs = [t.params.get(x_name, 0.0) for t in done]
    if len(params) == 2:
        y_name, y_log = params[1]
        ys = [t.params.get(y_name, 0.0) for t in done]
        points = ax.scatter(xs, ys, c=values, cmap="viridis", edgecolors="k", linewidths=0.3)
        ax.figure.colorbar(points, ax=ax, label=objective)
        ax.set_ylabel(y_name)
        if y_log and min(ys) > 0:
            ax.set_yscale("log")
    else:
        ax.scatter(xs, values, edgecolors="k", linewidths=0.3)
        ax.set_ylabel(objective)
    ax.set_xlabel(x_name)
    if x_log and min(xs) > 0:
        ax.set_xscale("log")
    ax.set_title(f"{spec.name}: {objective} vs parameters ({len(done)} trials)")


def _series(trial: FrozenTrial, key: str) -> tuple[list[float], list[float]]:
    epochs = trial.user_attrs.get("epochs") or []
    points = [
        (float(e.get("epoch", i)), float(e[key]))
        for i, e in enumerate(epochs)
        if isinstance(e, dict) and isinstance(e.get(key), int | float)
    ]
    if not points and key == "val_accuracy":
        points = sorted((float(s), float(v)) for s, v in trial.intermediate_values.items())
    return [p[0] for p in points], [p[1] for p in points]


def _plot_lines(ax: Any, trials: list[FrozenTrial], key: str, label: str) -> int:
    drawn = 0
    for trial in trials:
        xs, ys = _series(trial, key)
        if xs:
            style = "-" if trial.state == TrialState.COMPLETE else ":"
            ax.plot(xs, ys, style, lw=1, alpha=0.8, label=f"#{trial.number}")
            drawn += 1
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    if 0 < drawn <= 12:
        ax.legend(fontsize="small", ncols=2)
    return drawn


def _plot_curves(ax: Any, spec: StudySpec, trials: list[FrozenTrial]) -> None:
    if not _plot_lines(ax, trials, "val_accuracy", "validation accuracy"):
        _empty(ax, "no learning curves yet")
        return
    ax.set_title(f"{spec.name}: validation accuracy per epoch")


def _plot_flips(ax: Any, spec: StudySpec, trials: list[FrozenTrial]) -> None:
    if not _plot_lines(ax, trials, "flip_ratio", "flip ratio (per step, epoch mean)"):
        _empty(ax, "no flip-ratio curves yet")
        return
    ys = [y for t in trials for y in _series(t, "flip_ratio")[1]]
    if ys and min(ys) > 0:
        ax.set_yscale("log")
    ax.set_title(f"{spec.name}: flip ratio per epoch")
