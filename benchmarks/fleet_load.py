"""Fleet load test: K simulated workers against one PostgreSQL, with and without PgBouncer.

    python benchmarks/fleet_load.py --private-postgres              # K = 8, 32, 128
    python benchmarks/fleet_load.py --private-postgres --workers 8,32,128,256 --modes pgbouncer
    python benchmarks/fleet_load.py --quick                          # K = 4, the shared server

Each simulated worker is the real worker (``worker.loop.run_worker``: registry row, claim within
the study-wide budget, ask, heartbeat, per-epoch report and stop check, tell, completion check)
with a trainer that does no work, so all time is coordination. Workers are threads spread over
``--processes`` processes (a process per worker would need a torch import each). One study with
``K x --trials-per-worker`` trials; every worker exits when no trial is left (``once``).

Reported per run: trials coordinated per second, p50/p99 latency of a claim (retry or budget
claim + ask) and of a tell, peak connections the PostgreSQL server saw for the database
(``pg_stat_activity``, sampled every 50 ms), duplicates (a trial told twice), zombies (RUNNING
trials left), budget overshoot (finished trials beyond ``n_trials``) and database transactions per
trial (``pg_stat_database``: startup, polling and registry included), the figure that scales a
fleet's load on paper.

Modes: ``direct`` (every worker its own pools to PostgreSQL) and ``pgbouncer`` (the same workers
through a PgBouncer in transaction pooling mode, ``default_pool_size`` server connections).
PgBouncer before 1.21 cannot carry psycopg's automatic prepared statements across
transactions; in that mode this script turns them off in the worker processes (in production
use PgBouncer >= 1.21 with ``max_prepared_statements``, as deploy/k8s does). The workers open
Optuna's storage as production does (``service.lifecycle.make_storage`` skips Optuna's per-open
schema check, which deadlocks a pool smaller than a fleet starting at once).

``--private-postgres`` starts a throw-away PostgreSQL cluster (initdb, a free port,
``max_connections=2000``) so a large K cannot exhaust a shared server's connections. Without
it, ``--postgres`` names an admin URL and each run gets a throw-away database there.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fleet_db import (  # noqa: E402
    ConnectionSampler,
    pgbouncer,
    private_postgres,
    throwaway_database,
)

DEFAULT_ADMIN = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


# -- the simulated worker (runs in child processes) -------------------------------------------


def _no_work_train(config: Any, on_epoch_end: Any = None) -> Any:
    from bnn_core.config import EpochMetrics, TrainResult

    history = []
    for epoch in range(1, config.epochs + 1):
        metrics = EpochMetrics(epoch, 1.0, 0.5, 1.0, 0.5 + epoch / 100, 0.01, {}, {}, 0.0)
        history.append(metrics)
        if on_epoch_end is not None and on_epoch_end(metrics):
            break
    return TrainResult(config, history)


def _instrument(claims: list[float], tells: list[float], told: list[int]) -> None:
    """Time the claim and the tell where the worker does them (``worker.study_run`` since the
    loop was split; ``worker.loop`` before)."""
    import importlib

    def timed(owner: Any, name: str, into: list[float], on_call: Callable | None = None) -> bool:
        original = getattr(owner, name, None)
        if original is None:
            return False

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - start)
                if on_call is not None:
                    on_call(*args)

        setattr(owner, name, wrapper)
        return True

    def record_tell(_study: Any, trial: Any, *_: Any) -> None:
        told.append(trial.number)

    try:
        run = importlib.import_module("worker.study_run")
        timed(run.StudyRun, "claim", claims)
        timed(run, "tell_outcome", tells, record_tell)
    except ImportError:
        loop = importlib.import_module("worker.loop")
        timed(loop.Worker, "claim_trial", claims)
        timed(loop, "tell_outcome", tells, record_tell)


def _no_prepared_statements() -> None:
    """psycopg prepares a statement after 5 runs on a connection; PgBouncer < 1.21 in
    transaction mode may run the next transaction on another server connection."""
    import psycopg

    original = psycopg.Connection.connect.__func__

    def connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["prepare_threshold"] = None
        return original(cls, *args, **kwargs)

    psycopg.Connection.connect = classmethod(connect)  # type: ignore[method-assign]
    psycopg.connect = psycopg.Connection.connect  # the module-level alias SQLAlchemy calls


def _worker_process(
    url: str,
    study_id: int,
    names: list[str],
    epochs: int,
    plain: bool,
    go: Any,
    out: Any,
) -> None:
    import logging

    import optuna

    from worker.loop import run_worker
    from worker.settings import WorkerSettings

    logging.basicConfig(level=logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if plain:
        _no_prepared_statements()
    claims: list[float] = []
    tells: list[float] = []
    told: list[int] = []
    _instrument(claims, tells, told)
    errors: list[str] = []

    def one(name: str) -> None:
        settings = WorkerSettings(
            database_url=url, device="cpu", worker_id=name, once=True, poll_interval_s=0.05
        )
        try:
            run_worker(settings, study_ids=[study_id], train_fn=_no_work_train)
        except Exception as exc:  # noqa: BLE001 - reported, never hidden
            errors.append(f"{name}: {type(exc).__name__}: {exc}"[:300])

    out.put(("ready", None))
    go.wait()
    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(("done", (claims, tells, told, errors)))


# -- one run -----------------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    workers: int
    trials: int
    seconds: float
    claim_p50_ms: float
    claim_p99_ms: float
    tell_p50_ms: float
    tell_p99_ms: float
    peak_connections: int
    duplicates: int
    zombies: int
    overshoot: int
    transactions: int
    errors: list[str]

    @property
    def per_second(self) -> float:
        return self.trials / self.seconds if self.seconds else 0.0


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1] * 1000


def _create_study(url: str, n_trials: int, epochs: int) -> int:
    from sqlalchemy.orm import Session

    from service.db import make_engine
    from service.migrate import upgrade
    from service.spec import parse_spec
    from service.studies import create_study, make_optuna_storage

    upgrade(url)
    spec = parse_spec(
        {
            "name": f"fleet-{uuid.uuid4().hex[:8]}",
            "optimizer": "bop",
            "model": "mlp",
            "dataset": "digits",
            "epochs": epochs,
            "n_trials": n_trials,
            "sampler": {"name": "random", "seed": 0},
        }
    )
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            study = create_study(session, make_optuna_storage(url), spec)
            session.commit()
            return int(study.id)
    finally:
        engine.dispose()


def _final_state(url: str, study_id: int) -> tuple[int, int, int]:
    """(finished trials that count against the budget, RUNNING trials, n_claimed)."""
    import optuna
    from sqlalchemy import select

    from service.db import make_engine, session_scope
    from service.models import Study
    from service.studies import make_optuna_storage

    engine = make_engine(url)
    with session_scope(engine) as session:
        row = session.execute(select(Study).where(Study.id == study_id)).scalar_one()
        name, claimed = row.optuna_study_name, row.n_claimed
    engine.dispose()
    storage = make_optuna_storage(url)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    # Each retry (a WAITING copy of a FAIL, system_attrs["failed_trial"]) replaces that FAIL.
    finished = sum(1 for t in trials if t.state.is_finished())
    finished -= sum(1 for t in trials if "failed_trial" in t.system_attrs)
    running = sum(1 for t in trials if t.state == optuna.trial.TrialState.RUNNING)
    storage.engine.dispose()
    return finished, running, claimed


def run_once(args: argparse.Namespace, admin: str, mode: str, workers: int) -> Result:
    n_trials = workers * args.trials_per_worker
    with throwaway_database(admin) as (url, database):
        study_id = _create_study(url, n_trials, args.epochs)
        bouncer = pgbouncer(url, args.pool_size) if mode == "pgbouncer" else None
        with bouncer or contextlib.nullcontext(url) as worker_url:
            ctx = mp.get_context("spawn")
            go, out = ctx.Event(), ctx.Queue()
            names = [f"fleet-{i:04d}" for i in range(workers)]
            groups = [names[p :: args.processes] for p in range(args.processes)]
            processes = [
                ctx.Process(
                    target=_worker_process,
                    args=(
                        worker_url,
                        study_id,
                        group,
                        args.epochs,
                        mode == "pgbouncer",
                        go,
                        out,
                    ),
                )
                for group in groups
                if group
            ]
            for process in processes:
                process.start()
            for _ in processes:
                out.get(timeout=300)  # every process imported torch, optuna, ...
            with ConnectionSampler(admin, database) as sampler:
                before = sampler.transactions()
                start = time.perf_counter()
                go.set()
                results = [out.get(timeout=args.time_limit) for _ in processes]
                seconds = time.perf_counter() - start
            for process in processes:
                process.join(timeout=60)
        # Server connections (the workers', PgBouncer's) are closed now: a backend flushes its
        # statistics when it exits, so the count is complete.
        time.sleep(1.0)
        transactions = sampler.transactions() - before
        finished, running, claimed = _final_state(url, study_id)
    claims = [v for _, r in results for v in r[0]]
    tells = [v for _, r in results for v in r[1]]
    told = [v for _, r in results for v in r[2]]
    errors = [e for _, r in results for e in r[3]]
    return Result(
        mode,
        workers,
        len(told),
        seconds,
        _quantile(claims, 0.5),
        _quantile(claims, 0.99),
        _quantile(tells, 0.5),
        _quantile(tells, 0.99),
        sampler.peak,
        len(told) - len(set(told)),
        running,
        max(finished - n_trials, 0) + max(claimed - n_trials, 0),
        transactions,
        errors,
    )


def print_table(results: list[Result]) -> None:
    header = (
        "| mode | K workers | trials | trials/s | claim p50 / p99 ms | tell p50 / p99 ms "
        "| peak server connections | duplicates | zombies | overshoot | transactions/trial |"
    )
    print(header)
    print("|---" * 11 + "|")
    for r in results:
        print(
            f"| {r.mode} | {r.workers} | {r.trials} | {r.per_second:.1f} "
            f"| {r.claim_p50_ms:.0f} / {r.claim_p99_ms:.0f} | {r.tell_p50_ms:.0f} / "
            f"{r.tell_p99_ms:.0f} | {r.peak_connections} | {r.duplicates} | {r.zombies} "
            f"| {r.overshoot} | {r.transactions / max(r.trials, 1):.0f} |"
        )
    for r in results:
        for error in r.errors[:5]:
            print(f"error ({r.mode}, K={r.workers}): {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="8,32,128", help="K values (default %(default)s)")
    parser.add_argument("--modes", default="direct,pgbouncer", help="direct and/or pgbouncer")
    parser.add_argument("--trials-per-worker", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2, help="processes holding the workers")
    parser.add_argument("--pool-size", type=int, default=20, help="PgBouncer server connections")
    parser.add_argument("--time-limit", type=float, default=600, help="seconds per run")
    parser.add_argument("--postgres", default=DEFAULT_ADMIN, help="admin URL (throw-away DBs)")
    parser.add_argument("--private-postgres", action="store_true", help="start a private cluster")
    parser.add_argument("--quick", action="store_true", help="K=4, 2 trials each, direct only")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.modes, args.trials_per_worker, args.processes = "4", "direct", 2, 1
    ks = [int(k) for k in args.workers.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    if bad := set(modes) - {"direct", "pgbouncer"}:
        parser.error(f"--modes: unknown {sorted(bad)}")
    results = []
    cluster = (
        private_postgres() if args.private_postgres else contextlib.nullcontext(args.postgres)
    )
    with cluster as admin:
        for k in ks:
            for mode in modes:
                result = run_once(args, admin, mode, k)
                results.append(result)
                print(
                    f"{mode} K={k}: {result.trials} trials in {result.seconds:.1f}s, "
                    f"peak {result.peak_connections} connections",
                    flush=True,
                )
    print()
    print_table(results)
    bad_runs = [r for r in results if r.duplicates or r.zombies or r.overshoot or r.errors]
    return 1 if bad_runs else 0


if __name__ == "__main__":
    sys.exit(main())
