"""The argument parser of ``bnn-tune``: one ``_add_<command>`` function per subcommand of the
service, then the commands that installed packages contribute (:mod:`service.cli.plugins`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from service.cli.demo import cmd_demo
from service.cli.plugins import add_plugin_commands
from service.cli.server import cmd_dashboard, cmd_migrate, cmd_serve
from service.cli.studies import (
    cmd_delete,
    cmd_export,
    cmd_list,
    cmd_plot,
    cmd_resume,
    cmd_status,
    cmd_stop,
    cmd_submit,
    cmd_workers,
)
from service.client import DEFAULT_API_URL
from service.vocabulary import PLOT_FORMATS, PLOT_KINDS

__all__ = ["build_parser", "positive_int"]

Command = Callable[[argparse.Namespace], int]
MAX_STUDY_ID = 2**31 - 1  # the API's id column is a 32-bit integer


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
        _add_submit,
        _add_status,
        _add_list,
        _add_stop,
        _add_delete,
        _add_resume,
        _add_export,
        _add_plot,
        _add_workers,
        _add_dashboard,
        _add_migrate,
    ):
        add(sub)
    add_plugin_commands(sub)  # worker, train
    return parser


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, with a one-line message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _study_id(text: str) -> int:
    value = positive_int(text)
    if value > MAX_STUDY_ID:
        raise argparse.ArgumentTypeError(f"no study has id {value} (ids are below 2^31)")
    return value


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {value}")
    return value


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
        help="base URL of the BNN-Tune server, without /api/v1 "
        f"(env BNN_TUNE_API_URL; default {DEFAULT_API_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("BNN_TUNE_API_KEY"),
        help="sent as X-API-Key when the server requires one (env BNN_TUNE_API_KEY)",
    )


def _add_study_command(
    sub: Any, name: str, func: Command, summary: str, description: str
) -> argparse.ArgumentParser:
    """A client command about one study: ``bnn-tune NAME ID [--api-url ...]``."""
    parser = _command(sub, name, func, summary, description)
    parser.add_argument("study_id", metavar="ID", type=_study_id, help="study id (from submit)")
    _add_api_options(parser)
    return parser


def _add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the database (env BNN_TUNE_DATABASE_URL, which keeps a "
        "password out of `ps`; default sqlite:///./bnn_tune.db)",
    )


def _add_bind_options(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    parser.add_argument("--port", type=_port, default=port, help="port (default %(default)s)")


def _add_top_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--top", type=positive_int, default=5, help="rows in the comparison table")


def _add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the raw JSON instead")


def _add_demo(sub: Any) -> None:
    p = _command(
        sub,
        "demo",
        cmd_demo,
        "run a whole study end to end on SQLite + CPU (about a minute)",
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


def _add_submit(sub: Any) -> None:
    p = _command(
        sub,
        "submit",
        cmd_submit,
        "validate a study spec (YAML/JSON) and submit it; prints its id and what to run next",
        "Validate SPEC locally, POST it to the API, and print the new study's id and name "
        "and the commands that follow it.",
    )
    p.add_argument("spec", metavar="SPEC", help="study spec file (.yaml, .yml or .json)")
    p.add_argument("--dry-run", action="store_true", help="only validate locally")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the study id")
    _add_api_options(p)


def _add_status(sub: Any) -> None:
    p = _add_study_command(
        sub,
        "status",
        cmd_status,
        "progress, running trials, best parameters (or Pareto front) of a study",
        "Show a study's progress, its running trials (epoch k/N, current val accuracy), its "
        "best parameters and best trials, or its Pareto front when it has two objectives.",
    )
    p.add_argument("--watch", action="store_true", help="refresh until the study ends")
    p.add_argument("--interval", type=float, default=2.0, help="--watch refresh seconds")
    _add_top_option(p)
    _add_json_option(p)


def _add_list(sub: Any) -> None:
    p = _command(
        sub,
        "list",
        cmd_list,
        "list the studies, newest first",
        "List the studies (deleted ones only with --status deleted).",
    )
    p.add_argument("--status", help="only studies in this status (e.g. running, deleted)")
    _add_json_option(p)
    _add_api_options(p)


def _add_stop(sub: Any) -> None:
    _add_study_command(
        sub,
        "stop",
        cmd_stop,
        "stop a study: no new trials, running ones end within a few steps",
        "Ask the workers to stop the study; `bnn-tune resume ID` continues it later.",
    )


def _add_delete(sub: Any) -> None:
    p = _add_study_command(
        sub,
        "delete",
        cmd_delete,
        "delete a study (hidden from the list; --purge removes its Optuna study too)",
        "Delete a study. Without --purge it is hidden and its trials are kept; with --purge "
        "its Optuna study is removed as well and its name can be used again.",
    )
    p.add_argument("--purge", action="store_true", help="also remove the Optuna study")


def _add_resume(sub: Any) -> None:
    p = _add_study_command(
        sub,
        "resume",
        cmd_resume,
        "queue a stopped, failed or completed study again (optionally with more trials)",
        "Resume a study, e.g. a failed one once its cause is fixed; --add-trials grows its "
        "budget.",
    )
    p.add_argument("--add-trials", type=positive_int, metavar="N", help="N more trials")


def _add_export(sub: Any) -> None:
    p = _add_study_command(
        sub,
        "export",
        cmd_export,
        "write a study's trials as CSV or JSON (params, values, state, flip ratio, ...)",
        "One row per trial: number, state, value_<objective>, params_<name>, flip_ratio, "
        "epochs, seconds, worker and error (the columns of Optuna's trials_dataframe).",
    )
    p.add_argument("--format", choices=["csv", "json"], default="csv", help="default csv")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")


def _add_plot(sub: Any) -> None:
    p = _add_study_command(
        sub,
        "plot",
        cmd_plot,
        f"download a study plot ({', '.join(PLOT_KINDS)}) as PNG or SVG",
        "Fetch a plot of a study from the API and write it to FILE.",
    )
    p.add_argument("--kind", choices=PLOT_KINDS, required=True, help="which plot")
    p.add_argument("--out", metavar="FILE", required=True, help="output file (.png or .svg)")
    p.add_argument("--format", choices=PLOT_FORMATS, help="default: from FILE's suffix")
    p.add_argument("--trial", type=int, metavar="N", help="layer-flips: this trial (default best)")
    p.add_argument(
        "--compare", type=int, metavar="ID", help="filter: overlay this study's best filters"
    )


def _add_workers(sub: Any) -> None:
    p = _command(
        sub,
        "workers",
        cmd_workers,
        "list the registered workers: device, state, live, last seen, current study",
        "List the worker processes registered in the database (live ones first): device, "
        "state, whether each is live, when it was last seen and the study it trains.",
    )
    _add_json_option(p)
    _add_api_options(p)


def _add_dashboard(sub: Any) -> None:
    p = _command(
        sub,
        "dashboard",
        cmd_dashboard,
        "run optuna-dashboard on the same database",
        "Run optuna-dashboard on the BNN-Tune database, in this process (it has no "
        "authentication: keep it on 127.0.0.1 or behind a proxy; use it read-mostly).",
    )
    _add_database_option(p)
    _add_bind_options(p, port=8080)
    p.add_argument("--server", choices=["auto", "wsgiref", "gunicorn"], help="WSGI server")


def _add_migrate(sub: Any) -> None:
    p = _command(
        sub,
        "migrate",
        cmd_migrate,
        "create or upgrade the database tables (ours and Optuna's)",
        "Create or upgrade BNN-Tune's tables (Alembic) and Optuna's tables.",
    )
    _add_database_option(p)
