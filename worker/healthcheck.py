"""``python -m worker.healthcheck``: exit 0 when this host's workers are alive, 1 otherwise.

The container (or pod) healthcheck of the worker service. A worker refreshes its row in the
worker registry (``bnn_workers``) every heartbeat interval, also while it trains; this check
counts the rows of this host (``socket.gethostname()``, the container or pod name) that are live
by the registry's own rule (:func:`service.workers.live_after_s`, the database's clock) and
wants at least ``--min-live`` of them (``--gpus all`` on a 4-GPU box: ``--min-live 4``).

It reads one row set with one short-lived connection (no pool), so a healthcheck every 30 s per
container costs the database nothing. A database it cannot reach counts as unhealthy: the workers
cannot train either.
"""

from __future__ import annotations

import argparse
import socket
import sys

from sqlalchemy import func, select
from sqlalchemy.pool import NullPool

from service.db import make_engine, session_scope
from service.models import WorkerRecord
from service.settings import Settings
from service.workers import live_after_s

__all__ = ["live_workers", "main"]


def live_workers(database_url: str, hostname: str, live_after: float) -> list[str]:
    """Ids of this host's live workers (not ``stopped``, seen within ``live_after`` seconds)."""
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with session_scope(engine) as session:
            rows = session.execute(
                select(
                    WorkerRecord.worker_id,
                    WorkerRecord.last_seen,
                    func.current_timestamp(),
                ).where(WorkerRecord.hostname == hostname, WorkerRecord.state != "stopped")
            ).all()
    finally:
        engine.dispose()
    live = []
    for worker_id, last_seen, now in rows:
        if now.tzinfo is None or last_seen.tzinfo is None:  # SQLite: naive UTC on both sides
            now, last_seen = now.replace(tzinfo=None), last_seen.replace(tzinfo=None)
        if (now - last_seen).total_seconds() <= live_after:
            live.append(worker_id)
    return sorted(live)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.healthcheck", description=__doc__)
    parser.add_argument("--min-live", type=int, default=1, help="live workers wanted (default 1)")
    parser.add_argument("--hostname", default=socket.gethostname(), help="default: this host")
    args = parser.parse_args(argv)
    settings = Settings()
    try:
        live = live_workers(settings.database_url, args.hostname, live_after_s(settings))
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", said in one line
        print(f"unhealthy: database not reachable: {type(exc).__name__}: {exc}".splitlines()[0])
        return 1
    if len(live) < args.min_live:
        print(f"unhealthy: {len(live)} live worker(s) on {args.hostname}, want {args.min_live}")
        return 1
    print(f"healthy: {len(live)} live worker(s) on {args.hostname}: {', '.join(live)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
