"""Text rendering for ``bnn-tune``: a study's summary (``status``, ``demo``), the comparison
table of its best trials, its running trials, its Pareto front, and the ``list`` and
``workers`` tables.

Where a trial keeps each fact, and how progress is counted, is
:mod:`service.client_views`'s business; this module only lays text out.
"""

from __future__ import annotations

from typing import Any

from service.client import TERMINAL_STATUSES
from service.client_views import (
    finished_count,
    metric,
    plain_params,
    running_progress,
    state_of,
    trial_seconds,
    trial_value,
    trial_worker,
)

__all__ = [
    "best_trials",
    "comparison_table",
    "count_states",
    "counts_text",
    "fmt",
    "format_table",
    "is_terminal",
    "pareto_table",
    "progress_bar",
    "shown_params",
    "studies_table",
    "study_summary",
    "workers_table",
]


def is_terminal(study: dict[str, Any]) -> bool:
    return str(study.get("status", "")).lower() in TERMINAL_STATUSES


def best_trials(trials: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """Completed trials by descending validation accuracy."""
    done = [t for t in trials if state_of(t) == "complete" and trial_value(t) is not None]
    return sorted(done, key=lambda t: -(trial_value(t) or 0.0))[:top]


def shown_params(trial: dict[str, Any]) -> dict[str, Any]:
    """The trial's parameters as sampled (:func:`plain_params`), each sampled cutoff preceded by
    the EMA rate the worker derived from it (``gamma`` next to ``gamma_cutoff``)."""
    rates = trial.get("rates") or (trial.get("user_attrs") or {}).get("rates") or {}
    shown: dict[str, Any] = {}
    for name, value in plain_params(trial.get("params") or {}).items():
        rate = rates.get(name.removesuffix("_cutoff")) if name.endswith("_cutoff") else None
        if isinstance(rate, int | float):
            shown[name.removesuffix("_cutoff")] = rate
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


def _trials_table(trials: list[dict[str, Any]], value_names: list[str]) -> str:
    """Trials side by side: params, objective values, flip ratio, seconds."""
    params = [shown_params(t) for t in trials]
    names = sorted({name for p in params for name in p})
    header = ["trial", *names, *value_names, "flip_ratio", "seconds"]
    rows = []
    for trial, shown in zip(trials, params, strict=True):
        values = trial.get("values") or []
        rows.append(
            [
                str(trial.get("number", "?")),
                *[fmt(shown.get(n)) for n in names],
                *[fmt(values[i] if i < len(values) else None) for i in range(len(value_names))],
                fmt(metric(trial, "flip_ratio")),
                fmt(trial_seconds(trial)),
            ]
        )
    return format_table(rows, header)


def comparison_table(trials: list[dict[str, Any]], top: int = 5) -> str:
    """The ``top`` completed trials by validation accuracy."""
    best = best_trials(trials, top)
    if not best:
        return "(no completed trials yet)"
    return _trials_table(best, ["val_acc"])


def pareto_table(study: dict[str, Any], trials: list[dict[str, Any]]) -> str:
    """The Pareto-optimal trials of a two-objective study (the API's ``pareto_front``)."""
    numbers = [p.get("number") for p in study.get("pareto_front") or []]
    front = [t for t in trials if t.get("number") in numbers]
    if not front:
        return "(no completed trials yet)"
    objectives = (study.get("spec") or {}).get("objectives") or ["val_accuracy"]
    front.sort(key=lambda t: -(trial_value(t) or 0.0))
    return _trials_table(front, [_short_name(o) for o in objectives])


def _short_name(objective: str) -> str:
    return {"val_accuracy": "val_acc"}.get(objective, objective)


def progress_bar(done: int, total: int, width: int = 30) -> str:
    total = max(total, 1)
    filled = min(width, round(width * done / total))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def count_states(trials: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[state_of(trial)] = counts.get(state_of(trial), 0) + 1
    return counts


def counts_text(counts: dict[str, int]) -> str:
    """``2 complete, 1 running``: the counts of :func:`count_states` by state name."""
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _running_lines(trials: list[dict[str, Any]], epochs: Any) -> list[str]:
    lines = []
    for trial in trials:
        if state_of(trial) != "running":
            continue
        done, accuracy = running_progress(trial)
        of = f"/{epochs}" if isinstance(epochs, int) else ""
        where = f"  on {worker}" if (worker := trial_worker(trial)) else ""
        lines.append(
            f"running trial {trial.get('number')}: epoch {done or 0}{of}, "
            f"val_accuracy {fmt(accuracy)}{where}"
        )
    return lines


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
        f"trials  {progress_bar(finished_count(trials, total), total)}  {counts_text(counts)}",
    ]
    if (study.get("eval_protocol") or spec.get("eval_protocol")) == "test":
        lines.append(
            "eval    test set (reproduction mode: 'val' is the test set; do not tune on it)"
        )
    if study.get("error"):  # e.g. a failed study: "all 8 trials failed; first error: ..."
        lines.append(f"error   {study['error']}")
    if study.get("waiting_reason"):  # e.g. "no live worker can train on cuda (...)"
        lines.append(f"waiting {study['waiting_reason']}")
    lines += _running_lines(trials, spec.get("epochs"))
    if study.get("pareto_front") is not None:
        objectives = " and ".join(spec.get("objectives") or [])
        lines += ["", f"Pareto front ({objectives}):", pareto_table(study, trials)]
        return "\n".join(lines)
    best = best_trials(trials, top)
    if best:
        lines.append(
            f"best    trial {best[0].get('number')}: val_accuracy {fmt(trial_value(best[0]))}"
        )
        shown = shown_params(best[0])
        lines += [f"        {k} = {fmt(v)}" for k, v in shown.items()]
        lines += ["", comparison_table(trials, top)]
    return "\n".join(lines)


def studies_table(studies: list[dict[str, Any]]) -> str:
    """The text ``bnn-tune list`` prints: one row per study, newest first."""
    if not studies:
        return "(no studies; submit one with `bnn-tune submit SPEC`)"
    header = ["id", "name", "status", "optimizer", "trials", "created"]
    rows = [
        [
            str(s.get("id")),
            str(s.get("name")),
            str(s.get("status")),
            str(s.get("optimizer")),
            f"{s.get('n_claimed', 0)}/{s.get('n_trials', '?')} claimed",
            str(s.get("created_at", ""))[:19].replace("T", " "),
        ]
        for s in studies
    ]
    return format_table(rows, header)


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
