"""``python -m worker``: run one training worker until SIGTERM (exit 0).

Settings come from ``BNN_TUNE_*`` environment variables (:class:`worker.settings.WorkerSettings`);
the flags below override them. ``bnn-tune worker`` takes the same flags.
"""

from __future__ import annotations

import argparse
import sys

from worker.process import add_worker_arguments, run_worker_process

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--database-url", help="SQLAlchemy URL (BNN_TUNE_DATABASE_URL)")
    add_worker_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_worker_process(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
