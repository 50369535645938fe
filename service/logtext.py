"""One rule for putting text a client chose into a log line.

:func:`loggable` escapes line breaks and every other control character (``\\n`` -> ``\\x0a``)
and shortens the text, so a study name, a URL path or a database message that quotes the
client's data can never start a forged log line or flood the log. Every log call in the service
that includes client input passes it through :func:`loggable`.
"""

from __future__ import annotations

import re

__all__ = ["loggable"]

# C0/C1 controls, DEL, and the Unicode line and paragraph separators.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def loggable(value: object, limit: int = 300) -> str:
    """``str(value)`` with control characters escaped, at most ``limit`` characters long."""
    text = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
