"""One worker process per GPU: ``bnn-tune worker --gpus all|0,1,...``.

The supervisor starts one child per GPU, each seeing only its own device
(``CUDA_VISIBLE_DEVICES=<id>``, so the child trains on ``cuda`` = that GPU) and named
``<hostname>-gpu<id>`` in the worker registry. Contract:

- a child that exits 0 (``--once`` found no work, ``--max-trials`` reached) is done and not
  restarted; the supervisor exits 0 when every child is done;
- a child that crashes (any other exit status, or a signal) is restarted after a backoff that
  starts at ``backoff_s`` and doubles up to ``backoff_max_s``; it is reset once a child has run
  ``healthy_after_s``, so a crash loop does not hammer the database and a rare crash restarts fast;
- a child that exits 2 (invalid settings) would fail the same way again: every child is stopped and
  the supervisor exits 2;
- SIGTERM/SIGINT are forwarded to every child and the supervisor waits for them (each finishes
  its epoch and records its trial, which is why a container's grace period must outlast an epoch);
  it then exits 0 when every child exited 0, else 1.

Which GPUs ``all`` means: ``CUDA_VISIBLE_DEVICES`` when it is set (Slurm and the NVIDIA container
runtime set it), else the indices ``nvidia-smi`` lists, else ``torch.cuda.device_count()``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

__all__ = [
    "Child",
    "Supervisor",
    "child_argv",
    "parse_gpus",
    "run_supervisor",
    "visible_gpus",
    "worker_command",
]

logger = logging.getLogger(__name__)

INVALID_SETTINGS = 2  # run_worker_process's exit status for settings that cannot work
POLL_S = 0.2


def visible_gpus() -> list[str]:
    """The GPU ids this machine (or container, or Slurm allocation) lets us use."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [part.strip() for part in env.split(",") if part.strip() and part.strip() != "-1"]
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is not None:
        result = subprocess.run(
            [nvidia_smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode == 0:
            return [line.strip() for line in result.stdout.splitlines() if line.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(index) for index in range(torch.cuda.device_count())]


def parse_gpus(text: str, visible: Callable[[], list[str]] = visible_gpus) -> list[str]:
    """``all`` -> every visible GPU; ``0,1`` -> those ids (each a non-negative integer or a
    GPU UUID, no duplicates). ValueError with a one-line reason otherwise."""
    text = text.strip()
    if text == "all":
        gpus = visible()
        if not gpus:
            raise ValueError("--gpus all: no GPU is visible (CUDA_VISIBLE_DEVICES, nvidia-smi)")
        return gpus
    gpus = [part.strip() for part in text.split(",")]
    for gpu in gpus:
        if not (gpu.isdigit() or gpu.startswith(("GPU-", "MIG-"))):
            raise ValueError(f"--gpus: {gpu!r} is not a GPU index (use all or e.g. 0,1)")
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus: {text!r} names a GPU twice")
    return gpus


def worker_command(argv: Sequence[str]) -> list[str]:
    """The child's command: this Python running ``python -m worker`` with ``argv``."""
    return [sys.executable, "-m", "worker", *argv]


# Flags of worker.process.add_worker_arguments a child inherits (``--gpus`` and ``--worker-id``
# are per child; ``--metrics-port`` becomes port + child index).
_FORWARDED = {
    "database_url": "--database-url",
    "device": "--device",
    "data_root": "--data-root",
    "poll_interval": "--poll-interval",
    "compile": "--compile",
    "max_trials": "--max-trials",
    "log_level": "--log-level",
}


def child_argv(args: argparse.Namespace, child: Child) -> list[str]:
    """The worker flags of one child, rebuilt from the supervisor's parsed flags."""
    argv: list[str] = []
    for dest, flag in _FORWARDED.items():
        value = getattr(args, dest, None)
        if value is not None:
            argv += [flag, str(value)]
    if getattr(args, "once", False):
        argv.append("--once")
    if getattr(args, "download", False):
        argv.append("--download")
    port = getattr(args, "metrics_port", None)
    if port:
        argv += ["--metrics-port", str(port + child.index)]
    return argv


def run_supervisor(args: argparse.Namespace) -> int:
    """``--gpus``: one ``python -m worker`` per GPU; 2 with a one-line message for a bad list."""
    device = getattr(args, "device", None) or os.environ.get("BNN_TUNE_DEVICE", "")
    try:
        if device.startswith("cuda:"):
            raise ValueError(f"--gpus: each worker sees one GPU as cuda; not --device {device}")
        gpus = parse_gpus(args.gpus)
    except ValueError as exc:
        logger.error("cannot start: %s", exc)
        return INVALID_SETTINGS
    if args.worker_id:
        os.environ["BNN_TUNE_WORKER_ID"] = args.worker_id
    logger.info("supervising one worker per GPU: %s", ",".join(gpus))
    return Supervisor(gpus, lambda child: worker_command(child_argv(args, child))).run()


@dataclass
class Child:
    """One supervised process: its GPU, the running process and its restart state."""

    gpu: str
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 0.0
    restart_at: float | None = None  # monotonic time of the next start after a crash
    exit_code: int | None = None  # final status once the child is done

    @property
    def done(self) -> bool:
        return self.exit_code is not None


class Supervisor:
    """Runs ``command(child)`` once per GPU until every child is done or a signal arrives."""

    def __init__(
        self,
        gpus: Sequence[str],
        command: Callable[[Child], list[str]],
        *,
        env: Callable[[Child], dict[str, str]] | None = None,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        healthy_after_s: float = 60.0,
    ) -> None:
        self.children = [Child(gpu, index) for index, gpu in enumerate(gpus)]
        self.command = command
        self.env = env or self.child_env
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s
        self.stopping = False
        self.invalid = False

    @staticmethod
    def child_env(child: Child) -> dict[str, str]:
        """The parent's environment, one GPU visible, a worker id naming host and GPU."""
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = child.gpu
        prefix = env.get("BNN_TUNE_WORKER_ID") or socket.gethostname()
        env["BNN_TUNE_WORKER_ID"] = f"{prefix}-gpu{child.gpu}"
        return env

    def run(self) -> int:
        """Supervise until done; the exit status described in the module docstring."""
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        try:
            for child in self.children:
                self._start(child)
            while not all(child.done for child in self.children):
                self._step()
                time.sleep(POLL_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.invalid:
            return INVALID_SETTINGS
        return 0 if all(child.exit_code == 0 for child in self.children) else 1

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logger.warning("signal %s: forwarding to %d worker(s), waiting", signum, self._alive())
        self.stopping = True
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signum)
            elif not child.done:  # waiting for a restart: never starts again
                child.exit_code = 0

    def _alive(self) -> int:
        return sum(1 for c in self.children if c.process is not None and c.process.poll() is None)

    def _start(self, child: Child) -> None:
        command = self.command(child)
        child.process = subprocess.Popen(command, env=self.env(child))  # noqa: S603
        child.started_at = time.monotonic()
        child.restart_at = None
        logger.info("gpu %s: worker pid %s started", child.gpu, child.process.pid)

    def _step(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.done:
                continue
            if child.process is None:  # waiting out a backoff
                if child.restart_at is not None and now >= child.restart_at and not self.stopping:
                    self._start(child)
                continue
            code = child.process.poll()
            if code is not None:
                self._exited(child, code, now)

    def _exited(self, child: Child, code: int, now: float) -> None:
        child.process = None
        if code == 0 or self.stopping:
            child.exit_code = code
            logger.info("gpu %s: worker exited %s", child.gpu, code)
            return
        if code == INVALID_SETTINGS:
            logger.error("gpu %s: worker rejected its settings (exit 2); stopping", child.gpu)
            child.exit_code = code
            self.invalid = True
            self._on_signal(signal.SIGTERM, None)
            return
        if now - child.started_at >= self.healthy_after_s:
            child.backoff_s = 0.0
        child.backoff_s = min(max(child.backoff_s * 2, self.backoff_s), self.backoff_max_s)
        child.restarts += 1
        child.restart_at = now + child.backoff_s
        logger.warning(
            "gpu %s: worker crashed (exit %s); restart %d in %.1fs",
            child.gpu,
            code,
            child.restarts,
            child.backoff_s,
        )
