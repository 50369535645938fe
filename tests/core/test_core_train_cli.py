"""bnn-train / python -m bnn_core, run as a subprocess like a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnn_core.cli import main

ROOT = Path(__file__).resolve().parents[2]


# These nets are tiny: one intra-op thread is faster (tests/core/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnn_core", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_one_epoch_on_digits_prints_the_table() -> None:
    proc = _run("--epochs", "1", "--max-train-samples", "400", "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    header = next(line for line in lines if line.lstrip().startswith("epoch"))
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "flip_ratio", "gamma", "tau"):
        assert column in header
    row = lines[lines.index(header) + 1].split()
    assert row[0] == "1" and len(row) == len(header.split())
    assert 0.0 <= float(row[4]) <= 1.0  # val_acc
    assert lines[-1].startswith("best val_acc")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--gamma", "-1"), "optimizer.gamma"),
        (("--dataset", "mnist", "--data-root", "/nonexistent/bnn"), "data_root"),
        (("--model", "vgg"), "--model"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: tuple[str, ...], needle: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnn-train: error:")
    assert needle in lines[0]


def test_main_in_process_filter_with_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "result.json"
    argv = ["--optimizer", "filter", "--alpha", "0.01", "--gamma", "0.1", "--epochs", "2"]
    argv += ["--max-train-samples", "300", "--no-progress", "--test", "--json", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "alpha" in stdout and "test_acc" in stdout
    result = json.loads(out.read_text())
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert result["config"]["optimizer"]["name"] == "filter"
    assert result["epochs"][0]["hyperparameters"]["alpha"] == 0.01


def test_main_rejects_width_for_mlp(capsys) -> None:
    assert main(["--width", "0.5"]) == 2
    assert "width" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--epochs", "many"])
    assert info.value.code == 2
