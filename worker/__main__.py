"""``python -m worker``: run one training worker until SIGTERM (exit 0).

Settings come from ``BNN_TUNE_*`` environment variables (:class:`worker.settings.WorkerSettings`);
the flags below override them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--database-url", help="SQLAlchemy URL (BNN_TUNE_DATABASE_URL)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (BNN_TUNE_DEVICE)")
    parser.add_argument("--worker-id", help="name shown on trials (BNN_TUNE_WORKER_ID)")
    parser.add_argument("--poll-interval", type=float, help="seconds between idle polls")
    parser.add_argument(
        "--compile", choices=("auto", "on", "off"), help="torch.compile (BNN_TUNE_COMPILE)"
    )
    parser.add_argument("--max-trials", type=int, help="exit after this many trials")
    parser.add_argument("--once", action="store_true", help="exit when no study has work")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from pydantic import ValidationError

    from worker.control import install_signal_handlers
    from worker.settings import WorkerSettings

    overrides = {
        "database_url": args.database_url,
        "device": args.device,
        "worker_id": args.worker_id,
        "poll_interval_s": args.poll_interval,
        "compile": args.compile,
        "worker_max_trials": args.max_trials,
        "once": True if args.once else None,
    }
    try:
        settings = WorkerSettings(**{k: v for k, v in overrides.items() if v is not None})
        from worker.loop import run_worker

        stop = threading.Event()
        install_signal_handlers(stop)
        stats = run_worker(settings, stop)
    except (ValidationError, ValueError) as exc:
        logging.getLogger("worker").error("cannot start: %s", exc)
        return 2
    logging.getLogger("worker").info("worker exiting: %s", stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
