"""The subcommands of ``bnn-tune`` except ``demo`` (see :mod:`worker.cli.demo`): one ``cmd_*``
function each, taking the parsed arguments and returning the exit status.

Everything beyond the standard library is imported inside the command that needs it: torch only
by ``worker`` and ``train``, so that the others work in the API image, which has no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.cli.api_client import Api, api_from_args, fetch_study
from worker.cli.errors import CliError
from worker.cli.tables import is_terminal, study_summary, workers_table

if TYPE_CHECKING:
    from service.spec import StudySpec

__all__ = [
    "cmd_dashboard",
    "cmd_migrate",
    "cmd_plot",
    "cmd_serve",
    "cmd_status",
    "cmd_submit",
    "cmd_train",
    "cmd_worker",
    "cmd_workers",
    "load_spec_file",
    "submit_spec",
]


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
    from worker.process import run_worker_process  # imports torch only when a trial runs

    return run_worker_process(args)


def cmd_submit(args: argparse.Namespace) -> int:
    path = Path(args.spec)
    spec = load_spec_file(path)
    if args.dry_run:
        print(
            f"{path}: valid spec for study {spec.name!r} "
            f"({spec.optimizer}, {spec.n_trials} trials)"
        )
        return 0
    study = submit_spec(api_from_args(args), path)
    print(study.get("id") if isinstance(study, dict) else study)
    return 0


def load_spec_file(path: Path) -> StudySpec:
    """The validated spec, checked locally so that mistakes show before anything starts."""
    from service.spec import SpecError, load_spec

    if not path.is_file():
        raise CliError(f"no such spec file: {path}")
    try:
        return load_spec(path)
    except SpecError as exc:
        raise CliError(_spec_error_message(path, exc)) from None


def submit_spec(api: Api, path: Path) -> Any:
    """POST the spec file's content as written (the server validates it again); the new study."""
    return api.request("POST", "/studies", json=_raw_spec(path))


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
    api = api_from_args(args)
    while True:
        study, trials = fetch_study(api, args.study_id)
        summary = study_summary(study, trials, args.top)
        if args.json:
            print(json.dumps({"study": study, "trials": trials}, indent=2, default=str))
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[2J\033[H", end="")
            print(summary, flush=True)
        if not args.watch or is_terminal(study):
            return 0
        time.sleep(args.interval)
        if not sys.stdout.isatty():
            print()


def cmd_workers(args: argparse.Namespace) -> int:
    body = api_from_args(args).request("GET", "/workers")
    if args.json:
        print(json.dumps(body, indent=2, default=str))
        return 0
    workers = body.get("data") if isinstance(body, dict) else None
    if not isinstance(workers, list):
        raise CliError(f"unexpected answer from GET /workers: {str(body)[:200]}")
    print(workers_table(workers))
    return 0


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
    data = api_from_args(args).plot(args.study_id, args.kind, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes)")
    return 0


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
