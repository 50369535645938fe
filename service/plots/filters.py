"""``filter``: the magnitude response |H(f)| of the best trials' gradient filters, log-log.

The data are the trial user attr ``filter``, the worker's record of its optimizer's filter
(``bnn_core.filters.filter_summary``): ``family``, ``steps_per_epoch``, ``stages`` (each
``name``, ``rate``, ``cutoff`` in cycles per step, ``period_steps``, ``period_epochs``), the
whole filter's ``cutoff``/``period_steps``/``period_epochs`` (None where |H| never falls by
3 dB), and ``freqs`` (log-spaced, cycles per step, up to Nyquist 0.5) with ``magnitude``. The
service does not recompute any of it (it cannot import ``bnn_core``); it draws what is stored.

A latent-SGD trial's record is its equivalent cascaded filter, so a ``latent-sgd`` study and a
``filter`` study compare on one picture (``compare``: the other study's best filters, dashed).
Each filter's -3 dB cutoff is a dotted line and a dot on the -3 dB level; the best trial's
stage cutoffs are marked on the frequency axis, its pass band (periods longer than the cutoff
period) is shaded and labelled in steps and epochs, and the top axis gives periods in epochs.
Latent Adam has no filter view (its per-weight, data-dependent gain is not a linear filter).
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory
from optuna.trial import FrozenTrial

from service.plots.common import (
    StudyData,
    best_trials,
    completed,
    message_figure,
    new_figure,
    nothing_yet,
    number,
)

__all__ = ["FILTER_ATTR", "BEST_FILTERS", "COMPARE_FILTERS", "filter_record", "plot_filter"]

FILTER_ATTR = "filter"
BEST_FILTERS = 5  # best trials of the study drawn
COMPARE_FILTERS = 3  # best trials of the compared study drawn
HALF_POWER = 1.0 / math.sqrt(2.0)
STAGE_SYMBOLS = {"gamma": "γ", "alpha": "α", "sigma": "σ"}
NO_FILTER_VIEW = {
    "latent-adam": "latent Adam has no filter view: its per-weight gain 1/sqrt(v) is "
    "time-varying and data-dependent, not a linear filter",
}


def filter_record(trial: FrozenTrial) -> dict[str, Any] | None:
    """The trial's stored filter record when it has a drawable response, else None."""
    record = trial.user_attrs.get(FILTER_ATTR)
    if not isinstance(record, dict):
        return None
    freqs, magnitude = record.get("freqs"), record.get("magnitude")
    if not (isinstance(freqs, list) and isinstance(magnitude, list)):
        return None
    if len(freqs) != len(magnitude) or len(freqs) < 2:
        return None
    points = [(number(f), number(m)) for f, m in zip(freqs, magnitude, strict=True)]
    if any(f is None or m is None or f <= 0 or m <= 0 for f, m in points):
        return None
    return record


def _with_records(data: StudyData, limit: int) -> list[tuple[FrozenTrial, dict[str, Any]]]:
    done = [t for t in completed(data.trials) if filter_record(t) is not None]
    return [(t, filter_record(t)) for t in best_trials(data, limit, done)]  # type: ignore[misc]


def _missing_message(data: StudyData) -> str:
    family = data.spec.optimizer
    if family in NO_FILTER_VIEW:
        return NO_FILTER_VIEW[family]
    done = completed(data.trials)
    if not done:
        return nothing_yet(data)
    if any(FILTER_ATTR in t.user_attrs and t.user_attrs[FILTER_ATTR] is None for t in done):
        return "no filter view: latent SGD without weight decay is a pure integrator"
    return "no completed trial has a stored filter response yet"


def _label(data: StudyData, trial: FrozenTrial, record: dict[str, Any], prefix: str) -> str:
    value = ", ".join(f"{o} {v:.3g}" for o, v in zip(data.objectives, trial.values, strict=False))
    steps = number(record.get("period_steps"))
    cutoff = f", cutoff {steps:.3g} steps" if steps is not None else ", no -3 dB cutoff"
    return f"{prefix}#{trial.number}: {value}{cutoff}"


def plot_filter(data: StudyData, compare: StudyData | None = None, **_: Any) -> Figure:
    family = data.spec.optimizer
    title = f"{data.name}: gradient filter |H(f)| of the best trials"
    drawn = _with_records(data, BEST_FILTERS)
    if not drawn:
        return message_figure(title, _missing_message(data))
    fig = new_figure(9.0, 5.8)
    ax = fig.add_subplot()
    prefix = f"{data.name} " if compare is not None else ""
    palette = [f"C{i}" for i in range(10)]
    for i, (trial, record) in enumerate(drawn):  # the best one on top of the others
        _draw_one(ax, record, palette[i], "-", 2.4 if i == 0 else 1.3,
                  _label(data, trial, record, prefix), zorder=3 if i == 0 else 2)  # fmt: skip
    others = _with_records(compare, COMPARE_FILTERS) if compare is not None else []
    for i, (trial, record) in enumerate(others):
        label = _label(compare, trial, record, f"{compare.name} ")  # type: ignore[arg-type]
        _draw_one(ax, record, palette[BEST_FILTERS + i], "--", 1.3, label)
    best_trial, best = drawn[0]
    _mark_stages(ax, best)
    _pass_band(ax, best_trial, best)
    ax.axhline(HALF_POWER, color="grey", lw=0.8, ls="-.")
    ax.annotate("-3 dB", (1.0, HALF_POWER), xycoords=("axes fraction", "data"),
                xytext=(-4, -11), textcoords="offset points", ha="right", fontsize="small",
                color="grey")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("frequency (cycles per step; period = 1/f steps)")
    ax.set_ylabel("|H(f)| (gain from gradient to filter state)")
    ax.grid(True, which="both", alpha=0.25)
    _epoch_axis(ax, best)
    equivalent = (
        " (latent SGD as its equivalent cascaded filter)" if family == "latent-sgd" else ""
    )
    vs = f" vs {compare.name}" if compare is not None else ""
    heading = f"{data.name}{vs}: gradient filters of the best trials{equivalent}"
    ax.set_title(textwrap.fill(heading, 100), fontsize="medium")
    fig.legend(fontsize="small", loc="outside lower center", ncols=3 - len(data.objectives))
    if compare is not None and not others:
        fig.text(0.01, 0.01, f"{compare.name}: {_missing_message(compare)}", fontsize="small")
    return fig


def _draw_one(
    ax: Any,
    record: dict[str, Any],
    colour: str,
    style: str,
    width: float,
    label: str,
    zorder: float = 2,
) -> None:
    freqs = np.asarray(record["freqs"], dtype=float)
    magnitude = np.asarray(record["magnitude"], dtype=float)
    ax.plot(freqs, magnitude, style, color=colour, lw=width, label=label, zorder=zorder)
    cutoff = number(record.get("cutoff"))
    if cutoff is not None and cutoff > 0:
        ax.axvline(cutoff, color=colour, lw=0.9, ls=":")
        ax.plot([cutoff], [HALF_POWER], "o", color=colour, ms=5, zorder=4)


def _mark_stages(ax: Any, record: dict[str, Any]) -> None:
    """The best filter's stage cutoffs as labelled ticks on the frequency axis."""
    transform = blended_transform_factory(ax.transData, ax.transAxes)
    stages = record.get("stages") if isinstance(record.get("stages"), list) else []
    # bop2's second moment normalises the step rather than filtering g: a hollow marker
    marked = [(stage, "black") for stage in stages] + [(record.get("second_moment"), "none")]
    for stage, face in marked:
        cutoff = number(stage.get("cutoff")) if isinstance(stage, dict) else None
        rate = number(stage.get("rate")) if isinstance(stage, dict) else None
        if cutoff is None or cutoff <= 0 or rate is None:
            continue
        name = str(stage.get("name", "?"))
        ax.plot([cutoff], [0.0], "^", mfc=face, mec="black", ms=8, transform=transform,
                clip_on=False, zorder=5)  # fmt: skip
        ax.annotate(f"{STAGE_SYMBOLS.get(name, name)} = {rate:.3g}", (cutoff, 0.0),
                    xycoords=transform, xytext=(0, 8), textcoords="offset points",
                    ha="center", fontsize="small")  # fmt: skip


def _pass_band(ax: Any, trial: FrozenTrial, record: dict[str, Any]) -> None:
    cutoff = number(record.get("cutoff"))
    if cutoff is None or cutoff <= 0:
        return
    low = min(float(f) for f in record["freqs"])
    ax.axvspan(low, cutoff, color="C0", alpha=0.07, lw=0)
    steps = number(record.get("period_steps"))
    epochs = number(record.get("period_epochs"))
    text = f"pass band of #{trial.number}:\nperiods > {steps:.3g} steps"
    if epochs is not None:
        text += f"\n= {epochs:.3g} epochs"
    ax.text(math.sqrt(low * cutoff), 0.5, text, transform=blended_transform_factory(
        ax.transData, ax.transAxes), ha="center", va="center", fontsize="small",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "lw": 0})  # fmt: skip


def _epoch_axis(ax: Any, record: dict[str, Any]) -> None:
    """Top axis: the period 1 / (f S) in epochs of S steps (the best trial's S)."""
    steps_per_epoch = number(record.get("steps_per_epoch"))
    if steps_per_epoch is None or steps_per_epoch <= 0:
        return

    def to_epochs(f: Any) -> Any:
        return 1.0 / (np.maximum(np.asarray(f, dtype=float), 1e-300) * steps_per_epoch)

    top = ax.secondary_xaxis("top", functions=(to_epochs, to_epochs))
    top.set_xlabel(f"period (epochs of {steps_per_epoch:g} steps)")
