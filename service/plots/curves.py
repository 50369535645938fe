"""Per-epoch curves: ``curves`` (validation accuracy), ``flips`` (flip ratio), ``layer-flips``
(each binary layer's flip ratio in one trial).

The data are the trial user attr ``epochs`` (one dict per epoch, written by the worker;
``val_accuracy``, ``flip_ratio``, ``flip_ratio_per_layer`` = {layer: ratio}); ``curves`` falls
back to the reported intermediate values of a trial without epoch records.

Drawn here rather than by ``optuna.visualization.matplotlib.plot_intermediate_values``: that
function gives every trial a legend entry and a ``tab20`` colour (colours repeat after 20, the
legend outgrows the figure), and it only sees intermediate values, which two-objective studies
cannot report. Here trials are coloured by trial number (legend for a handful, colour bar
beyond), the best trial is drawn on top in black, and unfinished (running, pruned, failed)
trials are dotted. Lines go through one ``LineCollection`` per style, so thousands of trials
draw quickly.
"""

from __future__ import annotations

from typing import Any

from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from service.errors import NotFoundError
from service.plots.common import (
    StudyData,
    TrialColours,
    best_trial,
    epoch_of,
    epoch_series,
    message_figure,
    new_figure,
    nothing_yet,
    number,
)

__all__ = ["plot_curves", "plot_flips", "plot_layer_flips", "LAYER_LEGEND_MAX"]

LAYER_LEGEND_MAX = 12  # layers named in a legend; more get a colour bar over layer index


def plot_curves(data: StudyData, **_: Any) -> Figure:
    return _plot_trial_lines(data, "val_accuracy", "validation accuracy", "validation accuracy")


def plot_flips(data: StudyData, **_: Any) -> Figure:
    return _plot_trial_lines(data, "flip_ratio", "flip ratio", "flip ratio (per step, epoch mean)")


def _no_epochs(data: StudyData, title: str) -> Figure:
    message = nothing_yet(data)
    if message.endswith("none completed yet"):  # running trials that finished no epoch yet
        message = message.replace("none completed yet", "no epoch finished yet")
    return message_figure(title, message)


def _plot_trial_lines(data: StudyData, key: str, what: str, label: str) -> Figure:
    """Every trial's ``key`` per epoch; a log y axis for flip ratios (decades apart)."""
    log_y = key == "flip_ratio"
    title = f"{data.name}: {what} per epoch"
    series = [(t, *epoch_series(t, key)) for t in data.trials]
    series = [(t, xs, ys) for t, xs, ys in series if xs]
    if not series:
        return _no_epochs(data, title)
    fig = new_figure()
    ax = fig.add_subplot()
    colours = TrialColours([t.number for t, _, _ in series])
    best = best_trial(data)
    if colours.use_legend:
        for trial, xs, ys in series:
            if best is not None and trial.number == best.number:
                continue  # drawn in black below
            style = "-" if trial.state == TrialState.COMPLETE else ":"
            state = trial.state.name.lower()
            ax.plot(xs, ys, style, color=colours(trial.number), label=f"#{trial.number} {state}")
    else:
        for solid in (True, False):
            lines = [
                (t, xs, ys) for t, xs, ys in series if (t.state == TrialState.COMPLETE) == solid
            ]
            if lines:
                collection = LineCollection(
                    [list(zip(xs, ys, strict=True)) for _, xs, ys in lines],
                    colors=[colours(t.number) for t, _, _ in lines],
                    linewidths=0.9,
                    linestyles="solid" if solid else "dotted",
                    alpha=0.7 if len(series) < 100 else 0.35,  # thousands of lines overlap
                )
                ax.add_collection(collection)
        ax.autoscale_view()
    if best is not None:
        xs, ys = epoch_series(best, key)
        if xs:
            ax.plot(xs, ys, "-", color="black", lw=2.2, label=f"best: #{best.number}")
            if not colours.use_legend:
                ax.legend(fontsize="small", loc="best")
    positive = all(y > 0 for _, _, ys in series for y in ys)
    if log_y and positive:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    colours.finish(fig, ax)
    unfinished = sum(1 for t, _, _ in series if t.state != TrialState.COMPLETE)
    note = f", {unfinished} unfinished (dotted)" if unfinished else ""
    ax.set_title(f"{title} ({len(series)} trials{note})")
    return fig


def _chosen_trial(data: StudyData, trial: int | None) -> FrozenTrial | None:
    """Trial number ``trial`` (404 when the study has none), else the best completed trial,
    else the trial with the most epochs (a study whose trials are all still running)."""
    if trial is not None:
        for candidate in data.trials:
            if candidate.number == trial:
                return candidate
        raise NotFoundError(f"trial: study {data.name!r} has no trial number {trial}")
    best = best_trial(data)
    if best is not None and isinstance(best.user_attrs.get("epochs"), list):
        return best
    with_epochs = [t for t in data.trials if isinstance(t.user_attrs.get("epochs"), list)]
    return max(with_epochs, key=lambda t: len(t.user_attrs["epochs"]), default=None)


def _layer_series(trial: FrozenTrial) -> dict[str, tuple[list[float], list[float]]]:
    layers: dict[str, tuple[list[float], list[float]]] = {}
    epochs = trial.user_attrs.get("epochs")
    for i, record in enumerate(epochs if isinstance(epochs, list) else []):
        per_layer = record.get("flip_ratio_per_layer") if isinstance(record, dict) else None
        if not isinstance(per_layer, dict):
            continue
        epoch = epoch_of(record, i)
        for layer, ratio in per_layer.items():
            value = number(ratio)
            if value is not None:
                xs, ys = layers.setdefault(str(layer), ([], []))
                xs.append(epoch)
                ys.append(value)
    return layers


def plot_layer_flips(data: StudyData, trial: int | None = None, **_: Any) -> Figure:
    title = f"{data.name}: flip ratio per layer"
    chosen = _chosen_trial(data, trial)
    if chosen is None:
        return _no_epochs(data, title)
    layers = _layer_series(chosen)
    state = chosen.state.name.lower()
    title = f"{data.name}: flip ratio per layer, trial #{chosen.number} ({state})"
    if not layers:
        return message_figure(title, "this trial has no per-layer flip ratios yet")
    fig = new_figure()
    ax = fig.add_subplot()
    colours = TrialColours(list(range(len(layers))), cmap="plasma")
    colours.norm = Normalize(0, max(len(layers) - 1, 1) / 0.85)  # stop short of pale yellow
    colours.use_legend = len(layers) <= LAYER_LEGEND_MAX
    for index, (layer, (xs, ys)) in enumerate(layers.items()):
        ax.plot(xs, ys, "-o", ms=2.5, lw=1.2, color=colours(index), label=layer)
    xs, ys = epoch_series(chosen, "flip_ratio")
    if xs:
        ax.plot(xs, ys, "--", color="black", lw=1.5, label="all layers")
    values = [y for _, ys in layers.values() for y in ys] + ys
    positive = [y for y in values if y > 0]
    if positive and len(positive) == len(values):
        ax.set_yscale("log")
    elif positive:  # some layers flipped nothing in an epoch: keep 0 on the axis
        ax.set_yscale("symlog", linthresh=min(positive))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("flip ratio (per step, epoch mean)")
    ax.grid(True, alpha=0.3)
    if colours.use_legend:
        ax.legend(fontsize="small", loc="best", ncols=2 if len(layers) > 6 else 1)
    else:
        colours.finish(fig, ax, label="layer index (input -> output)")
        if xs:
            ax.legend(fontsize="small", loc="best")
    ax.set_title(title)
    return fig
