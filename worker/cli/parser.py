"""The argument parser of ``bnn-tune``: one ``_add_<command>`` function per subcommand."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from worker.cli.api_client import DEFAULT_API_URL, PLOT_KINDS
from worker.cli.commands import (
    cmd_dashboard,
    cmd_migrate,
    cmd_plot,
    cmd_serve,
    cmd_status,
    cmd_submit,
    cmd_train,
    cmd_worker,
    cmd_workers,
)
from worker.cli.demo import cmd_demo
from worker.process import add_worker_arguments, positive_int

__all__ = ["build_parser"]

Command = Callable[[argparse.Namespace], int]


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
        _add_workers,
        _add_plot,
        _add_dashboard,
        _add_migrate,
        _add_train,
    ):
        add(sub)
    return parser


def _command(
    sub: Any, name: str, func: Command, summary: str, description: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """A subcommand that runs ``func``; ``summary`` is its line in ``bnn-tune --help``."""
    parser = sub.add_parser(name, help=summary, description=description, **kwargs)
    parser.set_defaults(func=func)
    return parser


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


def _add_bind_options(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    parser.add_argument("--port", type=_port, default=port, help="port (default %(default)s)")


def _add_top_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top", type=positive_int, default=5, help="rows in the comparison table")


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {value}")
    return value


def _add_serve(sub: Any) -> None:
    p = _command(
        sub,
        "serve",
        cmd_serve,
        "run the REST API (uvicorn)",
        "Serve the BNN-Tune REST API (/api/v1, OpenAPI docs at /docs).",
    )
    _add_database_option(p)
    _add_bind_options(p, port=8000)
    p.add_argument("--workers", type=positive_int, default=1, help="uvicorn worker processes")
    p.add_argument(
        "--log-level",
        default=os.environ.get("BNN_TUNE_LOG_LEVEL", "info"),
        choices=["critical", "error", "warning", "info", "debug", "trace"],
    )


def _add_worker(sub: Any) -> None:
    p = _command(
        sub,
        "worker",
        cmd_worker,
        "run a training worker: claim trials from the database and train them",
        "Run one worker process. Start one per GPU (CUDA_VISIBLE_DEVICES=N) or "
        "several on one machine; they coordinate through the shared database.",
    )
    _add_database_option(p)
    add_worker_arguments(p)


def _add_submit(sub: Any) -> None:
    p = _command(
        sub,
        "submit",
        cmd_submit,
        "validate a study spec (YAML/JSON) and submit it; prints the study id",
        "Validate SPEC locally, POST it to the API and print the new study's id.",
    )
    p.add_argument("spec", metavar="SPEC", help="study spec file (.yaml, .yml or .json)")
    p.add_argument("--dry-run", action="store_true", help="only validate locally")
    _add_api_options(p)


def _add_status(sub: Any) -> None:
    p = _command(
        sub,
        "status",
        cmd_status,
        "progress, best parameters and the best trials of a study",
        "Show a study's progress, its best parameters and a table of its best trials.",
    )
    p.add_argument("study_id", metavar="ID", type=positive_int, help="study id (from submit)")
    p.add_argument("--watch", action="store_true", help="refresh until the study ends")
    p.add_argument("--interval", type=float, default=2.0, help="--watch refresh seconds")
    _add_top_option(p)
    p.add_argument("--json", action="store_true", help="print the raw JSON instead")
    _add_api_options(p)


def _add_workers(sub: Any) -> None:
    p = _command(
        sub,
        "workers",
        cmd_workers,
        "list the registered workers: device, state, live, last seen, current study",
        "List the worker processes registered in the database (live ones first): device, "
        "state, whether each is live, when it was last seen and the study it trains.",
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON instead")
    _add_api_options(p)


def _add_dashboard(sub: Any) -> None:
    p = _command(
        sub,
        "dashboard",
        cmd_dashboard,
        "run optuna-dashboard on the same database",
        "Run optuna-dashboard on the BNN-Tune database (it has no authentication: "
        "keep it on 127.0.0.1 or behind a proxy).",
    )
    _add_database_option(p)
    _add_bind_options(p, port=8080)
    p.add_argument("--server", choices=["auto", "wsgiref", "gunicorn"], help="WSGI server")


def _add_train(sub: Any) -> None:
    p = _command(
        sub,
        "train",
        cmd_train,
        "one training run without tuning (same as bnn-train; try `bnn-tune train --help`)",
        "All arguments go to bnn-train.",
        add_help=False,
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments of bnn-train")


def _add_migrate(sub: Any) -> None:
    p = _command(
        sub,
        "migrate",
        cmd_migrate,
        "create or upgrade the database tables (ours and Optuna's)",
        "Create or upgrade BNN-Tune's tables (Alembic) and Optuna's tables.",
    )
    _add_database_option(p)


def _add_plot(sub: Any) -> None:
    p = _command(
        sub,
        "plot",
        cmd_plot,
        "download a study plot (params, curves, flips) as PNG or SVG",
        "Fetch a plot of a study from the API and write it to FILE.",
    )
    p.add_argument("study_id", metavar="ID", type=positive_int, help="study id")
    p.add_argument("--kind", choices=PLOT_KINDS, required=True, help="which plot")
    p.add_argument("--out", metavar="FILE", required=True, help="output file (.png or .svg)")
    p.add_argument("--format", choices=["png", "svg"], help="default: from FILE's suffix")
    _add_api_options(p)


def _add_demo(sub: Any) -> None:
    p = _command(
        sub,
        "demo",
        cmd_demo,
        "run a whole study end to end on SQLite + CPU (2-3 minutes)",
        "Migrate a fresh SQLite database, start the API and a local worker, submit "
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
    p.add_argument("--workers", type=positive_int, default=1, help="local worker processes")
    _add_top_option(p)
