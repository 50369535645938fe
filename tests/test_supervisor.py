"""worker.supervisor with real child processes: one per GPU with its own CUDA_VISIBLE_DEVICES,
restart of a crashed child with backoff, SIGTERM forwarding, exit codes; and ``--gpus`` end to
end with real workers on a fresh SQLite database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.supervisor import Child, Supervisor, parse_gpus

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_parse_gpus() -> None:
    assert parse_gpus("0,1") == ["0", "1"]
    assert parse_gpus(" 3 ") == ["3"]
    assert parse_gpus("all", lambda: ["0", "1", "2"]) == ["0", "1", "2"]
    for bad in ("x", "0,0", "-1", ""):
        with pytest.raises(ValueError, match="--gpus"):
            parse_gpus(bad, list)


def test_all_reads_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert parse_gpus("all") == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="no GPU"):
        parse_gpus("all")


def test_each_child_sees_its_gpu(tmp_path: Path) -> None:
    code = (
        "import os, sys; open(sys.argv[1] + '/' + os.environ['CUDA_VISIBLE_DEVICES'], 'w')"
        ".write(os.environ['BNN_TUNE_WORKER_ID'])"
    )
    supervisor = Supervisor(["0", "3"], lambda child: [*_python(code), str(tmp_path)])
    assert supervisor.run() == 0
    names = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert set(names) == {"0", "3"}
    assert names["3"].endswith("-gpu3")


def test_crashed_child_is_restarted_with_backoff(tmp_path: Path) -> None:
    """Child 1 crashes twice (exit 1, then killed by a signal) and then succeeds; child 0 exits 0
    at once and is not restarted."""
    code = (
        "import os, signal, sys; p = sys.argv[1]; n = len(open(p).read()) if os.path.exists(p) "
        "else 0; open(p, 'a').write('x'); "
        "sys.exit(1) if n == 0 else os.kill(os.getpid(), signal.SIGKILL) if n == 1 else None"
    )

    def command(child: Child) -> list[str]:
        if child.index == 0:
            return _python("pass")
        return [*_python(code), str(tmp_path / "runs")]

    supervisor = Supervisor(["0", "1"], command, backoff_s=0.2, backoff_max_s=0.3)
    start = time.monotonic()
    assert supervisor.run() == 0
    elapsed = time.monotonic() - start
    assert (tmp_path / "runs").read_text() == "xxx"
    assert [child.restarts for child in supervisor.children] == [0, 2]
    assert elapsed >= 0.2 + 0.3  # the backoff doubled, capped at backoff_max_s


def test_invalid_settings_stop_everything() -> None:
    """Exit 2 (settings the worker rejects) is not retried: siblings get SIGTERM, exit 2."""
    sleeper = _python("import time; time.sleep(60)")
    supervisor = Supervisor(
        ["0", "1"], lambda child: _python("raise SystemExit(2)") if child.index else sleeper
    )
    start = time.monotonic()
    assert supervisor.run() == 2
    assert time.monotonic() - start < 30
    assert supervisor.children[1].restarts == 0


SUPERVISE = """
import sys
from worker.supervisor import Supervisor
child = [sys.executable, "-c", '''
import os, signal, sys, time
path = sys.argv[1] + "/" + os.environ["CUDA_VISIBLE_DEVICES"]
def stop(signum, frame):
    time.sleep(0.5)  # "finishing the epoch"
    open(path, "w").write(str(signum))
    sys.exit(0 if os.environ["CUDA_VISIBLE_DEVICES"] == "0" else 7)
signal.signal(signal.SIGTERM, stop)
open(path + ".up", "w").close()
time.sleep(60)
''', sys.argv[1]]
sys.exit(Supervisor(["0", "1"], lambda c: child).run())
"""


def test_sigterm_is_forwarded_and_waited_for(tmp_path: Path) -> None:
    """SIGTERM to the supervisor reaches both children; it waits for them (each takes 0.5 s)
    and exits 1 because one child exited non-zero."""
    process = subprocess.Popen([sys.executable, "-c", SUPERVISE, str(tmp_path)], cwd=ROOT)
    try:
        _wait_for(lambda: len(list(tmp_path.glob("*.up"))) == 2, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 1
    finally:
        process.kill()
    assert (tmp_path / "0").read_text() == str(int(signal.SIGTERM))
    assert (tmp_path / "1").read_text() == str(int(signal.SIGTERM))


@pytest.mark.slow
def test_gpus_flag_runs_real_workers(fresh_sqlite_url: str) -> None:
    """``python -m worker --gpus 0,1`` on a machine without GPUs (children on the CPU): two real
    workers, each named after its GPU, poll the database; SIGTERM stops both, exit 0."""
    pytest.importorskip("torch")
    env = {**os.environ, "BNN_TUNE_DATABASE_URL": fresh_sqlite_url, "BNN_TUNE_DEVICE": "cpu"}
    env["BNN_TUNE_WORKER_ID"] = "fleet"
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "--gpus", "0,1", "--poll-interval", "0.2"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        while sum(" on cpu " in line for line in lines) < 2:
            line = process.stderr.readline()
            assert line, "".join(lines)[-3000:]
            lines.append(line)
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
    output = "".join(lines) + rest
    assert process.returncode == 0, output[-3000:]
    assert "worker fleet-gpu0 on cpu" in output and "worker fleet-gpu1 on cpu" in output
    assert output.count("worker exited 0") == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gpus", "0,x"], "--gpus: 'x' is not a GPU index"),
        (["--gpus", "0,1", "--device", "cuda:1"], "not --device cuda:1"),
    ],
)
def test_gpus_flag_rejects_bad_input(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker", *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 30) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"exited {process.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
