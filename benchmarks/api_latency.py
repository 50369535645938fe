"""API latency: POST /api/v1/studies and GET /api/v1/studies/{id} against a real uvicorn server.

Starts ``uvicorn service.app:create_app --factory`` in a subprocess on loopback, migrates the
database first, sends ``--n`` creates then ``--n`` gets sequentially with one httpx client, and
prints p50/p99 per operation. With ``--trials N`` (N > 0) it then fills one more study with N
Optuna trials and times GET /studies/{id} and GET /studies/{id}/trials (first and last page).

    python benchmarks/api_latency.py                      # SQLite in a temporary directory
    python benchmarks/api_latency.py --database-url postgresql+psycopg://postgres@127.0.0.1/bench
    python benchmarks/api_latency.py --n 20 --trials 2000 # a large study

Studies are created with a random name prefix and left in the database.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.migrate import upgrade  # noqa: E402
from service.spec import SPEC_EXAMPLES  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(database_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BNN_TUNE_DATABASE_URL": database_url}
    env.pop("BNN_TUNE_API_KEY", None)
    command = [
        sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, env=env)


def _wait_ready(base: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def _percentiles(samples_ms: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return statistics.median(samples_ms), cuts[98]


def _run(base: str, n: int, warmup: int) -> dict[str, list[float]]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    timings: dict[str, list[float]] = {"create": [], "get": []}
    ids: list[int] = []
    with httpx.Client(base_url=base, timeout=30) as http:
        for i in range(warmup + n):
            spec = {**SPEC_EXAMPLES["bop"], "name": f"{prefix}-{i}"}
            start = time.perf_counter()
            response = http.post("/api/v1/studies", json=spec)
            elapsed = (time.perf_counter() - start) * 1e3
            response.raise_for_status()
            ids.append(response.json()["id"])
            if i >= warmup:
                timings["create"].append(elapsed)
        for i, study_id in enumerate(ids):
            start = time.perf_counter()
            http.get(f"/api/v1/studies/{study_id}").raise_for_status()
            if i >= warmup:
                timings["get"].append((time.perf_counter() - start) * 1e3)
    return timings


def _fill(url: str, optuna_name: str, n_trials: int) -> None:
    """``n_trials`` finished trials (mostly COMPLETE, with a few epochs each) in one study."""
    study = optuna.load_study(study_name=optuna_name, storage=url)
    dist = {"gamma": FloatDistribution(1e-6, 1e-2, log=True)}
    states = [TrialState.COMPLETE] * 8 + [TrialState.PRUNED, TrialState.FAIL]
    trials = []
    for i in range(n_trials):
        state = states[i % len(states)]
        epochs = [{"epoch": e, "val_accuracy": 0.1 * e, "seconds": 0.5} for e in range(1, 6)]
        trials.append(
            create_trial(
                state=state,
                params={"gamma": 1e-5 * (1 + i % 100)},
                distributions=dist,
                value=(i % 97) / 97 if state == TrialState.COMPLETE else None,
                user_attrs={"epochs": epochs},
                intermediate_values={e["epoch"]: e["val_accuracy"] for e in epochs},
            )
        )
    study.add_trials(trials)


def _run_large(base: str, url: str, n: int, warmup: int, n_trials: int) -> dict[str, list[float]]:
    spec = {**SPEC_EXAMPLES["bop"], "name": f"bench-large-{uuid.uuid4().hex[:8]}"}
    with httpx.Client(base_url=base, timeout=120) as http:
        created = http.post("/api/v1/studies", json=spec).raise_for_status().json()
        start = time.perf_counter()
        _fill(url, created["optuna_study_name"], n_trials)
        print(f"filled {n_trials} trials in {time.perf_counter() - start:.1f} s")
        self_ = created["links"]["self"]
        paths = {
            "get-large": (self_, {}),
            "trials-p1": (f"{self_}/trials", {"limit": 100}),
            "trials-end": (f"{self_}/trials", {"skip": max(n_trials - 100, 0), "limit": 100}),
        }
        timings: dict[str, list[float]] = {}
        for operation, (path, params) in paths.items():
            timings[operation] = []
            for i in range(warmup + n):
                start = time.perf_counter()
                http.get(path, params=params).raise_for_status()
                if i >= warmup:
                    timings[operation].append((time.perf_counter() - start) * 1e3)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temp dir")
    parser.add_argument("--n", type=int, default=300, help="requests per operation")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--trials", type=int, default=0, help="trials of the large study")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        port = _free_port()
        server = _start_server(url, port)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(base)
            timings = _run(base, args.n, args.warmup)
            if args.trials > 0:
                warmup = min(args.warmup, 2)
                timings |= _run_large(base, url, args.n, warmup, args.trials)
        finally:
            server.terminate()
            server.wait(timeout=10)
    backend = url.split(":", 1)[0]
    for operation, samples in timings.items():
        p50, p99 = _percentiles(samples)
        line = f"{backend:22s} {operation:10s} n={len(samples):4d}"
        print(f"{line}  p50={p50:7.2f} ms  p99={p99:7.2f} ms")


if __name__ == "__main__":
    main()
