"""``bnn-tune demo``: a whole study end to end on one machine, SQLite + CPU.

The API runs as ``python -m service.cli serve`` and each worker as ``python -m worker``, both
child processes with their logs in the output folder; they are stopped on the way out, on
errors and Ctrl-C too. This module imports neither the worker nor torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.errors import CliError
from service.cli.processes import background, free_port, wait_until
from service.cli.server import cmd_migrate
from service.cli.studies import load_spec_file
from service.cli.tables import (
    best_trials,
    comparison_table,
    count_states,
    counts_text,
    fmt,
    is_terminal,
)
from service.client import Client, ClientError
from service.client_views import finished_count, plain_params, trial_value
from service.settings import redact_url
from service.vocabulary import PLOT_KINDS

if TYPE_CHECKING:
    from service.spec import StudySpec

__all__ = ["DEFAULT_DEMO_SPEC", "EMBEDDED_DEMO_SPEC", "cmd_demo", "follow_study", "run_demo"]

DEFAULT_DEMO_SPEC = Path(__file__).resolve().parents[2] / "examples" / "digits-bop.yaml"
# The same study, embedded for installs without the examples folder (a test keeps them equal).
EMBEDDED_DEMO_SPEC: dict[str, Any] = {
    "name": "digits-bop-demo",
    "description": "Bop's adaptivity rate gamma and threshold tau on the digits MLP (demo).",
    "optimizer": "bop",
    "model": "mlp",
    "dataset": "digits",
    "epochs": 6,
    "batch_size": 50,
    "n_trials": 10,
    "seed": 0,
    "device": "cpu",
    "search_space": {
        "gamma": {"low": 1.0e-5, "high": 1.0e-1, "log": True},
        "threshold": {"low": 1.0e-8, "high": 1.0e-3, "log": True, "include_zero": True},
        "real_lr": 0.01,
    },
    "sampler": {"name": "tpe", "seed": 0},
    "pruner": {"name": "none"},
}


def cmd_demo(args: argparse.Namespace) -> int:
    output = Path(args.output)
    spec = Path(args.spec) if args.spec else _default_demo_spec(output)
    return run_demo(spec, output, workers=args.workers, top=args.top)


def _default_demo_spec(output: Path) -> Path:
    """examples/digits-bop.yaml, or the embedded copy where the examples are not installed."""
    if DEFAULT_DEMO_SPEC.is_file():
        return DEFAULT_DEMO_SPEC
    path = output / "digits-bop.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(EMBEDDED_DEMO_SPEC, indent=2) + "\n", encoding="utf-8")
    return path


def run_demo(spec_path: Path, output: Path, workers: int = 1, top: int = 5) -> int:
    """Migrate a fresh SQLite database, start the API and ``workers`` local workers, submit
    the spec, follow it, print the results, write the plots and shut everything down."""
    spec = load_spec_file(spec_path)
    output = output.resolve()
    url = _fresh_sqlite(output / "demo.db")
    started = time.monotonic()
    _print_header(spec, workers, url, output)
    _step("migrating the database")
    cmd_migrate(argparse.Namespace(database_url=url))
    env = {"BNN_TUNE_DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
    with contextlib.ExitStack() as stack:
        client = _start_api(stack, output, env)
        study_id = int(client.submit(spec_path)["id"])
        _step(f"submitted study {study_id}; starting {workers} worker(s)")
        procs = [_start_worker(stack, output, env, i) for i in range(workers)]
        follow_study(client, study_id, procs, output)
        study, trials = client.get(study_id), client.trials(study_id)
        completed = _print_results(study, trials, top)
        _write_plots(client, study_id, output / "plots")
        _step("stopping the worker(s) and the API")
    _print_epilogue(url, output, time.monotonic() - started)
    return 0 if completed else 1


def _print_header(spec: StudySpec, workers: int, url: str, output: Path) -> None:
    print(
        f"BNN-Tune demo: study {spec.name!r}: {spec.optimizer} on {spec.dataset}/{spec.model}, "
        f"{spec.n_trials} trials x {spec.epochs} epochs, {workers} CPU worker(s)\n"
        f"  database  {redact_url(url)}\n  output    {output}",
        flush=True,
    )


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _fresh_sqlite(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"


def _start_api(stack: contextlib.ExitStack, output: Path, env: dict[str, str]) -> Client:
    port = free_port()
    _step(f"starting the API on http://127.0.0.1:{port}")
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    command += ["--log-level", "warning"]
    process = stack.enter_context(background(command, output / "api.log", env))
    client = stack.enter_context(Client(f"http://127.0.0.1:{port}"))

    def healthy() -> bool:
        if process.poll() is not None:
            raise CliError(f"the API exited ({process.returncode}); see {output / 'api.log'}")
        return client.healthy()

    wait_until(healthy, 60, "the API to answer /health")
    return client


def _start_worker(
    stack: contextlib.ExitStack, output: Path, env: dict[str, str], index: int
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "worker",
        "--device",
        "cpu",
        "--worker-id",
        f"demo-worker-{index}",
        "--poll-interval",
        "0.5",
    ]
    return stack.enter_context(background(command, output / f"worker-{index}.log", env))


def follow_study(
    client: Client,
    study_id: int,
    procs: Sequence[subprocess.Popen[bytes]],
    output: Path,
) -> None:
    """A tqdm bar over finished trials until the study ends or its budget is used up."""
    from tqdm import tqdm

    total = int(client.get(study_id).get("n_trials") or 0)
    with tqdm(total=total, unit="trial", desc="trials", dynamic_ncols=True) as bar:
        while True:
            study, trials = client.get(study_id), client.trials(study_id)
            total = int(study.get("n_trials") or 0)
            counts = count_states(trials)
            finished = finished_count(trials, total)
            bar.total = total
            bar.update(max(0, finished - bar.n))
            best = best_trials(trials, 1)
            bar.set_postfix(
                running=counts.get("running", 0),
                best=fmt(trial_value(best[0])) if best else "-",
                refresh=False,
            )
            if is_terminal(study) or finished >= total:
                return
            if all(p.poll() is not None for p in procs):
                raise CliError(f"the worker(s) exited early; see {output}/worker-*.log")
            time.sleep(1.0)


def _print_results(study: dict[str, Any], trials: list[dict[str, Any]], top: int) -> bool:
    """Print the outcome; False when no trial completed."""
    print(f"\n{counts_text(count_states(trials))} trials")
    if study.get("error"):
        print(f"study {study.get('status')}: {study['error']}")
    errors = sorted({str(t["error"]) for t in trials if t.get("error")})
    for error in errors[:3]:
        print(f"  trial error: {error}")
    best = best_trials(trials, top)
    if not best:
        print("no trial completed; see the worker log(s)")
        return False
    print(
        f"\nBest parameters (trial {best[0].get('number')}, "
        f"val_accuracy {fmt(trial_value(best[0]))}):"
    )
    for name, value in plain_params(best[0].get("params") or {}).items():
        print(f"  {name:<12} {fmt(value)}")
    print(f"\nTop {len(best)} trials:\n{comparison_table(trials, top)}")
    return True


def _write_plots(client: Client, study_id: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in PLOT_KINDS:
        try:
            data = client.plot(study_id, kind, format="png")
        except ClientError as exc:
            print(f"  (plot {kind} skipped: {exc})")
            continue
        path = folder / f"{kind}.png"
        path.write_bytes(data)
        written.append(path.name)
    if written:
        print(f"\nPlots: {', '.join(written)} in {folder}")


def _print_epilogue(url: str, output: Path, seconds: float) -> None:
    print(
        f"\nDone in {seconds:.0f} s. Explore the study in optuna-dashboard:\n"
        f"  bnn-tune dashboard --database-url {redact_url(url)}\n"
        f"  then open http://127.0.0.1:8080/dashboard/\n"
        f"Logs: {output}/api.log, {output}/worker-0.log"
    )
