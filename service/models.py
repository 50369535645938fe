"""SQLAlchemy 2.0 typed tables owned by BNN-Tune (Optuna owns its own tables in the same DB)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, MetaData, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Base",
    "Study",
    "WorkerRecord",
    "STUDY_STATUSES",
    "ACTIVE_STATUSES",
    "WORKER_STATES",
    "optuna_study_name",
]

STUDY_STATUSES: tuple[str, ...] = (
    "queued",  # created, no worker has started a trial yet
    "running",  # a worker started at least one trial
    "stopping",  # POST /stop: running trials end within a few training steps
    "stopped",  # stopped by request; no trial runs
    "completed",  # the budget (n_trials) is used up and every trial finished
    "failed",  # the study cannot go on (see ``error``)
    "deleted",  # soft-deleted; hidden from the list
)
ACTIVE_STATUSES: tuple[str, ...] = ("queued", "running")
WORKER_STATES: tuple[str, ...] = (
    "idle",  # polling for work
    "training",  # running a trial (or a stacked group) of ``current_study_id``
    "stopped",  # exited cleanly
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def optuna_study_name(study_id: int) -> str:
    """The Optuna study that belongs to our study ``study_id``."""
    return f"bnn-tune-{study_id}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Study(Base):
    """One tuning study: the validated spec, its lifecycle status and its trial budget.

    ``n_claimed`` counts trials that workers have started against the study-wide budget
    ``n_trials``; workers increment it atomically (see ``service.lifecycle.claim_slot``).
    """

    __tablename__ = "bnn_studies"
    __table_args__ = {"sqlite_autoincrement": True}  # never reuse ids (Optuna names use them)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    owner: Mapped[str | None] = mapped_column(String(128))
    optuna_study_name: Mapped[str | None] = mapped_column(String(64), unique=True)
    n_trials: Mapped[int]
    n_claimed: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"Study(id={self.id!r}, name={self.name!r}, status={self.status!r})"


class WorkerRecord(Base):
    """One worker process in the registry (``bnn_workers``), written by the worker itself.

    ``last_seen`` is the database's clock (like Optuna's trial heartbeats), refreshed at least
    every heartbeat interval; whether a worker is live is computed when read
    (:mod:`service.workers`). ``device`` is the worker's resolved device (``cpu``, ``cuda``,
    ``cuda:1``); ``device_name`` e.g. ``NVIDIA H200`` or ``cpu``.
    """

    __tablename__ = "bnn_workers"

    worker_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    device: Mapped[str] = mapped_column(String(32))
    device_name: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime]
    last_seen: Mapped[datetime]
    current_study_id: Mapped[int | None]
    trials_finished: Mapped[int] = mapped_column(default=0)
    state: Mapped[str] = mapped_column(String(16), default="idle")
    # data set -> why this worker cannot load it (a study of it is left to other workers)
    lacking: Mapped[dict[str, Any] | None]

    def __repr__(self) -> str:
        return f"WorkerRecord(worker_id={self.worker_id!r}, state={self.state!r})"
