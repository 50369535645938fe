"""This worker's row in the registry (``bnn_workers``), kept fresh by a background thread.

Written at start, every heartbeat interval (also while a long trial trains) and soon after each
state change: device, state (``idle``/``training``), current study, trials finished, and the
data sets this worker lacks (so the API can say why a study waits); ``stopped`` on a clean exit.
A failed write is logged once per outage and retried at the next beat; it never reaches the
loop or a trial.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from service.db import session_scope
from service.lifecycle import db_error_text
from service.workers import forget_old_workers, register_worker, update_worker
from worker.control import Repeater

__all__ = ["Registration", "device_name"]

logger = logging.getLogger(__name__)


def device_name(device: str) -> str:
    """``NVIDIA H200`` for a CUDA device (the device string itself if torch cannot tell);
    ``cpu`` otherwise."""
    if not device.startswith("cuda"):
        return "cpu"
    try:
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    except Exception:  # noqa: BLE001 - a name for the registry, never a reason to fail
        return device


class Registration:
    """``start()``, ``set(state, study)`` as the loop goes, ``stop()`` at the end."""

    def __init__(
        self,
        engine: Engine,
        worker_id: str,
        device: str,
        interval_s: float,
        trials_finished: Callable[[], int],
    ) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.device = device
        self.trials_finished = trials_finished
        self.status: tuple[str, int | None] = ("idle", None)  # (state, current study), atomic
        self.lacking: dict[str, str] = {}  # data set -> why this worker cannot train it
        self._registered = False
        self._failing = False
        self._device_name: str | None = None  # asked of torch once, by the registry thread
        self._lock = threading.Lock()  # one write at a time (the thread, then stop())
        self._thread = Repeater(self.publish, interval_s, f"registry-{worker_id}")

    def start(self) -> None:
        self._thread.start()

    def set(self, state: str, study_id: int | None) -> None:
        """Record a state change (written soon by the thread, not by the caller)."""
        self.status = (state, study_id)
        self._thread.poke()

    def lacks(self, dataset: str, problem: str | None) -> None:
        """Record whether this worker can load ``dataset`` (None: it can)."""
        before = self.lacking.get(dataset)
        if problem is None:
            self.lacking.pop(dataset, None)
        else:
            self.lacking[dataset] = problem
        if before != problem:
            self._thread.poke()

    def stop(self) -> None:
        """Stop the thread and mark the row ``stopped`` (registering it if it never was)."""
        self._thread.stop()
        self.status = ("stopped", None)
        self.publish()

    def publish(self) -> bool:
        """Write the current state; False (logged) when the database did not take it."""
        with self._lock:
            state, study_id = self.status
            try:
                with session_scope(self.engine) as session:
                    self._write(session, state, study_id)
            except Exception as exc:  # noqa: BLE001 - the registry never stops training
                if not self._failing:
                    logger.warning("worker registry not updated: %s", db_error_text(exc))
                self._failing = True
                return False
            if self._failing:
                logger.info("worker registry updated again")
            self._failing = False
            return True

    def _write(self, session: Session, state: str, study_id: int | None) -> None:
        trials = self.trials_finished()
        lacking = dict(self.lacking)
        if self._registered and update_worker(
            session,
            self.worker_id,
            state=state,
            current_study_id=study_id,
            trials_finished=trials,
            lacking=lacking,
        ):
            return
        if not self._registered:
            forget_old_workers(session)
        if self._device_name is None:
            self._device_name = device_name(self.device)
        register_worker(
            session,
            worker_id=self.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            device=self.device,
            device_name=self._device_name,
            state=state,
            current_study_id=study_id,
            trials_finished=trials,
            lacking=lacking,
        )
        self._registered = True
