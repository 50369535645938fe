"""benchmarks/fleet_load.py --quick: real workers (no-op trainer) against real PostgreSQL finish
every trial exactly once, leave no RUNNING trial and stay within the budget. The benchmark's
numbers are printed, never asserted (it is a script, not a timed test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.mark.postgres
@pytest.mark.slow
def test_quick_mode_runs_clean(postgres_url: str) -> None:  # noqa: ARG001 - server is up
    pytest.importorskip("torch")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fleet_load.py"), "--quick"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "TEST_POSTGRES_ADMIN_URL": ADMIN_URL},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| direct | 4 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == "8"  # 4 workers x 2 trials, each told once
    assert cells[7:10] == ["0", "0", "0"]  # duplicates, zombies, overshoot
    assert int(cells[6]) >= 4  # every worker held at least one connection
    # The claim and the tell were timed where the worker does them (not "nan": the benchmark
    # follows the worker's code).
    for latencies in (cells[4], cells[5]):
        assert all(float(ms) > 0 for ms in latencies.split(" / ")), row


def test_rejects_an_unknown_mode() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fleet_load.py"), "--modes", "grpc"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--modes: unknown ['grpc']" in result.stderr
