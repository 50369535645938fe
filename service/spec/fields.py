"""The primitive field types every spec field is built from.

* :data:`Name`/:data:`Text`: strings without NUL or other control characters (a NUL cannot be
  stored by PostgreSQL, and a newline in a one-line value forges log lines); ``Text`` (free-form
  descriptions) allows tab and newline. Lone UTF-16 surrogates are refused too: they cannot be
  encoded as UTF-8 for the database.
* :data:`FiniteFloat`: a finite number (no Infinity/NaN, no booleans).
* :func:`bounded_int`: a real integer (``1e6`` or ``true`` are refused, not converted) within
  ``[low, high]``; the bounds show in the OpenAPI schema.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, Strict

__all__ = [
    "Name",
    "Text",
    "FiniteFloat",
    "PositiveFloat",
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


# A one-line string; callers add max_length (and a pattern where the value is a name).
Name = Annotated[str, Strict(), AfterValidator(_check_name)]
Text = Annotated[str, Strict(), AfterValidator(_check_text)]


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


FiniteFloat = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
PositiveFloat = Annotated[FiniteFloat, Field(gt=0)]


def bounded_int(low: int, high: int) -> Any:
    """An ``int`` type accepting only JSON/Python integers in ``[low, high]``."""
    return Annotated[int, Strict(), Field(ge=low, le=high)]
