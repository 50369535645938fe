"""Per-trial overhead of the service + Optuna in the worker, vs. the training time of a trial.

    python benchmarks/worker_overhead.py [--trials 20] [--epochs 10] [--postgres URL]

Runs the real worker loop (claim, ask, sample, heartbeat, per-epoch attrs/report/prune check,
stop check, tell, completion check) with a trainer that does no work, on SQLite and on
PostgreSQL, and prints the time per phase; then trains one real digits trial (mlp, same epochs)
for comparison. PostgreSQL gets a throw-away database that is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bnn_core.config import EpochMetrics, TrainConfig, TrainResult  # noqa: E402
from service.db import make_engine  # noqa: E402
from service.migrate import upgrade  # noqa: E402
from service.spec import parse_spec  # noqa: E402
from service.studies import create_study, make_optuna_storage  # noqa: E402
from worker import loop  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402

TIMES: dict[str, list[float]] = defaultdict(list)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - start)

    return wrapper


def no_work_train(config: TrainConfig, on_epoch_end: Any = None) -> TrainResult:
    history = []
    for epoch in range(1, config.epochs + 1):
        metrics = EpochMetrics(
            epoch, 1.0, 0.5, 1.0, 0.5 + epoch / 100, 0.01, {"0": 0.01, "3": 0.02}, {"g": 1.0}, 0.0
        )
        history.append(metrics)
        start = time.perf_counter()
        stop = on_epoch_end(metrics) if on_epoch_end is not None else False
        TIMES["epoch callback (attrs+report+prune+stop check)"].append(time.perf_counter() - start)
        if stop:
            break
    return TrainResult(config, history)


def instrument() -> None:
    loop.Worker.claim_trial = timed(
        "claim (stale check + budget UPDATE + ask)", loop.Worker.claim_trial
    )
    loop.prepare_trial = timed("sample + config attrs", loop.prepare_trial)
    loop.tell_outcome = timed("tell (+ outcome attrs)", loop.tell_outcome)
    loop.Worker.maybe_complete = timed("completion check (idle poll)", loop.Worker.maybe_complete)
    loop.Heartbeat.beat = timed("heartbeat (one beat)", loop.Heartbeat.beat)


def spec(n_trials: int, epochs: int) -> Any:
    return parse_spec(
        {
            "name": f"bench-{uuid.uuid4().hex[:8]}",
            "optimizer": "bop",
            "model": "mlp",
            "dataset": "digits",
            "epochs": epochs,
            "n_trials": n_trials,
            "sampler": {"name": "tpe", "seed": 0},
        }
    )


def measure(url: str, n_trials: int, epochs: int) -> tuple[float, dict[str, float]]:
    TIMES.clear()
    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        study_id = create_study(session, make_optuna_storage(url), spec(n_trials, epochs)).id
    engine.dispose()
    settings = WorkerSettings(database_url=url, device="cpu", heartbeat_interval_s=60)
    start = time.perf_counter()
    stats = loop.run_study(study_id, settings, train_fn=no_work_train)
    wall = time.perf_counter() - start
    assert stats.trials == n_trials, stats
    per_trial = {k: sum(v) / n_trials for k, v in TIMES.items()}
    return wall / n_trials, per_trial


def train_seconds(epochs: int) -> float:
    from bnn_core.train import train

    train(TrainConfig(model="mlp", dataset="digits", epochs=1))  # warm-up (imports, data)
    start = time.perf_counter()
    train(TrainConfig(model="mlp", dataset="digits", epochs=epochs, batch_size=100))
    return time.perf_counter() - start


def postgres_url(admin: str) -> tuple[str, Callable[[], None]]:
    import psycopg

    name = f"bnn_tune_bench_{uuid.uuid4().hex[:8]}"
    conninfo = admin.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    base = conninfo.rpartition("/")[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    instrument()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("sqlite", *measure(f"sqlite:///{tmp}/bench.db", args.trials, args.epochs)))
    url, drop = postgres_url(args.postgres)
    try:
        rows.append(("postgresql", *measure(url, args.trials, args.epochs)))
    finally:
        drop()
    training = train_seconds(args.epochs)
    print(f"{args.trials} trials x {args.epochs} epochs, no-op trainer (all time is overhead)")
    for name, per_trial, phases in rows:
        print(f"\n{name}: {per_trial * 1000:.1f} ms per trial in total")
        for phase, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
            print(f"  {phase:<52} {seconds * 1000:8.1f} ms/trial")
    print(f"\none real digits trial (mlp, {args.epochs} epochs, CPU): {training * 1000:.0f} ms")
    for name, per_trial, _ in rows:
        print(
            f"  {name} overhead = {100 * per_trial / training:.1f}% of that trial's training time"
        )


if __name__ == "__main__":
    main()
