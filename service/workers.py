"""The worker registry (table ``bnn_workers``) and the one rule of which worker trains what.

Workers write their own row (:mod:`worker.loop`); the API and the CLI read it to list workers and
to say why a study waits. Time is the database's clock (``CURRENT_TIMESTAMP``) on both sides,
like Optuna's trial heartbeats, so clock skew between machines does not matter.

A worker is **live** when its state is not ``stopped`` and it was seen within
:func:`live_after_s` (``max(grace_period_s, 2 * heartbeat_interval_s)``: a live worker refreshes
its row every heartbeat interval, and a worker silent for the grace period is as dead as a trial
without heartbeat). Functions take a session and never commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from service.models import ACTIVE_STATUSES, Study, WorkerRecord
from service.schemas import WorkerPublic
from service.settings import Settings

__all__ = [
    "FORGET_AFTER_S",
    "device_kind",
    "can_train",
    "live_after_s",
    "register_worker",
    "update_worker",
    "mark_worker_stopped",
    "forget_old_workers",
    "list_workers",
    "live_worker_devices",
    "reason_to_wait",
    "study_device",
    "study_dataset",
    "dataset_key",
    "waiting_reason",
]

FORGET_AFTER_S = 7 * 24 * 3600  # rows not seen for a week are deleted when a worker registers
ANY_DEVICE = ("auto", "cpu")  # study devices that every worker can train


def device_kind(device: str) -> str:
    """``cuda:1`` -> ``cuda``; ``cpu`` -> ``cpu``."""
    return device.split(":")[0]


def can_train(worker_device: str, study_device: str) -> bool:
    """Whether a worker on ``worker_device`` (resolved: ``cpu``, ``cuda``, ``cuda:N``) takes a
    study whose spec says ``device: study_device``.

    A study that asks for ``cuda``/``cuda:N``/``mps`` is left to workers with that kind of device
    (a CPU worker would train it on the CPU, silently and slowly); ``auto`` and ``cpu`` studies
    run anywhere. Which GPU is the worker's choice (``CUDA_VISIBLE_DEVICES``), so ``cuda:1``
    studies run on any CUDA worker. The one rule of the worker loop and of :func:`waiting_reason`.
    """
    wanted = device_kind(study_device)
    return wanted in ANY_DEVICE or device_kind(worker_device) == wanted


def live_after_s(settings: Settings) -> float:
    """Seconds since ``last_seen`` after which a worker no longer counts as live."""
    return float(max(settings.grace_period_s, 2 * settings.heartbeat_interval_s))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def register_worker(
    session: Session,
    *,
    worker_id: str,
    hostname: str,
    pid: int,
    device: str,
    device_name: str,
    state: str = "idle",
    current_study_id: int | None = None,
    trials_finished: int = 0,
    lacking: dict[str, str] | None = None,
) -> None:
    """Insert this worker's row, or reset it when the id is taken (a restart with the same
    ``worker_id``): ``started_at`` and ``last_seen`` become now."""
    now = func.current_timestamp()
    values = {
        "hostname": hostname,
        "pid": pid,
        "device": device,
        "device_name": device_name,
        "started_at": now,
        "last_seen": now,
        "state": state,
        "current_study_id": current_study_id,
        "trials_finished": trials_finished,
        "lacking": lacking or {},
    }
    result = session.execute(
        update(WorkerRecord)
        .where(WorkerRecord.worker_id == worker_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:
        session.execute(insert(WorkerRecord).values(worker_id=worker_id, **values))


def update_worker(
    session: Session,
    worker_id: str,
    *,
    state: str,
    current_study_id: int | None,
    trials_finished: int,
    lacking: dict[str, str] | None = None,
) -> bool:
    """Refresh ``last_seen`` and the worker's state (and the data sets it lacks, when given);
    False when it has no row (register it)."""
    values: dict[str, object] = {
        "last_seen": func.current_timestamp(),
        "state": state,
        "current_study_id": current_study_id,
        "trials_finished": trials_finished,
    }
    if lacking is not None:
        values["lacking"] = lacking
    result = session.execute(
        update(WorkerRecord)
        .where(WorkerRecord.worker_id == worker_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def mark_worker_stopped(session: Session, worker_id: str, *, trials_finished: int) -> bool:
    """The worker exited cleanly; False when it has no row."""
    return update_worker(
        session, worker_id, state="stopped", current_study_id=None, trials_finished=trials_finished
    )


def forget_old_workers(session: Session, older_than_s: float = FORGET_AFTER_S) -> int:
    """Delete rows not seen for ``older_than_s`` (every restart of a worker with the default id
    ``<hostname>-<pid>`` adds a row); how many went."""
    cutoff = _db_now(session) - timedelta(seconds=older_than_s)
    result = session.execute(
        delete(WorkerRecord)
        .where(WorkerRecord.last_seen < cutoff)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def _db_now(session: Session) -> datetime:
    return _utc(session.scalar(select(func.current_timestamp())))


def _is_live(state: str, seen_s_ago: float, live_after: float) -> bool:
    return state != "stopped" and seen_s_ago <= live_after


def list_workers(session: Session, live_after: float) -> list[WorkerPublic]:
    """Every registered worker (one query), live ones first, then by id."""
    rows = session.execute(
        select(WorkerRecord, func.current_timestamp()).order_by(WorkerRecord.worker_id)
    ).all()
    workers = []
    for record, now in rows:
        seen_s_ago = max((_utc(now) - record.last_seen).total_seconds(), 0.0)
        workers.append(
            WorkerPublic(
                worker_id=record.worker_id,
                hostname=record.hostname,
                pid=record.pid,
                device=record.device,
                device_name=record.device_name,
                state=record.state,
                live=_is_live(record.state, seen_s_ago, live_after),
                started_at=record.started_at,
                last_seen=record.last_seen,
                seen_s_ago=round(seen_s_ago, 3),
                current_study_id=record.current_study_id,
                trials_finished=record.trials_finished,
            )
        )
    return sorted(workers, key=lambda w: not w.live)  # stable: by id within each group


def live_worker_devices(session: Session, live_after: float) -> list[tuple[str, dict[str, str]]]:
    """``(device, lacking)`` of each live worker (one query over the rows not ``stopped``):
    its device and the data sets it cannot load."""
    rows = session.execute(
        select(
            WorkerRecord.device,
            WorkerRecord.lacking,
            WorkerRecord.last_seen,
            func.current_timestamp(),
        ).where(WorkerRecord.state != "stopped")
    ).all()
    return [
        (device, dict(lacking or {}))
        for device, lacking, last_seen, now in rows
        if (_utc(now) - _utc(last_seen)).total_seconds() <= live_after
    ]


def reason_to_wait(
    status: str,
    study_device: str,
    live_workers: Iterable[str | tuple[str, dict[str, str]]],
    dataset: str | None = None,
) -> str | None:
    """Why a study in ``status`` that wants ``study_device`` (and data set ``dataset``, a
    :func:`dataset_key`) gets no trials, given the live workers (a device, or ``(device,
    lacking)``); None when some live worker can train it or it has no work left."""
    if status not in ACTIVE_STATUSES:
        return None
    workers = [(w, {}) if isinstance(w, str) else w for w in live_workers]
    if not workers:
        return "no live worker"
    able = [(device, lacking) for device, lacking in workers if can_train(device, study_device)]
    if not able:
        counts = Counter(device for device, _ in workers)
        live = ", ".join(f"{n} on {device}" for device, n in sorted(counts.items()))
        return f"no live worker can train on {study_device} (live workers: {live})"
    if dataset is None or any(dataset not in lacking for _, lacking in able):
        return None
    why = sorted({lacking[dataset] for _, lacking in able})
    return f"no live worker has data set {dataset} ({'; '.join(why)[:500]})"


def dataset_key(dataset: str, data_subdir: str | None = None) -> str:
    """How a worker names a data set it lacks: ``cifar10``, or ``cifar10 in <subdir>`` when
    the spec names the folder under the worker's data root."""
    return f"{dataset} in {data_subdir}" if data_subdir else dataset


def study_dataset(study: Study) -> str:
    """The :func:`dataset_key` of the study's stored spec."""
    return dataset_key(str(study.spec.get("dataset")), study.spec.get("data_subdir"))


def study_device(study: Study) -> str:
    """The ``device`` of the study's stored spec (``auto`` when absent)."""
    return str(study.spec.get("device") or "auto")


def waiting_reason(session: Session, study: Study, live_after: float) -> str | None:
    """:func:`reason_to_wait` for one study (no query unless it is queued or running)."""
    if study.status not in ACTIVE_STATUSES:
        return None
    workers = live_worker_devices(session, live_after)
    return reason_to_wait(study.status, study_device(study), workers, study_dataset(study))
