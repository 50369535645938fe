"""optuna-dashboard as a WSGI app for gunicorn, on the database named by BNN_TUNE_DATABASE_URL.

The URL (with its password) is read from the environment, so it never appears on a command line
(``ps``, ``/proc/<pid>/cmdline``), unlike ``optuna-dashboard <url>``.

    gunicorn --chdir docker --bind 127.0.0.1:8080 dashboard_app:application
"""

from __future__ import annotations

from optuna_dashboard import wsgi

from service.settings import Settings
from service.studies import make_optuna_storage

application = wsgi(make_optuna_storage(Settings().database_url))
