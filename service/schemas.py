"""API response shapes (requests are :class:`service.spec.StudySpec`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Links",
    "StudyCreated",
    "BestTrial",
    "Progress",
    "Budget",
    "StudyPublic",
    "StudySummary",
    "StudiesPublic",
    "TrialPublic",
    "TrialsPublic",
    "WorkerPublic",
    "WorkersPublic",
    "ErrorBody",
]


class Links(BaseModel):
    self: str
    trials: str
    stop: str
    plots: str


class StudyCreated(BaseModel):
    id: int
    name: str
    status: str
    optuna_study_name: str
    links: Links


class BestTrial(BaseModel):
    number: int
    values: list[float]
    params: dict[str, Any]
    rates: dict[str, float] = Field(
        default_factory=dict,
        description="EMA rates derived from the cutoffs the trial sampled (params "
        "'gamma_cutoff' -> rates 'gamma', cycles per step -> rate; user_attr 'rates').",
    )

    @property
    def value(self) -> float:
        return self.values[0]


class Progress(BaseModel):
    n_complete: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    n_running: int = 0
    n_waiting: int = 0
    n_total: int = 0


class Budget(BaseModel):
    n_trials: int
    n_claimed: int
    n_remaining: int


class StudySummary(BaseModel):
    """One row of the list."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    status: str
    owner: str | None
    optimizer: str
    n_trials: int
    n_claimed: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    waiting_reason: str | None = Field(
        None,
        description="Why a queued or running study gets no trials, e.g. 'no live worker can "
        "train on cuda (live workers: 2 on cpu)'; null when a live worker can train it.",
    )


class StudyPublic(StudySummary):
    """One study with progress, budget and best trial(s)."""

    optuna_study_name: str | None
    spec: dict[str, Any]
    directions: list[str]
    eval_protocol: str = Field(
        "holdout",
        description="Where 'val' is measured: 'holdout' (a held-out part of the training set) "
        "or 'test' (REPRODUCTION MODE: 'val' is the test set; tuning on it is leakage).",
    )
    error: str | None
    progress: Progress
    budget: Budget
    best_trial: BestTrial | None = Field(
        None, description="Single-objective: the best COMPLETE trial so far."
    )
    best_value: float | None = None
    pareto_front: list[BestTrial] | None = Field(
        None, description="Multi-objective: the Pareto-optimal COMPLETE trials."
    )
    links: Links


class StudiesPublic(BaseModel):
    data: list[StudySummary]
    count: int


class TrialPublic(BaseModel):
    number: int
    state: str
    params: dict[str, Any]
    values: list[float] | None
    datetime_start: datetime | None
    datetime_complete: datetime | None
    duration_s: float | None
    epochs: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Per-epoch curves from user_attr 'epochs': epoch, train_loss, "
        "train_accuracy, val_loss, val_accuracy, flip_ratio, flip_ratio_per_layer, "
        "hyperparameters, seconds.",
    )
    intermediate_values: dict[int, float] = Field(default_factory=dict)
    error: str | None = None
    retry_of: int | None = Field(None, description="Trial number this one retries.")
    retry_history: list[int] = Field(default_factory=list)
    rates: dict[str, float] = Field(
        default_factory=dict,
        description="EMA rates derived from the cutoffs the trial sampled (params "
        "'gamma_cutoff' -> rates 'gamma', cycles per step -> rate; user_attr 'rates').",
    )
    user_attrs: dict[str, Any] = Field(default_factory=dict)


class TrialsPublic(BaseModel):
    data: list[TrialPublic]
    count: int


class WorkerPublic(BaseModel):
    """One registered worker process (``GET /workers``)."""

    worker_id: str
    hostname: str
    pid: int
    device: str = Field(description="The worker's resolved device: cpu, cuda or cuda:N.")
    device_name: str = Field(description="e.g. 'NVIDIA H200', or 'cpu'.")
    state: str = Field(description="idle, training or stopped.")
    live: bool = Field(
        description="Not stopped and seen within max(grace_period_s, 2 * heartbeat_interval_s)."
    )
    started_at: datetime
    last_seen: datetime
    seen_s_ago: float = Field(description="Seconds since last_seen (the database's clock).")
    current_study_id: int | None
    trials_finished: int


class WorkersPublic(BaseModel):
    data: list[WorkerPublic]
    count: int


class ErrorBody(BaseModel):
    detail: str
    errors: list[dict[str, str]] | None = None
