"""The one rule of which database errors are worth retrying.

A lost connection (server restart, network cut, pool timeout, SQLite busy) is retried: the same
statement succeeds once the database is back. Every other database error (``DataError`` for a
NUL byte or a value too long, ``IntegrityError``, ``ProgrammingError``) fails the same way on
every retry, so it is the caller's data at fault: retrying it would stall the caller forever.
Optuna wraps driver errors in ``StorageInternalError``; the cause chain is searched.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

__all__ = ["is_connectivity_error", "is_data_error", "db_error_text"]

_DATA_ERRORS = (
    sa_exc.DataError,
    sa_exc.IntegrityError,
    sa_exc.ProgrammingError,
    sa_exc.NotSupportedError,
)
_CONNECTIVITY_ERRORS = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # pool exhausted while connections hang
    sa_exc.DisconnectionError,
    ConnectionError,
    TimeoutError,
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_connectivity_error(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) says the database could not be reached."""
    for error in _chain(exc):
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, _DATA_ERRORS):
            return False
        if isinstance(error, _CONNECTIVITY_ERRORS):
            return True
        if isinstance(error, sa_exc.DBAPIError):  # a driver error of no known kind
            return False
    return False


def is_data_error(exc: BaseException) -> bool:
    """True when the database refused the data of ``exc``'s statement (any database error
    that is not about connectivity): retrying it fails the same way."""
    chain = _chain(exc)
    return any(isinstance(e, sa_exc.DBAPIError) for e in chain) and not is_connectivity_error(exc)


def db_error_text(exc: BaseException) -> str:
    """The first line of the root cause (Optuna wraps driver errors in a generic message)."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = str(cause).strip().splitlines() or [type(cause).__name__]
    return f"{type(cause).__name__}: {lines[0][:200]}"
