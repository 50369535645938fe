"""Process-level control: SIGTERM/SIGINT -> a stop event, the trial heartbeat thread and the
:class:`Repeater` thread that keeps the worker's registry row fresh.

Optuna's own heartbeat thread only runs inside ``study.optimize``; the worker drives trials with
ask/tell, so it records heartbeats itself (same storage call, same interval).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

from optuna.storages import BaseStorage

from service.lifecycle import db_error_text

__all__ = ["Heartbeat", "Repeater", "install_signal_handlers"]

logger = logging.getLogger(__name__)


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: the running trial finishes its epoch, is recorded and the
    process exits 0. A second SIGINT raises KeyboardInterrupt as usual."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt
        logger.warning("signal %s: finishing the current epoch, then exiting", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


class Heartbeat:
    """``with Heartbeat(storage, trial_id, interval):`` records a heartbeat right away and then
    every ``interval`` seconds until the block ends. Storage errors (database briefly down) are
    logged and retried at the next beat; they never reach the trial."""

    def __init__(
        self,
        storage: BaseStorage,
        trial_id: int,
        interval: float | None,
        on_result: Callable[[bool], None] | None = None,
    ) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval = interval
        self._on_result = on_result  # told whether each beat reached the database
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> bool:
        try:
            self._storage.record_heartbeat(self._trial_id)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried at the next one
            logger.warning("heartbeat of trial %s failed: %s", self._trial_id, db_error_text(exc))
            self._report(False)
            return False
        self._report(True)
        return True

    def _report(self, reached: bool) -> None:
        if self._on_result is not None:
            self._on_result(reached)

    def _run(self) -> None:
        assert self._interval is not None
        while not self._done.wait(self._interval):
            self.beat()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Heartbeat:
        """Beat now, then every interval in a thread (for trials that outlive one block)."""
        if self._interval is None or not hasattr(self._storage, "record_heartbeat"):
            return self
        self.beat()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self._trial_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


class Repeater:
    """A daemon thread that calls ``fn`` once at :meth:`start`, then every ``interval`` seconds
    and soon after each :meth:`poke`, until :meth:`stop`. ``fn`` should handle its own errors;
    anything it lets through is logged, never raised, and the next call comes as planned."""

    def __init__(self, fn: Callable[[], object], interval: float, name: str) -> None:
        self._fn = fn
        self._interval = interval
        self._name = name
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Call ``fn`` again soon (pokes during a call coalesce into one more call)."""
        self._wake.set()

    def stop(self) -> None:
        """No more calls; waits for a call in progress."""
        self._done.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._done.is_set():
            self._wake.clear()
            try:
                self._fn()
            except Exception:  # noqa: BLE001 - the thread outlives one bad call
                logger.exception("%s failed", self._name)
            self._wake.wait(self._interval)
