"""The API's stale-trial reaper: :meth:`service.lifecycle.Lifecycle.reap_once` on a timer.

Workers recover the trials of dead workers when they poll a study; a study whose only worker
died would keep its RUNNING trial until some worker came back. So the API runs one reaper
pass every ``reaper_interval_s`` (:mod:`service.app`): stale trials failed and retried, stopping
studies stopped, finished studies completed, studies whose Optuna study vanished failed -- the
same rules as the workers', from :mod:`service.lifecycle`.
"""

from __future__ import annotations

from sqlalchemy import Engine

from service.lifecycle import Lifecycle
from service.settings import Settings

__all__ = ["Reaper"]


class Reaper:
    """One pass (:meth:`reap_once`) over the running and stopping studies of one database."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.lifecycle = Lifecycle(settings, engine)

    def reap_once(self) -> int:
        """How many studies were looked at; raises when the database is unreachable."""
        return self.lifecycle.reap_once()

    def close(self) -> None:
        self.lifecycle.close()
