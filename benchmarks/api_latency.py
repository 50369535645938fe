"""API latency: POST /api/v1/studies and GET /api/v1/studies/{id} against a real uvicorn server.

Starts ``uvicorn service.app:create_app --factory`` in a subprocess on loopback, migrates the
database first, sends ``--n`` creates then ``--n`` gets sequentially with one httpx client, and
prints p50/p99 per operation.

    python benchmarks/api_latency.py                      # SQLite in a temporary directory
    python benchmarks/api_latency.py --database-url postgresql+psycopg://postgres@127.0.0.1/bench

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: a fresh SQLite file in a temp dir")
    parser.add_argument("--n", type=int, default=300, help="requests per operation")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        upgrade(url)
        port = _free_port()
        server = _start_server(url, port)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(base)
            timings = _run(base, args.n, args.warmup)
        finally:
            server.terminate()
            server.wait(timeout=10)
    backend = url.split(":", 1)[0]
    for operation, samples in timings.items():
        p50, p99 = _percentiles(samples)
        line = f"{backend:22s} {operation:6s} n={len(samples):4d}"
        print(f"{line}  p50={p50:7.2f} ms  p99={p99:7.2f} ms")


if __name__ == "__main__":
    main()
