"""Text rendering of a study for ``status`` and ``demo``: progress bar, state counts, best
parameters and the comparison table of the best trials.

Trials are the API's JSON dicts; every reader here tolerates missing keys, since running and
failed trials lack most of them.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "best_trials",
    "comparison_table",
    "count_states",
    "counts_text",
    "display_params",
    "finished_count",
    "fmt",
    "format_table",
    "is_terminal",
    "progress_bar",
    "study_summary",
    "trial_seconds",
    "trial_value",
    "workers_table",
]

TERMINAL_STATES = ("completed", "failed", "stopped", "cancelled", "deleted")
FINISHED_TRIAL_STATES = ("complete", "pruned", "fail", "failed")


def trial_value(trial: dict[str, Any]) -> float | None:
    """The trial's validation accuracy (first objective), or None."""
    for key in ("val_accuracy", "value"):
        if isinstance(trial.get(key), int | float):
            return float(trial[key])
    values = trial.get("values")
    if isinstance(values, list) and values and isinstance(values[0], int | float):
        return float(values[0])
    return None


def _metric(trial: dict[str, Any], key: str) -> float | None:
    """``key`` from the trial, its user_attrs, or else its last epoch."""
    epochs = trial.get("epochs") or [{}]
    for source in (trial, trial.get("user_attrs") or {}, epochs[-1]):
        if isinstance(source, dict) and isinstance(source.get(key), int | float):
            return float(source[key])
    return None


def trial_seconds(trial: dict[str, Any]) -> float | None:
    for key in ("train_seconds", "duration_s", "seconds"):
        if (value := _metric(trial, key)) is not None:
            return value
    return None


def _state(trial: dict[str, Any]) -> str:
    return str(trial.get("state", "")).lower()


def is_terminal(study: dict[str, Any]) -> bool:
    return str(study.get("status", "")).lower() in TERMINAL_STATES


def best_trials(trials: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """Completed trials by descending validation accuracy."""
    done = [t for t in trials if _state(t) == "complete" and trial_value(t) is not None]
    return sorted(done, key=lambda t: -(trial_value(t) or 0.0))[:top]


def display_params(params: dict[str, Any]) -> dict[str, Any]:
    """Fold Optuna's ``<name>_is_zero`` choice (spec ``include_zero``) back into ``<name>``."""
    shown: dict[str, Any] = {}
    for name, value in params.items():
        if name.endswith("_is_zero"):
            if value:
                shown[name.removesuffix("_is_zero")] = 0.0
        else:
            shown[name] = value
    return shown


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value == 0 or (1e-3 <= abs(value) < 1e4):
        return f"{value:.4g}"
    return f"{value:.3g}"


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def comparison_table(trials: list[dict[str, Any]], top: int = 5) -> str:
    """Top trials side by side: params, val accuracy, flip ratio, seconds."""
    best = best_trials(trials, top)
    if not best:
        return "(no completed trials yet)"
    params = [display_params(t.get("params") or {}) for t in best]
    names = sorted({name for p in params for name in p})
    header = ["trial", *names, "val_acc", "flip_ratio", "seconds"]
    rows = [
        [
            str(t.get("number", t.get("id", "?"))),
            *[fmt(p.get(n)) for n in names],
            fmt(trial_value(t)),
            fmt(_metric(t, "flip_ratio")),
            fmt(trial_seconds(t)),
        ]
        for t, p in zip(best, params, strict=True)
    ]
    return format_table(rows, header)


def progress_bar(done: int, total: int, width: int = 30) -> str:
    total = max(total, 1)
    filled = min(width, round(width * done / total))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def count_states(trials: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[_state(trial)] = counts.get(_state(trial), 0) + 1
    return counts


def finished_count(counts: dict[str, int]) -> int:
    """Trials that no longer run (complete, pruned or failed), from :func:`count_states`."""
    return sum(counts.get(s, 0) for s in FINISHED_TRIAL_STATES)


def counts_text(counts: dict[str, int]) -> str:
    """``2 complete, 1 running``: the counts of :func:`count_states` by state name."""
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def study_summary(study: dict[str, Any], trials: list[dict[str, Any]], top: int = 5) -> str:
    """The text ``bnn-tune status`` prints."""
    spec = study.get("spec") or {}
    counts = count_states(trials)
    total = int(study.get("n_trials") or spec.get("n_trials") or len(trials) or 1)
    what = " ".join(
        str(x) for x in (spec.get("optimizer"), spec.get("model"), spec.get("dataset")) if x
    )
    lines = [
        f"study {study.get('id')} {study.get('name', '')!s}  [{study.get('status', '?')}]  {what}",
        f"trials  {progress_bar(finished_count(counts), total)}  {counts_text(counts)}",
    ]
    if study.get("error"):  # e.g. a failed study: "all 8 trials failed; first error: ..."
        lines.append(f"error   {study['error']}")
    if study.get("waiting_reason"):  # e.g. "no live worker can train on cuda (...)"
        lines.append(f"waiting {study['waiting_reason']}")
    best = best_trials(trials, top)
    if best:
        lines.append(
            f"best    trial {best[0].get('number')}: val_accuracy {fmt(trial_value(best[0]))}"
        )
        shown = display_params(best[0].get("params") or {})
        lines += [f"        {k} = {fmt(v)}" for k, v in shown.items()]
        lines += ["", comparison_table(trials, top)]
    return "\n".join(lines)


def _ago(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def workers_table(workers: list[dict[str, Any]]) -> str:
    """The text ``bnn-tune workers`` prints: one row per registered worker (live ones first,
    as the API orders them)."""
    if not workers:
        return "(no workers registered; start one with `bnn-tune worker`)"
    header = ["worker", "device", "device_name", "state", "live", "last_seen", "study", "trials"]
    rows = [
        [
            str(w.get("worker_id", "?")),
            str(w.get("device", "?")),
            str(w.get("device_name", "?")),
            str(w.get("state", "?")),
            "yes" if w.get("live") else "no",
            _ago(w.get("seen_s_ago")),
            fmt(w.get("current_study_id")),
            fmt(w.get("trials_finished")),
        ]
        for w in workers
    ]
    live = sum(1 for w in workers if w.get("live"))
    return f"{format_table(rows, header)}\n\n{live} live of {len(workers)} registered"
