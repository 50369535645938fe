"""Spec errors: raising one that names its field, and flattening pydantic's into one shape.

Every error a client sees is ``{"field": "search_space.gamma.low", "message": ..., "type": ...}``
(:class:`SpecError` for files and Python callers, ``InvalidSpecError`` -> 422 in the API).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

__all__ = ["SpecError", "fail", "spec_errors", "PARAM_TAGS"]

# Tags of the ParamSpec union (service.spec.params); pydantic puts them into error locations.
PARAM_TAGS = ("fixed", "range", "choices", "schedule")


def fail(field: str, reason: str) -> PydanticCustomError:
    """An error whose ``ctx.field`` carries the dotted path (model-level checks have no loc)."""
    ctx = {"field": field, "reason": reason}
    return PydanticCustomError("invalid_spec", "{field}: {reason}", ctx)


class SpecError(ValueError):
    """An invalid spec; ``errors`` is a list of ``{"field", "message", "type"}`` dicts."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {e['field']}: {e['message']}" for e in errors)
        super().__init__(f"invalid study spec:\n{lines}")


def spec_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Flatten a pydantic error into ``{"field": "a.b.c", "message", "type"}`` dicts."""
    return [_one_error(e) for e in exc.errors()]


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p != "body"]
    if len(parts) > 2 and parts[0] == "search_space" and parts[2] in PARAM_TAGS:
        del parts[2]
    return ".".join(str(p) for p in parts) or "<spec>"


def _one_error(error: Any) -> dict[str, str]:
    ctx = error.get("ctx") or {}
    field = ctx.get("field") if isinstance(ctx.get("field"), str) else None
    if field and "reason" in ctx:
        message = ctx["reason"]
    elif "error" in ctx:  # a ValueError raised in a validator: drop pydantic's "Value error, "
        message = str(ctx["error"])
    else:
        message = error["msg"]
    return {
        "field": field or _loc_to_field(tuple(error["loc"])),
        "message": str(message),
        "type": error["type"],
    }
