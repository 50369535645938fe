"""``params``: a slice plot, each objective against EVERY sampled parameter, one panel each.

Drawn here rather than by ``optuna.visualization.matplotlib.plot_slice`` because that function
has no place for the zero of an ``include_zero`` range: Optuna records such a parameter as a
categorical ``<name>_is_zero`` (True: ``<name>`` absent) next to a log-scaled ``<name>``, so its
slice would drop the zero trials from the log axis and show a separate True/False panel. Here
the zero trials sit in a narrow strip labelled "0" left of the log axis, sharing its y axis.
Otherwise the picture is Optuna's: log axes where the distribution is log-scaled, categorical
axes for choices, points coloured by trial number (a colour bar, however many trials).

The parameters come from the trials' Optuna distributions (all trials, so a parameter sampled
only conditionally, e.g. ``threshold`` when ``threshold_is_zero`` is False, still appears),
ordered as in the spec's search space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial

from service.plots.common import (
    StudyData,
    TrialColours,
    best_trials,
    completed,
    message_figure,
    new_figure,
    nothing_yet,
)

__all__ = ["ZERO_SUFFIX", "SearchParam", "search_params", "plot_params"]

ZERO_SUFFIX = "_is_zero"
MAX_COLUMNS = 4
ZERO = object()  # a trial whose include_zero parameter is exactly 0


@dataclass
class SearchParam:
    """One tuned parameter as drawn: log axis, choices (categorical), and whether it may be
    exactly 0 (``include_zero``: drawn in a strip of its own)."""

    name: str
    log: bool = False
    choices: list[Any] | None = None
    zero: bool = False
    low: float = math.inf
    high: float = -math.inf
    seen: bool = field(default=False, repr=False)

    def value(self, trial: FrozenTrial) -> Any:
        """The trial's value, :data:`ZERO`, or None when the trial did not sample it."""
        if self.zero and trial.params.get(self.name + ZERO_SUFFIX) is True:
            return ZERO
        return trial.params.get(self.name)


def search_params(data: StudyData) -> list[SearchParam]:
    """Every sampled parameter of the study, ``<name>_is_zero`` folded into ``<name>``."""
    found: dict[str, SearchParam] = {}
    for trial in data.trials:
        for name, dist in trial.distributions.items():
            if name.endswith(ZERO_SUFFIX) and isinstance(dist, CategoricalDistribution):
                base = name[: -len(ZERO_SUFFIX)]
                found.setdefault(base, SearchParam(base)).zero = True
                continue
            param = found.setdefault(name, SearchParam(name))
            param.seen = True
            if isinstance(dist, CategoricalDistribution):
                param.choices = list(dist.choices)
            elif isinstance(dist, FloatDistribution | IntDistribution):
                param.log = param.log or dist.log
                param.low, param.high = min(param.low, dist.low), max(param.high, dist.high)
    order = {name: i for i, name in enumerate(data.spec.space)}
    params = [p for p in found.values() if p.seen or p.zero]
    return sorted(params, key=lambda p: order.get(p.name, len(order)))


def _jitter(number: int, width: float = 0.3) -> float:
    """A deterministic spread of points on a categorical position (golden-ratio sequence)."""
    return ((number * 0.6180339887) % 1.0 - 0.5) * width


def plot_params(data: StudyData, **_: Any) -> Figure:
    done = completed(data.trials)
    title = f"{data.name}: objectives against parameters"
    if not done:
        return message_figure(title, nothing_yet(data))
    params = search_params(data)
    if not params:
        return message_figure(title, "no sampled parameters: every value is fixed in the spec")
    objectives = data.objectives
    columns = min(len(params), MAX_COLUMNS)
    rows_per_objective = math.ceil(len(params) / columns)
    rows = rows_per_objective * len(objectives)
    fig = new_figure(3.4 * columns + 1.4, 2.9 * rows + 0.7)
    # a last, narrow column holds the colour bar (constrained layout would otherwise put it
    # between the panels of nested grids)
    grid = fig.add_gridspec(rows, columns + 1, width_ratios=[1.0] * columns + [0.05])
    colours = TrialColours([t.number for t in done])
    best = {t.number for t in best_trials(data, 1 if len(objectives) == 1 else len(done))}
    axes = []
    for k, objective in enumerate(objectives):
        ys = [t.values[k] for t in done]
        log_y = objective == "flip_ratio" and min(ys) > 0
        for i, param in enumerate(params):
            cell = grid[k * rows_per_objective + i // columns, i % columns]
            axes += _panel(fig, cell, param, done, k, colours, best, log_y)
            axes[-1].set_ylabel(objective if i % columns == 0 else "")
    colours.colorbar(fig, cax=fig.add_subplot(grid[:, -1]))
    ring = "best trial" if len(objectives) == 1 else "Pareto front"
    fig.suptitle(f"{data.name}: {len(done)} completed trials (red ring: {ring})")
    return fig


def _panel(
    fig: Figure,
    cell: Any,
    param: SearchParam,
    done: list[FrozenTrial],
    k: int,
    colours: TrialColours,
    best: set[int],
    log_y: bool,
) -> list[Any]:
    """One parameter's panel: [main axis] or [zero strip, main axis] sharing y."""
    points = [(param.value(t), t.values[k], t.number) for t in done]
    zeros = [(y, n) for x, y, n in points if x is ZERO]
    values = [(x, y, n) for x, y, n in points if x is not None and x is not ZERO]
    if param.zero:
        inner = cell.subgridspec(1, 2, width_ratios=[1, 6], wspace=0.0)
        strip = fig.add_subplot(inner[0])
        ax = fig.add_subplot(inner[1], sharey=strip)
        _strip(strip, zeros, colours, best)
        ax.tick_params(labelleft=False)
        out = [strip, ax]
    else:
        ax = fig.add_subplot(cell)
        out = [ax]
    if param.choices is not None:
        index = {repr(c): i for i, c in enumerate(param.choices)}
        xs = [index.get(repr(x), -1) + _jitter(n) for x, _, n in values]
        ax.set_xticks(range(len(param.choices)), [_label(c) for c in param.choices])
        ax.set_xlim(-0.5, len(param.choices) - 0.5)
    else:
        xs = [x for x, _, _ in values]
        if param.log and all(x > 0 for x in xs):
            ax.set_xscale("log")
        if param.low < param.high:  # the whole searched range, not only the sampled part
            ax.set_xlim(*_padded(param.low, param.high, ax.get_xscale() == "log"))
    _scatter(ax, xs, [(y, n) for _, y, n in values], colours, best)
    ax.set_xlabel(param.name + (" (0 at left)" if param.zero else ""))
    for axis in out:
        if log_y:
            axis.set_yscale("log")
        axis.grid(True, alpha=0.3)
    return out


def _padded(low: float, high: float, log: bool, pad: float = 0.04) -> tuple[float, float]:
    if log:
        span = math.log10(high / low) * pad
        return low / 10**span, high * 10**span
    return low - (high - low) * pad, high + (high - low) * pad


def _strip(ax: Any, zeros: list[tuple[float, int]], colours: Any, best: set[int]) -> None:
    xs = [_jitter(n, 0.6) for _, n in zeros]
    _scatter(ax, xs, zeros, colours, best)
    ax.set_xlim(-0.5, 0.5)
    ax.set_xticks([0], ["0"])
    ax.set_facecolor("#f2f2f2")
    ax.spines["right"].set_linestyle((0, (2, 2)))  # the break between 0 and the log axis


def _scatter(
    ax: Any, xs: list[Any], ys: list[tuple[float, int]], colours: TrialColours, best: set[int]
) -> None:
    if not xs:
        return
    numbers = [n for _, n in ys]
    values = [y for y, _ in ys]
    ax.scatter(
        xs, values, c=numbers, cmap=colours.cmap, norm=colours.norm, s=18,
        edgecolors="k", linewidths=0.2, zorder=2,
    )  # fmt: skip
    ringed = [(x, y) for x, y, n in zip(xs, values, numbers, strict=True) if n in best]
    if ringed:
        ax.scatter(
            *zip(*ringed, strict=True), s=70, facecolors="none", edgecolors="red",
            linewidths=1.2, zorder=3,
        )  # fmt: skip


def _label(choice: Any) -> str:
    text = f"{choice:g}" if isinstance(choice, float) else str(choice)
    return text if len(text) <= 10 else text[:9] + "…"
