"""``bnn-tune``: the command line of BNN-Tune.

One entry point for every role. The service's own commands live here: ``serve`` (REST API),
``migrate``, ``dashboard`` (optuna-dashboard on the same database), the REST client commands
(``submit``, ``status``, ``list``, ``stop``, ``delete``, ``resume``, ``export``, ``plot``,
``workers``, all through :class:`service.client.Client`) and ``demo``, which runs the API and
``python -m worker`` as child processes. The commands that train in-process (``worker``,
``train``) are contributed by the ``worker`` package through the entry-point group
``bnn_tune.commands`` (:mod:`service.cli.plugins`), so this package never imports the worker,
bnn_core or torch, and the whole CLI works in the API image.

Every failure ends with one line, ``bnn-tune <cmd>: error: ...``, and exit status 2; a closed
pipe (``bnn-tune status 1 | head -1``) ends quietly with status 141, as ``cat`` would.

The modules: :mod:`~service.cli.parser` (the arguments), :mod:`~service.cli.server` (serve,
migrate, dashboard), :mod:`~service.cli.studies` (the client commands), :mod:`~service.cli.demo`,
:mod:`~service.cli.tables` (text output), :mod:`~service.cli.processes` (ports and child
processes) and :mod:`~service.cli.plugins`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from service.cli.errors import CliError
from service.cli.parser import build_parser
from service.client import ClientError

__all__ = ["CliError", "build_parser", "main"]

SIGPIPE_STATUS = 141  # 128 + SIGPIPE: what a shell reports for `cat big | head -1`


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = _raw_command(parser, argv) or parser.parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's exit-time flush
        return status
    except (CliError, ClientError) as exc:
        print(f"bnn-tune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bnn-tune {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away: say nothing more, and keep Python's exit-time flush of stdout
        # from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_STATUS


def _raw_command(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
    """A command whose arguments all belong to another program (``raw_args``, e.g. ``train``
    and bnn-train's own ``--help``): its words after the name, unparsed."""
    if not argv:
        return None
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices.get(argv[0])
    if command is None or not command.get_default("raw_args"):
        return None
    return argparse.Namespace(command=argv[0], func=command.get_default("func"), raw_args=argv[1:])
