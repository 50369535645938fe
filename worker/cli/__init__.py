"""``bnn-tune``: the command line of BNN-Tune.

One entry point for every role: ``serve`` (REST API), ``worker`` (training loop), ``submit`` /
``status`` / ``workers`` / ``plot`` (REST client), ``dashboard`` (optuna-dashboard on the same
database), ``migrate``, ``train`` (one run, no tuning) and ``demo`` (everything end to end on
SQLite + CPU).

torch is imported lazily (only by ``worker``, ``train`` and the worker process of ``demo``), so
``serve``, ``submit``, ``status``, ``workers``, ``plot``, ``migrate`` and ``dashboard`` work in
the API image, which has no torch. Bad input ends with a one-line ``bnn-tune <cmd>: error: ...``
and exit status 2, never a traceback.

The modules: :mod:`~worker.cli.parser` (the arguments), :mod:`~worker.cli.commands` (one
``cmd_*`` per subcommand), :mod:`~worker.cli.demo`, :mod:`~worker.cli.api_client` (HTTP),
:mod:`~worker.cli.tables` (text output) and :mod:`~worker.cli.processes` (child processes).
Each imports only the standard library at module level; keep it so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker.cli.commands import cmd_train
from worker.cli.errors import CliError
from worker.cli.parser import build_parser
from worker.cli.processes import free_port
from worker.cli.tables import comparison_table, study_summary

__all__ = ["CliError", "build_parser", "comparison_table", "free_port", "main", "study_summary"]


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
