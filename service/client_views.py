"""Reading the API's trial dicts: the one place that knows where a trial keeps its flip ratio,
epochs, seconds and worker, how the parameters of ``include_zero`` read as numbers, and how
progress is counted. Shared by :mod:`service.client` and the ``bnn-tune`` tables.

Contract:

* A trial is the JSON of ``GET /studies/{id}/trials``; running and failed trials lack most
  keys, so every reader here tolerates missing ones and answers None.
* Final per-trial facts come from the trial's user attributes when the worker recorded them
  (``flip_ratio``, ``epochs_run``, ``seconds``, ``worker_id``), else from its last epoch.
* Progress counts budget slots: a FAIL trial that a later trial retries (``retry_of``) is
  counted through its retry only, and the count is capped at the budget, so a bar never reads
  ``3/2``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FINISHED_STATES",
    "finished_count",
    "last_epoch",
    "metric",
    "plain_params",
    "running_progress",
    "state_of",
    "trial_row",
    "trial_seconds",
    "trial_value",
    "trial_worker",
]

FINISHED_STATES = ("complete", "pruned", "fail")


def state_of(trial: dict[str, Any]) -> str:
    """``complete``, ``running``, ``fail``, ``pruned`` or ``waiting``."""
    return str(trial.get("state", "")).lower()


def plain_params(params: dict[str, Any]) -> dict[str, Any]:
    """Fold Optuna's ``<name>_is_zero`` choice (spec ``include_zero``) back into ``<name>``,
    so that a parameter that was drawn as exactly 0 reads 0."""
    shown: dict[str, Any] = {}
    for name, value in params.items():
        if name.endswith("_is_zero"):
            if value:
                shown[name.removesuffix("_is_zero")] = 0.0
        else:
            shown[name] = value
    return shown


def trial_value(trial: dict[str, Any]) -> float | None:
    """The first objective (validation accuracy), or None."""
    values = trial.get("values")
    if isinstance(values, list) and values and isinstance(values[0], int | float):
        return float(values[0])
    value = trial.get("value")
    return float(value) if isinstance(value, int | float) else None


def last_epoch(trial: dict[str, Any]) -> dict[str, Any]:
    epochs = trial.get("epochs")
    return epochs[-1] if isinstance(epochs, list) and epochs else {}


def metric(trial: dict[str, Any], key: str) -> float | None:
    """``key`` from the trial, its user attributes, or else its last epoch."""
    for source in (trial, trial.get("user_attrs") or {}, last_epoch(trial)):
        if isinstance(source, dict) and isinstance(source.get(key), int | float):
            return float(source[key])
    return None


def trial_seconds(trial: dict[str, Any]) -> float | None:
    attrs = trial.get("user_attrs") or {}
    for value in (attrs.get("seconds"), trial.get("duration_s")):
        if isinstance(value, int | float):
            return float(value)
    return None


def trial_worker(trial: dict[str, Any]) -> str | None:
    attrs = trial.get("user_attrs") or {}
    worker = attrs.get("worker_id") or attrs.get("worker")
    return str(worker) if worker else None


def epochs_run(trial: dict[str, Any]) -> int | None:
    attrs = trial.get("user_attrs") or {}
    if isinstance(attrs.get("epochs_run"), int):
        return int(attrs["epochs_run"])
    epoch = last_epoch(trial).get("epoch")
    if isinstance(epoch, int):
        return epoch
    steps = trial.get("intermediate_values") or {}
    return max(int(s) for s in steps) if steps else None


def running_progress(trial: dict[str, Any]) -> tuple[int | None, float | None]:
    """``(epochs done, latest val accuracy)`` of a running trial, from its recorded epochs or,
    where none are recorded, its reported intermediate values."""
    epoch = last_epoch(trial)
    if epoch:
        acc = epoch.get("val_accuracy")
        return epochs_run(trial), float(acc) if isinstance(acc, int | float) else None
    steps = trial.get("intermediate_values") or {}
    if not steps:
        return None, None
    last = max(steps, key=int)
    return int(last), float(steps[last])


def finished_count(trials: list[dict[str, Any]], budget: int | None = None) -> int:
    """Budget slots whose trial has finished (complete, pruned or failed for good): a FAIL
    retried by a later trial is not counted, its last retry is; capped at ``budget``."""
    retried: set[Any] = set()
    for t in trials:  # Optuna's retries name the original (retry_of) and every attempt since
        retried.update(t.get("retry_history") or [])
        retried.add(t.get("retry_of"))
    done = sum(
        1
        for t in trials
        if state_of(t) in FINISHED_STATES
        and not (state_of(t) == "fail" and t.get("number") in retried)
    )
    return done if budget is None else min(done, budget)


def trial_row(trial: dict[str, Any], objectives: list[str]) -> dict[str, Any]:
    """One flat row of ``bnn-tune export`` and ``Client.trials_dataframe``. Column names are
    those of Optuna's ``trials_dataframe`` for a study with metric names: ``value_<objective>``
    (``values_<objective>`` for each of two objectives) and ``params_<name>``."""
    values = trial.get("values") or []
    prefix = "value" if len(objectives) == 1 else "values"
    row: dict[str, Any] = {"number": trial.get("number"), "state": trial.get("state")}
    for index, name in enumerate(objectives):
        row[f"{prefix}_{name}"] = values[index] if index < len(values) else None
    for name, value in plain_params(trial.get("params") or {}).items():
        row[f"params_{name}"] = value
    row.update(
        flip_ratio=metric(trial, "flip_ratio"),
        epochs=epochs_run(trial),
        seconds=trial_seconds(trial),
        worker=trial_worker(trial),
        error=trial.get("error"),
    )
    return row
