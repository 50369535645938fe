"""Ports and child processes for ``bnn-tune``: a free port, a check that a port is free (so a
busy one is a one-line error, not a server's traceback), a process that is always stopped on
exit (``demo``), and polling with a deadline."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from service.cli.errors import CliError

__all__ = ["background", "check_port_free", "free_port", "stop_process", "wait_until"]


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """CliError naming the port when ``host:port`` cannot be bound (in use, or not allowed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {host}:{port} ({exc.strerror}); "
                "is another server running there? choose another --port"
            ) from None


@contextlib.contextmanager
def background(command: Sequence[str], log: Path, env: dict[str, str]) -> Iterator[Any]:
    """Run ``command`` with output to ``log``; terminate it (then kill) on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        process = subprocess.Popen(
            list(command), stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        try:
            yield process
        finally:
            stop_process(process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise CliError(f"timed out after {timeout:.0f}s waiting for {what}")
