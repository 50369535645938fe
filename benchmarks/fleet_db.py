"""PostgreSQL servers, throw-away databases and PgBouncer for benchmarks/fleet_load.py.

``private_postgres()`` starts a throw-away cluster (initdb, a free port, many connections) so
that a large fleet cannot exhaust a shared server; ``throwaway_database(admin)`` creates and
drops one database; ``pgbouncer(url, pool_size)`` runs PgBouncer in transaction pooling mode in
front of a database; ``ConnectionSampler`` records the peak number of server connections and
the transactions a database ran.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["ConnectionSampler", "pgbouncer", "private_postgres", "throwaway_database"]


def _conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _as_user(command: list[str]) -> list[str]:
    """PostgreSQL and PgBouncer refuse to run as root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """A throw-away cluster on a free port; yields its admin URL."""
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    tmp = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
    os.chmod(tmp, 0o777)
    data, port = tmp / "data", _free_port()
    subprocess.run(
        _as_user([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c max_connections=2000"
    options += " -c shared_buffers=128MB -c fsync=off"
    start = [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(tmp / "log"), "-w"]
    subprocess.run(_as_user([*start, "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run(_as_user(stop), capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def throwaway_database(admin: str) -> Iterator[tuple[str, str]]:
    """Yields (SQLAlchemy URL, database name); dropped at the end."""
    import psycopg

    name = f"bnn_tune_fleet_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_conninfo(admin), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = _conninfo(admin).rpartition("/")[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}", name
    finally:
        with psycopg.connect(_conninfo(admin), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def pgbouncer(server_url: str, pool_size: int) -> Iterator[str]:
    """PgBouncer in transaction pooling mode in front of ``server_url``; yields the URL through
    it (same database, user and password)."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise SystemExit("pgbouncer not installed (apt-get install pgbouncer)")
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    tmp = Path(tempfile.mkdtemp(prefix="fleet-pgb-"))
    os.chmod(tmp, 0o777)
    port = _free_port()
    (tmp / "users.txt").write_text(f'"{server.username}" ""\n')
    (tmp / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.host} port={server.port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {tmp / 'users.txt'}\n"
        "pool_mode = transaction\nmax_client_conn = 10000\n"
        f"default_pool_size = {pool_size}\nreserve_pool_size = 0\n"
        "server_reset_query =\nignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {tmp / 'log'}\npidfile = {tmp / 'pid'}\n"
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # one descriptor per client
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20000)), hard))
    process = subprocess.Popen(_as_user([binary, "-q", str(tmp / "pgbouncer.ini")]))
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"pgbouncer did not start: {(tmp / 'log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield server._replace(port=port).render_as_string(hide_password=False)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


class ConnectionSampler:
    """Peak number of server connections to one database, sampled every 50 ms."""

    def __init__(self, admin: str, database: str) -> None:
        self.admin, self.database = admin, database
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()

    def transactions(self) -> int:
        """Transactions the server has committed or rolled back in the database so far."""
        import psycopg

        query = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s"
        with psycopg.connect(_conninfo(self.admin), autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(query, (self.database,)).fetchone()
        return int(row[0]) if row else 0

    def _run(self) -> None:
        import psycopg

        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        with psycopg.connect(_conninfo(self.admin), autocommit=True) as conn:
            while not self._stop.wait(0.05):
                count = conn.execute(query, (self.database,)).fetchone()
                self.peak = max(self.peak, int(count[0]) if count else 0)
