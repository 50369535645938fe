"""``bnn-tune``: the command line of BNN-Tune.

One entry point for every role: ``serve`` (REST API), ``worker`` (training loop), ``submit`` /
``status`` / ``plot`` (REST client), ``dashboard`` (optuna-dashboard on the same database),
``migrate``, ``train`` (one run, no tuning) and ``demo`` (everything end to end on SQLite + CPU).

torch is imported lazily (only by ``worker``, ``train`` and the worker process of ``demo``), so
``serve``, ``submit``, ``status``, ``plot``, ``migrate`` and ``dashboard`` work in the API image,
which has no torch. Bad input ends with a one-line ``bnn-tune <cmd>: error: ...`` and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CliError", "build_parser", "main"]

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_DEMO_SPEC = Path(__file__).resolve().parent.parent / "examples" / "digits-bop.yaml"
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
PLOT_KINDS = ("params", "curves", "flips")
TERMINAL_STATES = ("completed", "failed", "stopped", "cancelled", "deleted")
FINISHED_TRIAL_STATES = ("complete", "pruned", "fail", "failed")


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# --------------------------------------------------------------------------------------------
# HTTP client helpers (httpx is a base dependency; imported lazily to keep --help fast)


class Api:
    """A thin client of the REST API under ``/api/v1`` with one-line errors."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._client = httpx.Client(
            base_url=f"{self.url}/api/v1", headers=headers, timeout=timeout
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the API at {self.url} ({type(exc).__name__}); "
                "is `bnn-tune serve` running? (set --api-url or BNN_TUNE_API_URL)"
            ) from exc
        if response.status_code >= 400:
            raise CliError(_http_error_message(response.status_code, _json_or_text(response)))
        content_type = response.headers.get("content-type", "")
        return response.json() if "json" in content_type else response.content

    def healthy(self) -> bool:
        """``GET /health`` (outside /api/v1) answers 200."""
        import httpx

        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self._client.close()


def _json_or_text(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _http_error_message(status: int, body: Any) -> str:
    """``field: reason`` lines for 422, the ``detail`` for everything else."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if status == 422:
        errors = body.get("errors") if isinstance(body, dict) else None
        lines = _validation_lines(errors or detail)
        if len(lines) == 1:
            return f"the server rejected the request: {lines[0]}"
        if lines:
            return "the server rejected the request:\n  " + "\n  ".join(lines)
    if status == 401 or status == 403:
        return f"HTTP {status}: {detail} (set --api-key or BNN_TUNE_API_KEY)"
    return f"HTTP {status}: {_short(detail)}"


def _validation_lines(detail: Any) -> list[str]:
    if isinstance(detail, dict) and "errors" in detail:
        detail = detail["errors"]
    if isinstance(detail, dict):
        detail = [detail]
    if not isinstance(detail, list):
        return [str(detail)] if detail else []
    lines = []
    for error in detail:
        if not isinstance(error, dict):
            lines.append(str(error))
            continue
        field = error.get("field")
        if field is None and "loc" in error:
            field = ".".join(str(p) for p in error["loc"] if p != "body")
        message = error.get("message") or error.get("reason") or error.get("msg") or error
        lines.append(f"{field}: {message}" if field else str(message))
    return lines


def _short(detail: Any) -> str:
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return text if len(text) <= 300 else text[:297] + "..."


def _api(args: argparse.Namespace) -> Api:
    return Api(args.api_url, args.api_key)


# --------------------------------------------------------------------------------------------
# Study summaries (status, demo)


def trial_value(trial: dict[str, Any]) -> float | None:
    """The trial's validation accuracy (first objective), or None."""
    for key in ("val_accuracy", "value"):
        if isinstance(trial.get(key), int | float):
            return float(trial[key])
    values = trial.get("values")
    if isinstance(values, list) and values and isinstance(values[0], int | float):
        return float(values[0])
    return None


def _metric(trial: dict[str, Any], key: str) -> float | None:
    """``key`` from the trial, its user_attrs, or else its last epoch."""
    epochs = trial.get("epochs") or [{}]
    for source in (trial, trial.get("user_attrs") or {}, epochs[-1]):
        if isinstance(source, dict) and isinstance(source.get(key), int | float):
            return float(source[key])
    return None


def trial_seconds(trial: dict[str, Any]) -> float | None:
    for key in ("train_seconds", "duration_s", "seconds"):
        if (value := _metric(trial, key)) is not None:
            return value
    return None


def _state(trial: dict[str, Any]) -> str:
    return str(trial.get("state", "")).lower()


def best_trials(trials: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """Completed trials by descending validation accuracy."""
    done = [t for t in trials if _state(t) == "complete" and trial_value(t) is not None]
    return sorted(done, key=lambda t: -(trial_value(t) or 0.0))[:top]


def display_params(params: dict[str, Any]) -> dict[str, Any]:
    """Fold Optuna's ``<name>_is_zero`` choice (spec ``include_zero``) back into ``<name>``."""
    shown: dict[str, Any] = {}
    for name, value in params.items():
        if name.endswith("_is_zero"):
            if value:
                shown[name.removesuffix("_is_zero")] = 0.0
        else:
            shown[name] = value
    return shown


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if value == 0 or (1e-3 <= abs(value) < 1e4):
        return f"{value:.4g}"
    return f"{value:.3g}"


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def comparison_table(trials: list[dict[str, Any]], top: int = 5) -> str:
    """Top trials side by side: params, val accuracy, flip ratio, seconds."""
    best = best_trials(trials, top)
    if not best:
        return "(no completed trials yet)"
    params = [display_params(t.get("params") or {}) for t in best]
    names = sorted({name for p in params for name in p})
    header = ["trial", *names, "val_acc", "flip_ratio", "seconds"]
    rows = [
        [
            str(t.get("number", t.get("id", "?"))),
            *[_fmt(p.get(n)) for n in names],
            _fmt(trial_value(t)),
            _fmt(_metric(t, "flip_ratio")),
            _fmt(trial_seconds(t)),
        ]
        for t, p in zip(best, params, strict=True)
    ]
    return format_table(rows, header)


def progress_bar(done: int, total: int, width: int = 30) -> str:
    total = max(total, 1)
    filled = min(width, round(width * done / total))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def count_states(trials: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[_state(trial)] = counts.get(_state(trial), 0) + 1
    return counts


def study_summary(study: dict[str, Any], trials: list[dict[str, Any]], top: int = 5) -> str:
    """The text ``bnn-tune status`` prints."""
    spec = study.get("spec") or {}
    counts = count_states(trials)
    finished = sum(counts.get(s, 0) for s in FINISHED_TRIAL_STATES)
    total = int(study.get("n_trials") or spec.get("n_trials") or len(trials) or 1)
    what = " ".join(
        str(x) for x in (spec.get("optimizer"), spec.get("model"), spec.get("dataset")) if x
    )
    lines = [
        f"study {study.get('id')} {study.get('name', '')!s}  [{study.get('status', '?')}]  {what}",
        f"trials  {progress_bar(finished, total)}  "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
    ]
    best = best_trials(trials, top)
    if best:
        lines.append(
            f"best    trial {best[0].get('number')}: val_accuracy {_fmt(trial_value(best[0]))}"
        )
        shown = display_params(best[0].get("params") or {})
        lines += [f"        {k} = {_fmt(v)}" for k, v in shown.items()]
        lines += ["", comparison_table(trials, top)]
    return "\n".join(lines)


def fetch_study(api: Api, study_id: int | str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    study = api.request("GET", f"/studies/{study_id}")
    trials: list[dict[str, Any]] = []
    while True:  # pages of 1000 (the API's maximum)
        params = {"skip": len(trials), "limit": 1000}
        body = api.request("GET", f"/studies/{study_id}/trials", params=params)
        page = _items(body)
        trials += page
        total = body.get("count", 0) if isinstance(body, dict) else 0
        if not page or len(trials) >= total:
            return study, trials


def _items(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("data", "items", "trials"):
            if isinstance(body.get(key), list):
                return body[key]
    return []


def _is_terminal(study: dict[str, Any]) -> bool:
    return str(study.get("status", "")).lower() in TERMINAL_STATES


# --------------------------------------------------------------------------------------------
# Subcommands


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    _set_database_url(args)
    print(f"BNN-Tune API on http://{args.host}:{args.port}/api/v1 (docs: /docs)", flush=True)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=args.workers,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    if args.data_dir:
        os.environ["BNN_TUNE_DATA_DIR"] = args.data_dir
    flags = {
        "--database-url": args.database_url,
        "--device": args.device,
        "--worker-id": args.worker_id,
        "--poll-interval": args.poll_interval,
        "--max-trials": args.max_trials,
        "--log-level": args.log_level,
    }
    argv = [str(x) for flag, value in flags.items() if value is not None for x in (flag, value)]
    if args.once:
        argv.append("--once")
    from worker.__main__ import main as worker_main  # imports torch only when a trial runs

    return int(worker_main(argv) or 0)


def cmd_submit(args: argparse.Namespace) -> int:
    from service.spec import SpecError, load_spec

    path = Path(args.spec)
    if not path.is_file():
        raise CliError(f"no such spec file: {path}")
    try:
        spec = load_spec(path)
    except SpecError as exc:
        raise CliError(_spec_error_message(path, exc)) from None
    if args.dry_run:
        print(
            f"{path}: valid spec for study {spec.name!r} "
            f"({spec.optimizer}, {spec.n_trials} trials)"
        )
        return 0
    api = _api(args)
    study = api.request("POST", "/studies", json=_raw_spec(path))
    print(study.get("id") if isinstance(study, dict) else study)
    return 0


def _raw_spec(path: Path) -> dict[str, Any]:
    import yaml

    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def _spec_error_message(path: Path, exc: Any) -> str:
    errors = getattr(exc, "errors", None) or [{"field": "<spec>", "message": str(exc)}]
    if errors[0].get("field") == "<file>":  # unreadable or not YAML/JSON: the message says it
        return f"cannot read spec: {' '.join(str(errors[0]['message']).split())}"
    lines = [f"{e['field']}: {' '.join(str(e['message']).split())}" for e in errors]
    if len(lines) == 1:
        return f"invalid spec {path}: {lines[0]}"
    return f"invalid spec {path}:\n  " + "\n  ".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    api = _api(args)
    while True:
        study, trials = fetch_study(api, args.study_id)
        summary = study_summary(study, trials, args.top)
        if args.json:
            print(json.dumps({"study": study, "trials": trials}, indent=2, default=str))
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[2J\033[H", end="")
            print(summary, flush=True)
        if not args.watch or _is_terminal(study):
            return 0
        time.sleep(args.interval)
        if not sys.stdout.isatty():
            print()


def cmd_dashboard(args: argparse.Namespace) -> int:
    url = _database_url(args)
    executable = _optuna_dashboard_executable()
    print(f"optuna-dashboard on {url}", flush=True)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"open http://{shown}:{args.port}/dashboard/  (Ctrl-C to stop)", flush=True)
    command = [executable, url, "--host", args.host, "--port", str(args.port)]
    if args.server:
        command += ["--server", args.server]
    os.execv(executable, command)
    return 0  # pragma: no cover - execv does not return


def _optuna_dashboard_executable() -> str:
    local = Path(sys.executable).parent / "optuna-dashboard"
    found = str(local) if local.exists() else shutil.which("optuna-dashboard")
    if not found:
        raise CliError("optuna-dashboard is not installed (pip install optuna-dashboard)")
    return found


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from bnn_core.cli import main as train_main
    except ImportError as exc:
        raise CliError(f"training needs the train extra (torch): {exc}") from None
    return int(train_main(list(args.train_args)) or 0)


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.migrate import upgrade

    url = _database_url(args)
    try:
        upgrade(url)
    except Exception as exc:  # one line, not a traceback: bad URL, server down, ...
        raise CliError(f"migration of {_redact(url)} failed: {_first_line(exc)}") from None
    print(f"database {_redact(url)} is up to date")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    out = Path(args.out)
    fmt = args.format or ("svg" if out.suffix.lower() == ".svg" else "png")
    api = _api(args)
    data = api.request(
        "GET", f"/studies/{args.study_id}/plots/{args.kind}", params={"format": fmt}
    )
    if not isinstance(data, bytes):
        data = json.dumps(data).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes)")
    return 0


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


# --------------------------------------------------------------------------------------------
# Helpers shared by the subcommands


def _database_url(args: argparse.Namespace) -> str:
    from service.settings import get_settings, normalize_database_url

    if getattr(args, "database_url", None):
        return normalize_database_url(args.database_url)
    return get_settings().database_url


def _set_database_url(args: argparse.Namespace) -> None:
    if getattr(args, "database_url", None):
        os.environ["BNN_TUNE_DATABASE_URL"] = args.database_url


def _redact(url: str) -> str:
    """Hide the password of a database URL."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in credentials else url


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def background(command: Sequence[str], log: Path, env: dict[str, str]) -> Iterator[Any]:
    """Run ``command`` with output to ``log``; terminate it (then kill) on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        process = subprocess.Popen(
            list(command), stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        try:
            yield process
        finally:
            stop_process(process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise CliError(f"timed out after {timeout:.0f}s waiting for {what}")


# --------------------------------------------------------------------------------------------
# The demo: everything end to end on one machine, SQLite + CPU


def run_demo(spec_path: Path, output: Path, workers: int = 1, top: int = 5) -> int:
    """Migrate a fresh SQLite database, start the API and ``workers`` local workers, submit
    the spec, follow it, print the results, write the plots and shut everything down."""
    from service.spec import SpecError, load_spec

    if not spec_path.is_file():
        raise CliError(f"no such spec file: {spec_path}")
    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        raise CliError(_spec_error_message(spec_path, exc)) from None
    output = output.resolve()
    url = _fresh_sqlite(output / "demo.db")
    started = time.monotonic()
    print(
        f"BNN-Tune demo: study {spec.name!r}: {spec.optimizer} on {spec.dataset}/{spec.model}, "
        f"{spec.n_trials} trials x {spec.epochs} epochs, {workers} CPU worker(s)\n"
        f"  database  {url}\n  output    {output}",
        flush=True,
    )
    _step("migrating the database")
    cmd_migrate(argparse.Namespace(database_url=url))
    env = {"BNN_TUNE_DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
    with contextlib.ExitStack() as stack:
        api = _start_api(stack, output, env)
        study_id = _submit_raw(api, spec_path)
        _step(f"submitted study {study_id}; starting {workers} worker(s)")
        procs = [_start_worker(stack, output, env, i) for i in range(workers)]
        follow_study(api, study_id, spec.n_trials, procs, output)
        study, trials = fetch_study(api, study_id)
        completed = _print_results(study, trials, top)
        _write_plots(api, study_id, output / "plots")
        _step("stopping the worker(s) and the API")
    _print_epilogue(url, output, time.monotonic() - started)
    return 0 if completed else 1


def _step(text: str) -> None:
    print(f"==> {text}", flush=True)


def _fresh_sqlite(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"


def _cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "worker.cli", *args]


def _start_api(stack: contextlib.ExitStack, output: Path, env: dict[str, str]) -> Api:
    port = free_port()
    _step(f"starting the API on http://127.0.0.1:{port}")
    command = _cli_command("serve", "--port", str(port), "--log-level", "warning")
    process = stack.enter_context(background(command, output / "api.log", env))
    api = Api(f"http://127.0.0.1:{port}")
    stack.callback(api.close)

    def healthy() -> bool:
        if process.poll() is not None:
            raise CliError(f"the API exited ({process.returncode}); see {output / 'api.log'}")
        return api.healthy()

    wait_until(healthy, 60, "the API to answer /health")
    return api


def _start_worker(
    stack: contextlib.ExitStack, output: Path, env: dict[str, str], index: int
) -> subprocess.Popen[bytes]:
    command = _cli_command(
        "worker",
        "--device",
        "cpu",
        "--worker-id",
        f"demo-worker-{index}",
        "--poll-interval",
        "0.5",
    )
    return stack.enter_context(background(command, output / f"worker-{index}.log", env))


def _submit_raw(api: Api, spec_path: Path) -> str:
    study = api.request("POST", "/studies", json=_raw_spec(spec_path))
    return str(study["id"])


def follow_study(
    api: Api,
    study_id: int | str,
    total: int,
    procs: Sequence[subprocess.Popen[bytes]],
    output: Path,
) -> None:
    """A tqdm bar over finished trials until the study ends or its budget is used up."""
    from tqdm import tqdm

    with tqdm(total=total, unit="trial", desc="trials", dynamic_ncols=True) as bar:
        while True:
            study, trials = fetch_study(api, study_id)
            counts = count_states(trials)
            finished = sum(counts.get(s, 0) for s in FINISHED_TRIAL_STATES)
            bar.update(max(0, finished - bar.n))
            best = best_trials(trials, 1)
            bar.set_postfix(
                running=counts.get("running", 0),
                best=_fmt(trial_value(best[0])) if best else "-",
                refresh=False,
            )
            if _is_terminal(study) or finished >= total:
                return
            if all(p.poll() is not None for p in procs):
                raise CliError(f"the worker(s) exited early; see {output}/worker-*.log")
            time.sleep(1.0)


def _print_results(study: dict[str, Any], trials: list[dict[str, Any]], top: int) -> bool:
    """Print the outcome; False when no trial completed."""
    counts = count_states(trials)
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + " trials")
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
        f"val_accuracy {_fmt(trial_value(best[0]))}):"
    )
    for name, value in display_params(best[0].get("params") or {}).items():
        print(f"  {name:<12} {_fmt(value)}")
    print(f"\nTop {len(best)} trials:\n{comparison_table(trials, top)}")
    return True


def _write_plots(api: Api, study_id: int | str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in PLOT_KINDS:
        try:
            data = api.request(
                "GET", f"/studies/{study_id}/plots/{kind}", params={"format": "png"}
            )
        except CliError as exc:
            print(f"  (plot {kind} skipped: {exc})")
            continue
        path = folder / f"{kind}.png"
        path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
        written.append(path.name)
    if written:
        print(f"\nPlots: {', '.join(written)} in {folder}")


def _print_epilogue(url: str, output: Path, seconds: float) -> None:
    print(
        f"\nDone in {seconds:.0f} s. Explore the study in optuna-dashboard:\n"
        f"  bnn-tune dashboard --database-url {url}\n"
        f"  then open http://127.0.0.1:8080/dashboard/\n"
        f"Logs: {output}/api.log, {output}/worker-0.log"
    )


# --------------------------------------------------------------------------------------------
# The parser


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url",
        default=os.environ.get("BNN_TUNE_API_URL", DEFAULT_API_URL),
        help="base URL of the BNN-Tune API (env BNN_TUNE_API_URL; default %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("BNN_TUNE_API_KEY"),
        help="sent as X-API-Key when the server requires one (env BNN_TUNE_API_KEY)",
    )


def _add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the database (env BNN_TUNE_DATABASE_URL; "
        "default sqlite:///./bnn_tune.db)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {value}")
    return value


def _add_serve(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the REST API (uvicorn)",
        description="Serve the BNN-Tune REST API (/api/v1, OpenAPI docs at /docs).",
    )
    _add_database_option(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    p.add_argument("--port", type=_port, default=8000, help="port (default %(default)s)")
    p.add_argument("--workers", type=_positive_int, default=1, help="uvicorn worker processes")
    p.add_argument(
        "--log-level",
        default=os.environ.get("BNN_TUNE_LOG_LEVEL", "info"),
        choices=["critical", "error", "warning", "info", "debug", "trace"],
    )
    p.set_defaults(func=cmd_serve)


def _add_worker(sub: Any) -> None:
    p = sub.add_parser(
        "worker",
        help="run a training worker: claim trials from the database and train them",
        description="Run one worker process. Start one per GPU (CUDA_VISIBLE_DEVICES=N) or "
        "several on one machine; they coordinate through the shared database.",
    )
    _add_database_option(p)
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (env BNN_TUNE_DEVICE)")
    p.add_argument("--worker-id", help="name shown on trials (default <hostname>-<pid>)")
    p.add_argument("--data-dir", help="dataset directory (env BNN_TUNE_DATA_DIR)")
    p.add_argument("--poll-interval", type=float, help="seconds between polls when idle")
    p.add_argument("--max-trials", type=_positive_int, help="exit after this many trials")
    p.add_argument("--once", action="store_true", help="exit when no study has work left")
    p.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    p.set_defaults(func=cmd_worker)


def _add_submit(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="validate a study spec (YAML/JSON) and submit it; prints the study id",
        description="Validate SPEC locally, POST it to the API and print the new study's id.",
    )
    p.add_argument("spec", metavar="SPEC", help="study spec file (.yaml, .yml or .json)")
    p.add_argument("--dry-run", action="store_true", help="only validate locally")
    _add_api_options(p)
    p.set_defaults(func=cmd_submit)


def _add_status(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="progress, best parameters and the best trials of a study",
        description="Show a study's progress, its best parameters and a table of its best trials.",
    )
    p.add_argument("study_id", metavar="ID", type=_positive_int, help="study id (from submit)")
    p.add_argument("--watch", action="store_true", help="refresh until the study ends")
    p.add_argument("--interval", type=float, default=2.0, help="--watch refresh seconds")
    p.add_argument("--top", type=_positive_int, default=5, help="rows in the comparison table")
    p.add_argument("--json", action="store_true", help="print the raw JSON instead")
    _add_api_options(p)
    p.set_defaults(func=cmd_status)


def _add_dashboard(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard",
        help="run optuna-dashboard on the same database",
        description="Run optuna-dashboard on the BNN-Tune database (it has no authentication: "
        "keep it on 127.0.0.1 or behind a proxy).",
    )
    _add_database_option(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    p.add_argument("--port", type=_port, default=8080, help="port (default %(default)s)")
    p.add_argument("--server", choices=["auto", "wsgiref", "gunicorn"], help="WSGI server")
    p.set_defaults(func=cmd_dashboard)


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="one training run without tuning (same as bnn-train; try `bnn-tune train --help`)",
        add_help=False,
        description="All arguments go to bnn-train.",
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments of bnn-train")
    p.set_defaults(func=cmd_train)


def _add_migrate(sub: Any) -> None:
    p = sub.add_parser(
        "migrate",
        help="create or upgrade the database tables (ours and Optuna's)",
        description="Create or upgrade BNN-Tune's tables (Alembic) and Optuna's tables.",
    )
    _add_database_option(p)
    p.set_defaults(func=cmd_migrate)


def _add_plot(sub: Any) -> None:
    p = sub.add_parser(
        "plot",
        help="download a study plot (params, curves, flips) as PNG or SVG",
        description="Fetch a plot of a study from the API and write it to FILE.",
    )
    p.add_argument("study_id", metavar="ID", type=_positive_int, help="study id")
    p.add_argument("--kind", choices=PLOT_KINDS, required=True, help="which plot")
    p.add_argument("--out", metavar="FILE", required=True, help="output file (.png or .svg)")
    p.add_argument("--format", choices=["png", "svg"], help="default: from FILE's suffix")
    _add_api_options(p)
    p.set_defaults(func=cmd_plot)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a whole study end to end on SQLite + CPU (2-3 minutes)",
        description="Migrate a fresh SQLite database, start the API and a local worker, submit "
        "SPEC, show progress, print the best parameters and a comparison table, write the "
        "plots, and shut everything down.",
    )
    p.add_argument(
        "spec",
        metavar="SPEC",
        nargs="?",
        help="study spec (default examples/digits-bop.yaml: Bop on digits, 10 trials)",
    )
    p.add_argument(
        "--output",
        default="runs/demo",
        help="folder for the database, logs and plots (default %(default)s)",
    )
    p.add_argument("--workers", type=_positive_int, default=1, help="local worker processes")
    p.add_argument("--top", type=_positive_int, default=5, help="rows in the comparison table")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnn-tune",
        description="BNN-Tune: a hyperparameter-tuning service for binary neural networks.",
        epilog="Start with `bnn-tune demo`. Each command has --help.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_demo,
        _add_serve,
        _add_worker,
        _add_submit,
        _add_status,
        _add_plot,
        _add_dashboard,
        _add_migrate,
        _add_train,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # everything after `train` belongs to bnn-train, --help included
        args = argparse.Namespace(command="train", func=cmd_train, train_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"bnn-tune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bnn-tune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
