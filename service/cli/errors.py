"""The one exception type of the ``bnn-tune`` CLI (its own module so every other one can raise it
without importing the rest)."""

from __future__ import annotations

__all__ = ["CliError"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""
