"""One worker process from command-line flags: shared by ``python -m worker`` and
``bnn-tune worker`` so that both accept the same flags (each overrides a ``BNN_TUNE_*``
setting of :class:`worker.settings.WorkerSettings`)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading

__all__ = ["add_worker_arguments", "positive_int", "run_worker_process"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, with a one-line message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's flags (``--database-url`` is added by each caller, with its own help)."""
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (env BNN_TUNE_DEVICE)")
    parser.add_argument("--worker-id", help="name shown on trials (default <hostname>-<pid>)")
    parser.add_argument(
        "--data-root",
        help="folder with one folder per data set, <root>/<dataset> (env BNN_TUNE_DATA_ROOT)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="download missing data sets into the data root (env BNN_TUNE_DOWNLOAD)",
    )
    parser.add_argument("--poll-interval", type=float, help="seconds between polls when idle")
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        help="torch.compile: auto = stacked trials on CUDA (env BNN_TUNE_COMPILE)",
    )
    parser.add_argument("--max-trials", type=positive_int, help="exit after this many trials")
    parser.add_argument("--once", action="store_true", help="exit when no study has work left")
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")
    parser.add_argument(
        "--gpus",
        help="all or e.g. 0,1: supervise one worker process per GPU (worker.supervisor)",
    )
    parser.add_argument(
        "--metrics-port",
        type=positive_int,
        help="serve Prometheus /metrics on this port (--gpus: port + GPU index); default off",
    )


def run_worker_process(args: argparse.Namespace) -> int:
    """Run one worker until SIGTERM/SIGINT (exit 0) or until ``--once``/``--max-trials`` say
    stop; 2 with a one-line message when the settings are invalid."""
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "gpus", None):
        from worker.supervisor import run_supervisor

        return run_supervisor(args)
    from pydantic import ValidationError

    from service.lifecycle import DatabaseNotReady
    from worker.control import install_signal_handlers
    from worker.settings import WorkerSettings

    overrides = {
        "database_url": args.database_url,
        "device": args.device,
        "worker_id": args.worker_id,
        "data_root": args.data_root,
        "download": True if args.download else None,
        "poll_interval_s": args.poll_interval,
        "compile": args.compile,
        "worker_max_trials": args.max_trials,
        "once": True if args.once else None,
    }
    log = logging.getLogger("worker")
    try:
        settings = WorkerSettings(**{k: v for k, v in overrides.items() if v is not None})
        from worker.loop import run_worker  # imports torch only here

        stop = threading.Event()
        install_signal_handlers(stop)
        if getattr(args, "metrics_port", None):
            from worker.metrics import start_metrics_server

            start_metrics_server(args.metrics_port)
        stats = run_worker(settings, stop)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        log.error("cannot start: %s", reasons)
        return 2
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        return 2
    except DatabaseNotReady as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("worker exiting: %s", stats)
    return 0
