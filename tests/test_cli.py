"""``bnn-tune``: --help everywhere, one-line errors with exit status 2 (bad arguments, bad URLs,
busy ports, closed pipes, a missing worker package), and the REST client commands against a
real API server on PostgreSQL."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from service.cli import build_parser, main
from service.cli.tables import comparison_table, study_summary
from service.client import Client

ROOT = Path(__file__).resolve().parent.parent
GAMMA = optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)
BNN_TUNE = str(Path(sys.executable).parent / "bnn-tune")
SUBCOMMANDS = [
    "demo",
    "serve",
    "worker",
    "submit",
    "status",
    "workers",
    "plot",
    "dashboard",
    "migrate",
    "list",
    "stop",
    "delete",
    "resume",
    "export",
]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([BNN_TUNE, *args], capture_output=True, text=True, timeout=timeout)


def _spec(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load((ROOT / "examples" / "digits-bop.yaml").read_text())
    data.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in [*SUBCOMMANDS, "train"]:
        assert command in out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: bnn-tune {command}" in capsys.readouterr().out


def test_train_help_is_bnn_train_help() -> None:
    result = _run("train", "--help")
    assert result.returncode == 0, result.stderr
    assert "--dataset" in result.stdout


def test_console_script_help() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "bnn-tune" in result.stdout


def test_missing_command_is_a_usage_error() -> None:
    result = _run()
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_submit_bad_spec_is_one_line_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\noptimizer: bop\nsearch_space:\n  momentum: 0.9\n")
    result = _run("submit", str(path), "--api-url", "http://127.0.0.1:9")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "search_space.momentum" in lines[0]
    assert "Traceback" not in result.stderr


def test_submit_unparsable_and_missing_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    for path in (broken, tmp_path / "missing.yaml"):
        result = _run("submit", str(path))
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_submit_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", str(_spec(tmp_path)), "--dry-run"]) == 0
    assert "valid spec" in capsys.readouterr().out


def test_unreachable_api_is_one_line(tmp_path: Path) -> None:
    result = _run("submit", str(_spec(tmp_path)), "--api-url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "cannot reach the API" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["plot", "1"],
        ["plot", "1", "--kind", "nope", "--out", "x.png"],
        ["serve", "--port", "0"],
        ["worker", "--compile", "sometimes"],
        ["worker", "--max-trials", "0"],
        ["export", "1", "--format", "xml"],
        ["resume", "1", "--add-trials", "0"],
        ["status", "9223372036854775808"],
        ["dashboard", "--port", "70000"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_worker_with_bad_settings_is_one_line_exit_2(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    result = _run("worker", "--device", "gpu7", "--once", "--database-url", url)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "cannot start: device:" in result.stderr and "'gpu7'" in result.stderr


def test_bnn_tune_worker_and_python_m_worker_take_the_same_flags() -> None:
    def flags(argv: list[str]) -> set[str]:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT).stdout
        return {word.strip("[],") for word in out.split() if word.startswith(("--", "[--"))}

    mine = flags([BNN_TUNE, "worker", "--help"])
    assert {"--compile", "--device", "--database-url", "--max-trials"} <= mine
    assert mine == flags([sys.executable, "-m", "worker", "--help"])


def test_every_subcommand_has_a_handler() -> None:
    parser = build_parser()
    for command in SUBCOMMANDS:
        extra = {"submit": ["x.yaml"], "plot": ["1", "--kind", "params"]}
        extra.update({c: ["1"] for c in ("status", "stop", "delete", "resume", "export")})
        argv = [command, *extra.get(command, [])]
        if command == "plot":
            argv += ["--out", "x.png"]
        assert callable(parser.parse_args(argv).func)


# --- against a real server -----------------------------------------------------------------


@pytest.fixture
def api_url(
    fresh_postgres_url: str, live_server: Callable[..., AbstractContextManager[str]]
) -> object:
    from service.app import create_app
    from service.settings import Settings

    # No reaper: the tests write RUNNING trials with Optuna directly, without a worker.
    settings = Settings(database_url=fresh_postgres_url, max_trials=50, reaper_interval_s=0)
    with live_server(create_app(settings)) as url:
        yield url


def test_status_of_unknown_study(api_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "424242", "--api-url", api_url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnn-tune status: error: HTTP 404")
    assert "424242" in err
    assert len(err.strip().splitlines()) == 1


def test_submit_then_status(
    api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", str(_spec(tmp_path)), "--api-url", api_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    study_id = lines[0].split()[2]
    assert lines[0] == f"submitted study {study_id} 'digits-bop-demo' (queued)"
    assert lines[1].split() == [
        "follow:",
        "bnn-tune",
        "status",
        study_id,
        "--watch",
        "--api-url",
        api_url,
    ]
    assert main(["status", study_id, "--api-url", api_url]) == 0
    out = capsys.readouterr().out
    assert f"study {study_id} digits-bop-demo" in out
    assert "0/10" in out
    # The same name again: a conflict, one line.
    assert main(["submit", str(_spec(tmp_path)), "--api-url", api_url]) == 2
    assert "HTTP 409" in capsys.readouterr().err


def _register_cpu_worker(url: str) -> None:
    from service.db import make_engine, session_scope
    from service.workers import register_worker

    engine = make_engine(url)
    with session_scope(engine) as session:
        register_worker(
            session,
            worker_id="cpu-box-1",
            hostname="cpu-box",
            pid=7,
            device="cpu",
            device_name="cpu",
        )
    engine.dispose()


def test_status_says_why_a_cuda_study_waits_and_workers_lists_them(
    api_url: str, fresh_postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["workers", "--api-url", api_url]) == 0
    assert "no workers registered" in capsys.readouterr().out
    assert main(["submit", "-q", str(_spec(tmp_path, device="cuda")), "--api-url", api_url]) == 0
    study_id = capsys.readouterr().out.strip()
    assert main(["status", study_id, "--api-url", api_url]) == 0
    assert "waiting no live worker\n" in capsys.readouterr().out + "\n"
    _register_cpu_worker(fresh_postgres_url)  # the same database as the server's
    assert main(["status", study_id, "--api-url", api_url]) == 0
    out = capsys.readouterr().out
    assert "waiting no live worker can train on cuda (live workers: 1 on cpu)" in out
    assert main(["workers", "--api-url", api_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "worker",
        "device",
        "device_name",
        "state",
        "live",
        "last_seen",
        "study",
        "trials",
    ]
    assert lines[2].split()[:5] == ["cpu-box-1", "cpu", "cpu", "idle", "yes"]
    assert lines[-1] == "1 live of 1 registered"
    assert main(["workers", "--json", "--api-url", api_url]) == 0
    assert '"worker_id": "cpu-box-1"' in capsys.readouterr().out


def test_workers_with_unreachable_api_is_one_line_exit_2() -> None:
    result = _run("workers", "--api-url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert result.stderr.startswith("bnn-tune workers: error: cannot reach the API")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_server_side_422_is_field_reason(
    api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Valid locally, over the server's limit (max_trials=50): printed as field: reason."""
    path = _spec(tmp_path, n_trials=500)
    assert main(["submit", str(path), "--api-url", api_url]) == 2
    err = capsys.readouterr().err
    assert "n_trials: 500 exceeds max_trials=50" in err
    assert "Traceback" not in err


def test_plot_writes_a_png(
    api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "-q", str(_spec(tmp_path)), "--api-url", api_url]) == 0
    study_id = capsys.readouterr().out.strip()
    out = tmp_path / "params.png"
    assert (
        main(["plot", study_id, "--kind", "params", "--out", str(out), "--api-url", api_url]) == 0
    )
    assert out.read_bytes().startswith(b"\x89PNG")


def test_summary_and_table_formatting() -> None:
    study = {
        "id": 3,
        "name": "s",
        "status": "running",
        "n_trials": 4,
        "spec": {"optimizer": "bop"},
    }
    trials = [
        {
            "number": 0,
            "state": "COMPLETE",
            "values": [0.91],
            "params": {"gamma": 1e-4, "threshold_is_zero": True},
            "duration_s": 12.5,
            "epochs": [{"flip_ratio": 0.002}],
        },
        {"number": 1, "state": "COMPLETE", "values": [0.95], "params": {"gamma": 1e-3}},
        {"number": 2, "state": "RUNNING", "values": None, "params": {}},
    ]
    table = comparison_table(trials)
    lines = table.splitlines()
    assert lines[0].split() == ["trial", "gamma", "threshold", "val_acc", "flip_ratio", "seconds"]
    assert lines[2].split()[0] == "1" and lines[3].split()[0] == "0"
    assert "0.002" in lines[3] and "12.5" in lines[3]
    summary = study_summary(study, trials)
    assert "2/4" in summary and "best    trial 1: val_accuracy 0.95" in summary
    assert "is_zero" not in table  # include_zero's choice is shown as threshold 0


def test_summary_of_a_failed_study_shows_its_error() -> None:
    error = "all 2 trials failed; first error: ConfigError: data_dir: no such directory"
    study = {"id": 4, "name": "f", "status": "failed", "n_trials": 2, "error": error}
    trials = [
        {"number": n, "state": "FAIL", "values": None, "params": {}, "error": "ConfigError"}
        for n in range(2)
    ]
    lines = study_summary(study, trials).splitlines()
    assert "[failed]" in lines[0] and "2/2" in lines[1]
    assert lines[2] == f"error   {error}"
    assert not any(line.startswith("best") for line in lines)


def test_status_id_must_be_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["status", "abc"])
    assert exit_info.value.code == 2
    assert "not an integer" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 20 s of CPU, but minutes of wall time on a busy 2-core box
def test_demo_end_to_end(tmp_path: Path) -> None:
    """`bnn-tune demo` on a tiny spec: API + worker subprocesses, results, plots, clean exit."""
    pytest.importorskip("torch")
    spec = _spec(tmp_path, name="tiny-demo", n_trials=2, epochs=1, max_train_samples=200)
    out = tmp_path / "demo"
    result = _run("demo", str(spec), "--output", str(out), timeout=580)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 complete trials" in result.stdout
    assert "Best parameters (trial" in result.stdout
    assert "val_acc" in result.stdout and "flip_ratio" in result.stdout
    assert f"bnn-tune dashboard --database-url sqlite:///{out.resolve()}/demo.db" in result.stdout
    for kind in ("params", "curves", "flips"):
        assert (out / "plots" / f"{kind}.png").read_bytes().startswith(b"\x89PNG")


def test_embedded_demo_spec_is_the_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli import demo
    from service.spec import load_spec, parse_spec

    example = load_spec(ROOT / "examples" / "digits-bop.yaml")
    assert demo.DEFAULT_DEMO_SPEC == ROOT / "examples" / "digits-bop.yaml"
    assert parse_spec(demo.EMBEDDED_DEMO_SPEC) == example
    monkeypatch.setattr(demo, "DEFAULT_DEMO_SPEC", tmp_path / "missing.yaml")
    assert load_spec(demo._default_demo_spec(tmp_path / "out")) == example


# --- one line, never a traceback ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("localhost:8000", "has no scheme; use 'http://localhost:8000'"),
        ("http://127.0.0.1:8000/api/v1", "use 'http://127.0.0.1:8000'"),
    ],
)
def test_bad_api_url_is_one_line_with_a_hint(url: str, hint: str) -> None:
    result = _run("status", "1", "--api-url", url)
    assert result.returncode == 2
    assert result.stderr.startswith("bnn-tune status: error: API URL ")
    assert "(--api-url, BNN_TUNE_API_URL)" in result.stderr
    assert hint in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_busy_port_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for command in ("dashboard", "serve"):
            url = f"sqlite:///{tmp_path / 'x.db'}"
            assert main([command, "--port", port, "--database-url", url]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"bnn-tune {command}: error: cannot listen on 127.0.0.1:{port}")
            assert len(err.strip().splitlines()) == 1


def test_closed_pipe_is_quiet(api_url: str, tmp_path: Path) -> None:
    """`bnn-tune status ID | head -0`: the reader is gone before the first write."""
    assert main(["submit", "-q", str(_spec(tmp_path)), "--api-url", api_url]) == 0
    process = subprocess.Popen(
        [BNN_TUNE, "status", "1", "--api-url", api_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=60) == 141
    assert err == ""


def test_missing_worker_package_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image without the worker package: no entry point contributes worker/train."""
    from service.cli import plugins

    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    for argv in (["worker", "--once"], ["train", "--help"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"bnn-tune {argv[0]}: error: the worker package is not installed")
        assert "pip install 'bnn-tune[train]'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "worker    run a training worker" in capsys.readouterr().out


# --- the study verbs against a real server ---------------------------------------------------


def _optuna_study(api_url: str, db_url: str, study_id: str) -> optuna.Study:
    with Client(api_url) as client:
        name = client.get(int(study_id))["optuna_study_name"]
    return optuna.load_study(study_name=name, storage=db_url)


def _submit(api_url: str, path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["submit", "-q", str(path), "--api-url", api_url]) == 0
    return capsys.readouterr().out.strip()


def _finished(value: list[float] | None, state: TrialState = TrialState.COMPLETE, **system: Any):
    return optuna.trial.create_trial(
        state=state,
        values=value,
        params={"gamma": 1e-3 if value is None else value[0] / 100},
        distributions={"gamma": GAMMA},
        user_attrs={"seconds": 1.5, "worker_id": "w1", "flip_ratio": 0.01},
        system_attrs=system,
    )


def test_list_stop_delete(
    api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study_id = _submit(api_url, _spec(tmp_path), capsys)
    assert main(["list", "--api-url", api_url]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["id", "name", "status", "optimizer", "trials", "created"]
    assert rows[2].split()[:5] == [study_id, "digits-bop-demo", "queued", "bop", "0/10"]
    assert main(["stop", study_id, "--api-url", api_url]) == 0
    assert capsys.readouterr().out.startswith(f"study {study_id} digits-bop-demo: stop")
    assert main(["delete", study_id, "--api-url", api_url]) == 0
    assert capsys.readouterr().out == f"study {study_id} digits-bop-demo: deleted\n"
    assert main(["list", "--api-url", api_url]) == 0
    assert "no studies" in capsys.readouterr().out
    assert main(["list", "--status", "deleted", "--json", "--api-url", api_url]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == int(study_id)
    # A deleted study cannot be stopped: the API's 4xx, as one line.
    assert main(["stop", study_id, "--api-url", api_url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnn-tune stop: error: HTTP 4") and len(err.splitlines()) == 1


def test_resume_and_delete_purge(
    api_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study_id = _submit(api_url, _spec(tmp_path), capsys)
    assert main(["stop", study_id, "--api-url", api_url]) == 0  # never started: stopped
    capsys.readouterr()
    assert main(["resume", study_id, "--add-trials", "2", "--api-url", api_url]) == 0
    out = capsys.readouterr().out
    assert out == f"study {study_id} digits-bop-demo: queued, budget 12 trials\n"
    # a queued study cannot be resumed: the API's 409, as one line naming the status
    assert main(["resume", study_id, "--api-url", api_url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnn-tune resume: error: HTTP 409") and "is queued" in err
    assert len(err.splitlines()) == 1
    assert main(["stop", study_id, "--api-url", api_url]) == 0
    assert main(["delete", study_id, "--purge", "--api-url", api_url]) == 0
    out = capsys.readouterr().out.splitlines()[-1]
    assert (
        out
        == f"study {study_id} digits-bop-demo: deleted, its Optuna study removed and its name free"
    )
    again = _submit(api_url, _spec(tmp_path), capsys)  # the name is free
    assert int(again) > int(study_id)


def test_export_csv_and_json_match_optuna(
    api_url: str, fresh_postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study_id = _submit(api_url, _spec(tmp_path), capsys)
    study = _optuna_study(api_url, fresh_postgres_url, study_id)
    for trial in (_finished([0.9]), _finished(None, TrialState.FAIL), _finished([0.95])):
        study.add_trial(trial)
    out = tmp_path / "trials.csv"
    assert main(["export", study_id, "--out", str(out), "--api-url", api_url]) == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    reference = study.trials_dataframe()
    assert [int(r["number"]) for r in rows] == list(reference["number"])
    assert [r["state"] for r in rows] == list(reference["state"])
    assert [float(r["params_gamma"]) for r in rows] == list(reference["params_gamma"])
    assert rows[0]["value_val_accuracy"] == "0.9" and rows[1]["value_val_accuracy"] == ""
    assert rows[2]["flip_ratio"] == "0.01" and rows[2]["seconds"] == "1.5"
    assert rows[2]["worker"] == "w1"
    assert main(["export", study_id, "--format", "json", "--api-url", api_url]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["value_val_accuracy"] for d in data] == [0.9, None, 0.95]


def test_status_counts_budget_slots_and_shows_running_trials(
    api_url: str, fresh_postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed trial retried twice counts once (2/2, not 4/2); a running trial shows its
    epoch k/N and current validation accuracy."""
    study_id = _submit(api_url, _spec(tmp_path, n_trials=2), capsys)
    study = _optuna_study(api_url, fresh_postgres_url, study_id)
    study.add_trial(_finished(None, TrialState.FAIL))
    study.add_trial(_finished(None, TrialState.FAIL, failed_trial=0, retry_history=[0]))
    study.add_trial(_finished([0.9], failed_trial=0, retry_history=[0, 1]))
    study.add_trial(_finished([0.8]))
    running = study.ask({"gamma": GAMMA})
    running.set_user_attr(
        "epochs", [{"epoch": e, "val_accuracy": 0.5 + e / 10} for e in (1, 2, 3)]
    )
    running.set_user_attr("worker_id", "box-7")
    running.report(0.8, 3)
    assert main(["status", study_id, "--api-url", api_url]) == 0
    out = capsys.readouterr().out
    assert "] 2/2  2 complete, 2 fail, 1 running" in out
    assert "running trial 4: epoch 3/6, val_accuracy 0.8  on box-7" in out


def test_status_shows_the_pareto_front(
    api_url: str, fresh_postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path, objectives=["val_accuracy", "flip_ratio"], pruner={"name": "none"})
    study_id = _submit(api_url, spec, capsys)
    study = _optuna_study(api_url, fresh_postgres_url, study_id)
    for values in ([0.9, 0.02], [0.8, 0.01], [0.7, 0.03]):  # the last is dominated
        study.add_trial(_finished(values))
    assert main(["status", study_id, "--api-url", api_url]) == 0
    out = capsys.readouterr().out
    assert "Pareto front (val_accuracy and flip_ratio):" in out
    table = out.split("Pareto front (val_accuracy and flip_ratio):\n")[1].splitlines()
    assert table[0].split() == ["trial", "gamma", "val_acc", "flip_ratio", "flip_ratio", "seconds"]
    assert [line.split()[0] for line in table[2:]] == ["0", "1"]
    assert "best    trial" not in out


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://bnn:pw@db:5432/x", "postgresql+psycopg://bnn:***@db:5432/x"),
        ("postgresql://bnn:p@ss/w@db/x", "postgresql://bnn:***@db/x"),  # unescaped @ and /
        ("postgresql://bnn@db/x", "postgresql://bnn@db/x"),
        ("sqlite:////home/a:b@c/x.db", "sqlite:////home/a:b@c/x.db"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    from service.settings import redact_url

    assert redact_url(url) == shown


def test_migrate_prints_the_url_without_its_password(
    fresh_postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = fresh_postgres_url.replace("://postgres@", "://postgres:hunter2@", 1)
    assert main(["migrate", "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("database postgresql+psycopg://postgres:***@127.0.0.1")
    assert "hunter2" not in out
