"""The ``bnn-tune`` commands that run training code in this process: ``worker`` and ``train``.

Registered through the entry point ``bnn_tune.commands: worker = "worker.commands:register"``
(the contract is in :mod:`service.cli.plugins`), so the CLI in ``service`` never imports the
worker or torch. Importing this module loads no torch either; each command imports it when it
runs, after checking that it is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

from worker.process import add_worker_arguments, run_worker_process

__all__ = ["register"]

_NO_TORCH = "needs torch, which is not installed here: pip install 'bnn-tune[train]'"


def register(sub: Any) -> None:
    """Add ``worker`` and ``train`` to the ``bnn-tune`` subparsers."""
    worker = sub.add_parser(
        "worker",
        help="run a training worker: claim trials from the database and train them",
        description="Run one worker process. Start one per GPU (CUDA_VISIBLE_DEVICES=N) or "
        "several on one machine; they coordinate through the shared database.",
    )
    worker.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the database (env BNN_TUNE_DATABASE_URL)",
    )
    add_worker_arguments(worker)
    worker.set_defaults(func=_run_worker)

    train = sub.add_parser(
        "train",
        help="one training run without tuning (same as bnn-train; try `bnn-tune train --help`)",
        description="All arguments go to bnn-train.",
        add_help=False,
    )
    train.add_argument("raw_args", nargs=argparse.REMAINDER, help="arguments of bnn-train")
    train.set_defaults(func=_run_train, raw_args=True)


def _run_worker(args: argparse.Namespace) -> int:
    if not _has_torch("worker"):
        return 2
    return run_worker_process(args)


def _run_train(args: argparse.Namespace) -> int:
    if not _has_torch("train"):
        return 2
    from bnn_core.cli import main as train_main

    return int(train_main(list(args.raw_args)) or 0)


def _has_torch(command: str) -> bool:
    """True, or False after the CLI's one-line error (exit status 2)."""
    if importlib.util.find_spec("torch") is not None:
        return True
    print(f"bnn-tune {command}: error: {_NO_TORCH}", file=sys.stderr)
    return False
