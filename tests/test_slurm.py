"""deploy/slurm/bnn-tune-worker.sbatch: valid bash, and a dry run with fake SLURM_* variables and
a fake ``srun`` on PATH that records the commands built; SIGTERM (what ``--signal=B:TERM@120``
sends before the time limit) is forwarded to the worker step and waited for."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "slurm" / "bnn-tune-worker.sbatch"

FAKE_SRUN = """#!/bin/bash
# Records its command line; the worker step runs until SIGTERM like real workers.
printf '%q ' "$@" >> "$FAKE_LOG"; echo >> "$FAKE_LOG"
case "$*" in *worker.selfcheck*) exit 0 ;; esac
echo "env BNN_TUNE_DATABASE_URL=$BNN_TUNE_DATABASE_URL DEVICE=$BNN_TUNE_DEVICE" >> "$FAKE_LOG"
trap 'sleep 0.3; echo TERM >> "$FAKE_LOG"; exit 0' TERM
touch "$FAKE_LOG.up"
while true; do sleep 0.05; done
"""


def test_syntax() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_directives() -> None:
    directives = [line for line in SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]
    text = "\n".join(directives)
    assert "--signal=B:TERM@120" in text
    assert "--array=" in text and "--gres=gpu:" in text


def _start(tmp_path: Path, mode: str = "srun", env_file: Path | None = None) -> subprocess.Popen:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    if env_file is None:
        env_file = tmp_path / "worker.env"
        env_file.write_text("BNN_TUNE_DATABASE_URL=postgresql://u:p@db-host:5432/bnn_tune\n")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(tmp_path / "srun.log"),
        "BNN_TUNE_ENV_FILE": str(env_file),
        "BNN_TUNE_SLURM_MODE": mode,
        "SLURM_JOB_ID": "1234",
        "SLURM_ARRAY_JOB_ID": "1230",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_CPUS_ON_NODE": "32",
    }
    return subprocess.Popen(
        ["bash", str(SCRIPT)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_until_term(tmp_path: Path, mode: str) -> tuple[list[list[str]], str, int]:
    process = _start(tmp_path, mode)
    up = tmp_path / "srun.log.up"
    deadline = time.monotonic() + 30
    while not up.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    lines = (tmp_path / "srun.log").read_text().splitlines()
    calls = [shlex.split(line) for line in lines if not line.startswith(("env ", "TERM"))]
    return calls, "\n".join(lines) + "\n" + output, process.returncode


def test_one_task_per_gpu_and_sigterm_forwarded(tmp_path: Path) -> None:
    calls, log, code = _run_until_term(tmp_path, "srun")
    assert code == 0, log
    selfcheck, step = calls
    assert selfcheck[-3:] == ["python", "-m", "worker.selfcheck"]
    assert "--ntasks=4" in step and "--gpus-per-task=1" in step
    command = step[step.index("bash") :]
    assert command[:2] == ["bash", "-c"]
    assert command[2].startswith("exec bnn-tune worker --worker-id")
    assert "1230_3-gpu${SLURM_LOCALID:-0}" in command[2]
    assert "env BNN_TUNE_DATABASE_URL=postgresql://u:p@db-host:5432/bnn_tune DEVICE=cuda" in log
    assert log.count("TERM") >= 1 and "workers finish their epoch" in log
    assert "workers exited (0)" in log


def test_supervisor_mode(tmp_path: Path) -> None:
    calls, log, code = _run_until_term(tmp_path, "supervisor")
    assert code == 0, log
    step = calls[-1]
    assert "--ntasks=1" in step and "--gpus-per-task=4" in step
    assert step[-4:] == ["bnn-tune", "worker", "--gpus", "all"]


@pytest.mark.parametrize("content", [None, "BNN_TUNE_DATA_ROOT=/scratch\n"])
def test_missing_settings_stop_with_a_message(tmp_path: Path, content: str | None) -> None:
    env_file = tmp_path / "worker.env"
    if content is not None:
        env_file.write_text(content)
    process = _start(tmp_path, env_file=env_file)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 2
    assert ("not found" if content is None else "BNN_TUNE_DATABASE_URL is not set") in output
    assert not (tmp_path / "srun.log").exists()
