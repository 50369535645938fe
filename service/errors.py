"""Service errors; :mod:`service.app` maps each to one HTTP status."""

from __future__ import annotations

__all__ = [
    "ServiceError",
    "NotFoundError",
    "ConflictError",
    "InvalidSpecError",
    "StorageUnavailableError",
]


class ServiceError(Exception):
    """Base class; ``message`` is shown to the client as ``detail``."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(ServiceError):
    status_code = 404


class ConflictError(ServiceError):
    status_code = 409


class InvalidSpecError(ServiceError):
    """``errors``: ``[{"field": "search_space.gamma.low", "message": ..., "type": ...}]``."""

    status_code = 422

    def __init__(self, errors: list[dict[str, str]]) -> None:
        fields = ", ".join(e["field"] for e in errors)
        super().__init__(f"invalid study spec ({fields})")
        self.errors = errors


class StorageUnavailableError(ServiceError):
    status_code = 503
