"""What every plot kind shares: the study's data, figures, "nothing yet" messages, trial colours
and per-epoch series read from the stored trials.

Figures are ``matplotlib.figure.Figure`` objects on the Agg canvas (no pyplot state), drawn
and saved under :data:`DRAWING`, one at a time per process. SVG is written with text kept as
text (``svg.fonttype = none``): smaller files whose labels can be searched and tested.
"""

from __future__ import annotations

import io
import math
import textwrap
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from service.spec import StudySpec  # noqa: E402
from service.vocabulary import OBJECTIVE_DIRECTIONS  # noqa: E402

__all__ = [
    "DRAWING",
    "StudyData",
    "LEGEND_MAX",
    "new_figure",
    "figure_bytes",
    "MessageFigure",
    "message_figure",
    "nothing_yet",
    "shorten",
    "TrialColours",
    "number",
    "epoch_of",
    "epoch_series",
    "completed",
    "best_trials",
    "best_trial",
]

# Held while a figure is drawn and saved: matplotlib's rcParams are process-wide, and Optuna's
# plots change them (pyplot style) while they draw; requests run in a thread pool.
DRAWING = threading.RLock()
# Up to this many lines get a legend entry each; beyond it, a colour bar over trial number.
LEGEND_MAX = 6
MESSAGE_CHARS = 160  # of a failed study's error shown on a plot


@dataclass(frozen=True)
class StudyData:
    """One study as the plots see it: its spec, its Optuna trials (loaded once, ordered by
    number), and its lifecycle status and error (None when unknown)."""

    spec: StudySpec
    trials: list[FrozenTrial]
    status: str | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def objectives(self) -> list[str]:
        return list(self.spec.objectives)


def new_figure(width: float = 8.0, height: float = 5.0) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        # "tight" grows the canvas to every artist, so a wide legend outside the axes is never cut.
        fig.savefig(buffer, format=fmt, dpi=100, bbox_inches="tight")
    return buffer.getvalue()


class MessageFigure(Figure):
    """A figure that only says why there is nothing to draw."""


def message_figure(title: str, message: str) -> Figure:
    """A figure that only says ``message`` (the "nothing to draw" answer of every kind)."""
    fig = MessageFigure(figsize=(7.0, 3.0), layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, textwrap.fill(message, 70), ha="center", va="center", wrap=True)
    return fig


def shorten(text: str, limit: int = MESSAGE_CHARS) -> str:
    """The first line of ``text`` with whitespace collapsed, at most ``limit`` characters."""
    first = " ".join((text.strip().splitlines() or [""])[0].split())
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def _first_trial_error(trials: Sequence[FrozenTrial]) -> str | None:
    for trial in trials:
        error = trial.user_attrs.get("error") or trial.system_attrs.get("fail_reason")
        if trial.state == TrialState.FAIL and isinstance(error, str) and error.strip():
            return error
    return None


def nothing_yet(data: StudyData, what: str = "no completed trials yet") -> str:
    """Why there is nothing to draw: a failed study names its first error, a study with running
    trials says so, anything else says ``what``."""
    if data.status == "failed":
        error = data.error or _first_trial_error(data.trials) or "no error recorded"
        return f"study failed: {shorten(error)}"
    running = sum(1 for t in data.trials if t.state == TrialState.RUNNING)
    if running:
        trials = "trial" if running == 1 else "trials"
        return f"{running} {trials} running, none completed yet"
    return what


class TrialColours:
    """Colours over trial numbers: a legend entry per trial for a handful, a colour bar beyond
    (:data:`LEGEND_MAX`), so the key never silently stops."""

    def __init__(self, numbers: Sequence[int], cmap: str = "viridis") -> None:
        low, high = (min(numbers), max(numbers)) if numbers else (0, 1)
        self.norm = Normalize(low, max(high, low + 1))
        self.cmap = matplotlib.colormaps[cmap]
        self.use_legend = len(numbers) <= LEGEND_MAX

    def __call__(self, number: int) -> Any:
        return self.cmap(self.norm(number))

    def finish(self, fig: Figure, ax: Any, label: str = "trial number") -> None:
        """Legend (few trials) or a colour bar (many) on ``ax``."""
        if self.use_legend:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small", loc="best")
            return
        self.colorbar(fig, label, ax=ax)

    def colorbar(self, fig: Figure, label: str = "trial number", **where: Any) -> Any:
        """A colour bar with integer ticks (trial numbers, layer indices)."""
        mappable = matplotlib.cm.ScalarMappable(norm=self.norm, cmap=self.cmap)
        bar = fig.colorbar(mappable, label=label, **where)
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
        return bar


def number(value: Any) -> float | None:
    """A finite float, or None (NaN/inf are stored as the strings "nan"/"inf")."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def epoch_of(record: dict[str, Any], index: int) -> float:
    """The record's ``epoch``, or its 1-based position when it has none."""
    epoch = number(record.get("epoch"))
    return float(index + 1) if epoch is None else epoch


def epoch_series(trial: FrozenTrial, key: str) -> tuple[list[float], list[float]]:
    """``key`` per epoch from the trial's ``epochs`` user attr (finite values only); for
    ``val_accuracy`` the reported intermediate values when the trial has no epoch records."""
    epochs = trial.user_attrs.get("epochs")
    points = []
    for i, record in enumerate(epochs if isinstance(epochs, list) else []):
        if isinstance(record, dict):
            value = number(record.get(key))
            if value is not None:
                points.append((epoch_of(record, i), value))
    if not points and key == "val_accuracy":
        points = sorted(
            (float(step), float(v))
            for step, v in trial.intermediate_values.items()
            if number(v) is not None
        )
    return [p[0] for p in points], [p[1] for p in points]


def completed(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Completed trials with finite values."""
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.values
        and all(number(v) is not None for v in t.values)
    ]


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(
        x > y for x, y in zip(a, b, strict=True)
    )


def best_trials(
    data: StudyData, limit: int, trials: Sequence[FrozenTrial] | None = None
) -> list[FrozenTrial]:
    """Up to ``limit`` best completed trials, best first: by the objective (one objective), or
    the Pareto front ordered by the first objective (two objectives)."""
    done = completed(data.trials if trials is None else trials)
    signs = [1.0 if OBJECTIVE_DIRECTIONS[o] == "maximize" else -1.0 for o in data.objectives]

    def score(t: FrozenTrial) -> list[float]:  # larger is better in every coordinate
        return [s * v for s, v in zip(signs, t.values, strict=False)]

    done = sorted(done, key=lambda t: [-x for x in score(t)])
    if len(signs) > 1:
        # Lexicographic order: only an earlier trial can dominate a later one, and a dominated
        # trial is dominated by a front member too, so comparing with the front suffices.
        front: list[tuple[FrozenTrial, list[float]]] = []
        for trial in done:
            s = score(trial)
            if not any(_dominates(f, s) for _, f in front):
                front.append((trial, s))
        done = [t for t, _ in front]
    return done[:limit]


def best_trial(data: StudyData) -> FrozenTrial | None:
    best = best_trials(data, 1)
    return best[0] if best else None
