"""The primitive field types every spec field is built from.

* :func:`name_str`/:func:`text_str`: length-limited strings without NUL or other control
  characters (a NUL cannot be stored by PostgreSQL, and a newline in a one-line value forges log
  lines); ``text_str`` (free-form descriptions) allows tab and newline. Lone UTF-16 surrogates
  are refused too: they cannot be encoded as UTF-8 for the database. The length limit and the
  pattern show in the OpenAPI schema.
* :data:`FiniteFloat`: a finite number (no Infinity/NaN, no booleans).
* :func:`bounded_int`: a real integer (``1e6`` or ``true`` are refused, not converted) within
  ``[low, high]``; the bounds show in the OpenAPI schema.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, Strict, StringConstraints

__all__ = [
    "name_str",
    "text_str",
    "FiniteFloat",
    "PositiveFloat",
    "finite_float",
    "bounded_int",
    "no_control_chars",
]

# C0 controls, DEL, C1 controls and UTF-16 surrogates.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_FORBIDDEN_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def no_control_chars(value: str, allow_newlines: bool = False) -> str:
    """``value`` unchanged, or ValueError naming the first forbidden character."""
    pattern = _FORBIDDEN_IN_TEXT if allow_newlines else _FORBIDDEN
    if match := pattern.search(value):
        raise ValueError(
            f"control character U+{ord(match.group()):04X} at position {match.start()} "
            "is not allowed"
        )
    return value


def _check_name(value: str) -> str:
    return no_control_chars(value)


def _check_text(value: str) -> str:
    return no_control_chars(value, allow_newlines=True)


def name_str(max_length: int, pattern: str | None = None) -> Any:
    """A one-line string of at most ``max_length`` characters (matching ``pattern``)."""
    constraints = StringConstraints(strict=True, max_length=max_length, pattern=pattern)
    return Annotated[str, constraints, AfterValidator(_check_name)]


def text_str(max_length: int) -> Any:
    """Free text of at most ``max_length`` characters; tab and newline allowed."""
    constraints = StringConstraints(strict=True, max_length=max_length)
    return Annotated[str, constraints, AfterValidator(_check_text)]


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def finite_float(gt: float | None = None, ge: float | None = None, le: float | None = None) -> Any:
    """A finite ``float`` (no booleans) within the given bounds."""
    return Annotated[
        float, Field(allow_inf_nan=False, gt=gt, ge=ge, le=le), BeforeValidator(_not_bool)
    ]


FiniteFloat = finite_float()
PositiveFloat = finite_float(gt=0)


def bounded_int(low: int, high: int) -> Any:
    """An ``int`` type accepting only JSON/Python integers in ``[low, high]``."""
    return Annotated[int, Strict(), Field(ge=low, le=high)]
