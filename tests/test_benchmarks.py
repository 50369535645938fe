"""The benchmark scripts keep running: each ``--quick`` form end to end on the CPU. These
check that the scripts work and print their tables, never how fast anything is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_throughput_benchmark_quick_runs() -> None:
    proc = _run("throughput.py", "--quick", "--tiny", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "images/s" in proc.stdout and "stacked" in proc.stdout


def test_e2e_study_benchmark_quick_runs_both_modes(tmp_path: Path) -> None:
    """A real API and worker processes on SQLite and a generated CIFAR-format data folder:
    both studies finish every trial, and the table, time split and ratio are printed."""
    proc = _run("e2e_study.py", "--quick", "--output", str(tmp_path), timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = {
        m.group(1): (int(m.group(2)), int(m.group(3)))
        for m in re.finditer(r"^(naive|stacked)\s+[\d.]+\s+(\d+)\s+(\d+)\s", proc.stdout, re.M)
    }
    assert rows == {"naive": (2, 0), "stacked": (2, 0)}, proc.stdout
    assert "time split" in proc.stdout and "stacked / naive:" in proc.stdout
    assert (tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    # The stacked worker trained its trials as one group and logged the trainer's split.
    assert "stacked run timings" in (tmp_path / "worker-stacked.log").read_text()
