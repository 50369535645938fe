"""The ``bnn-tune`` commands that talk to the REST API: ``submit``, ``status``, ``list``,
``stop``, ``delete``, ``resume``, ``export``, ``workers`` and ``plot``.

Each one is a few calls of :class:`service.client.Client` (the one HTTP layer) and a printout;
the client's errors reach the user as one line through :func:`service.cli.main`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.errors import CliError
from service.cli.tables import is_terminal, studies_table, study_summary, workers_table
from service.client import DEFAULT_API_URL, Client

if TYPE_CHECKING:
    from service.spec import StudySpec

__all__ = [
    "client_from_args",
    "cmd_delete",
    "cmd_export",
    "cmd_list",
    "cmd_plot",
    "cmd_resume",
    "cmd_status",
    "cmd_stop",
    "cmd_submit",
    "cmd_workers",
    "load_spec_file",
]


def client_from_args(args: argparse.Namespace) -> Client:
    """A client for ``--api-url``/``--api-key`` (else their environment variables)."""
    return Client(args.api_url, args.api_key)


def cmd_submit(args: argparse.Namespace) -> int:
    path = Path(args.spec)
    spec = load_spec_file(path)
    if args.dry_run:
        print(
            f"{path}: valid spec for study {spec.name!r} "
            f"({spec.optimizer}, {spec.n_trials} trials)"
        )
        return 0
    client = client_from_args(args)
    study = client.submit(path)
    if args.quiet:  # for scripts: ID=$(bnn-tune submit -q spec.yaml)
        print(study["id"])
        return 0
    study_id = study["id"]
    api = "" if client.url == DEFAULT_API_URL else f" --api-url {client.url}"
    print(
        f"submitted study {study_id} {study['name']!r} ({study['status']})\n"
        f"  follow:  bnn-tune status {study_id} --watch{api}\n"
        f"  stop:    bnn-tune stop {study_id}{api}\n"
        f"  results: bnn-tune export {study_id} --format csv --out {study['name']}.csv{api}"
    )
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


def _spec_error_message(path: Path, exc: Any) -> str:
    errors = getattr(exc, "errors", None) or [{"field": "<spec>", "message": str(exc)}]
    if errors[0].get("field") == "<file>":  # unreadable or not YAML/JSON: the message says it
        return f"cannot read spec: {' '.join(str(errors[0]['message']).split())}"
    lines = [f"{e['field']}: {' '.join(str(e['message']).split())}" for e in errors]
    if len(lines) == 1:
        return f"invalid spec {path}: {lines[0]}"
    return f"invalid spec {path}:\n  " + "\n  ".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    while True:
        study = client.get(args.study_id)
        trials = client.trials(args.study_id)
        if args.json:
            print(json.dumps({"study": study, "trials": trials}, indent=2, default=str))
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[2J\033[H", end="")
            print(study_summary(study, trials, args.top), flush=True)
        if not args.watch or is_terminal(study):
            return 0
        time.sleep(args.interval)
        if not sys.stdout.isatty():
            print()


def cmd_list(args: argparse.Namespace) -> int:
    studies = client_from_args(args).list_studies(status=args.status)
    if args.json:
        print(json.dumps(studies, indent=2, default=str))
    else:
        print(studies_table(studies))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    study = client_from_args(args).stop(args.study_id)
    print(f"study {study['id']} {study['name']}: {study['status']}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    study = client_from_args(args).delete(args.study_id, purge=args.purge)
    what = "deleted, its Optuna study removed and its name free" if args.purge else "deleted"
    print(f"study {study['id']} {study['name']}: {what}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    study = client_from_args(args).resume(args.study_id, add_trials=args.add_trials)
    budget = study.get("n_trials", "?")
    print(f"study {study['id']} {study['name']}: {study['status']}, budget {budget} trials")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    rows = client_from_args(args).trial_rows(args.study_id)
    text = _csv_text(rows) if args.format == "csv" else json.dumps(rows, indent=2, default=str)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        print(f"wrote {out} ({len(rows)} trials)", file=sys.stderr)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def _csv_text(rows: list[dict[str, Any]]) -> str:
    """CSV with one column per key of any row (trials differ in their parameters)."""
    import io

    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def cmd_workers(args: argparse.Namespace) -> int:
    body = client_from_args(args).request("GET", "/workers")
    if args.json:
        print(json.dumps(body, indent=2, default=str))
        return 0
    workers = body.get("data") if isinstance(body, dict) else None
    if not isinstance(workers, list):
        raise CliError(f"unexpected answer from GET /workers: {str(body)[:200]}")
    print(workers_table(workers))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    out = Path(args.out)
    data = client_from_args(args).plot(
        args.study_id, args.kind, out, format=args.format, trial=args.trial, compare=args.compare
    )
    print(f"wrote {out} ({len(data)} bytes)")
    return 0
