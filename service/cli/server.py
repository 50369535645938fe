"""The ``bnn-tune`` commands that run the service itself: ``serve`` (the REST API),
``migrate`` (the database tables) and ``dashboard`` (optuna-dashboard on the same database).

A database URL is printed only through :func:`service.settings.redact_url`, and never leaves
this process on a command line: ``serve`` hands it to uvicorn's app factory through the
environment, ``dashboard`` runs optuna-dashboard's WSGI app in this process.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from service.cli.errors import CliError
from service.cli.processes import check_port_free
from service.settings import redact_url

__all__ = ["cmd_dashboard", "cmd_migrate", "cmd_serve", "database_url"]


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if getattr(args, "database_url", None):  # read by service.app's settings in each worker
        os.environ["BNN_TUNE_DATABASE_URL"] = args.database_url
    check_port_free(args.host, args.port)
    print(
        f"BNN-Tune API on http://{args.host}:{args.port}/api/v1 (docs: /docs), "
        f"database {redact_url(database_url(args))}",
        flush=True,
    )
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        workers=args.workers,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.migrate import upgrade

    url = database_url(args)
    try:
        upgrade(url)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback: bad URL, server down
        raise CliError(f"migration of {redact_url(url)} failed: {_first_line(exc)}") from None
    print(f"database {redact_url(url)} is up to date")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    url = database_url(args)
    check_port_free(args.host, args.port)
    app = _dashboard_app(url)
    print(f"optuna-dashboard on {redact_url(url)}", flush=True)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"open http://{shown}:{args.port}/dashboard/  (Ctrl-C to stop)", flush=True)
    server = args.server or "auto"
    if server == "auto":
        server = "gunicorn" if _importable("gunicorn") else "wsgiref"
    try:
        (_serve_gunicorn if server == "gunicorn" else _serve_wsgiref)(app, args.host, args.port)
    except OSError as exc:  # the port was taken between the check and the bind
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    return 0


def database_url(args: argparse.Namespace) -> str:
    """``--database-url``, else ``BNN_TUNE_DATABASE_URL``, else the settings' default."""
    from service.settings import get_settings, normalize_database_url

    if getattr(args, "database_url", None):
        return normalize_database_url(args.database_url)
    return get_settings().database_url


def _dashboard_app(url: str) -> Any:
    """optuna-dashboard's WSGI app on ``url`` (it checks the database on the way)."""
    from optuna_dashboard import wsgi

    try:
        return wsgi(url)
    except Exception as exc:  # noqa: BLE001 - server down, bad URL, unmigrated database
        raise CliError(f"cannot open the database {redact_url(url)}: {_first_line(exc)}") from None


def _serve_wsgiref(app: Any, host: str, port: int) -> None:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class ThreadedServer(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the dashboard
            pass  # polls every few seconds: one log line per request would drown the output

    with make_server(host, port, app, ThreadedServer, QuietHandler) as httpd:
        httpd.serve_forever()


def _serve_gunicorn(app: Any, host: str, port: int) -> None:
    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):  # gunicorn's documented way to serve an app object
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("threads", 4)

        def load(self) -> Any:
            return app

    Application().run()


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
