"""What a request must look like before any route, dependency or database work runs.

:class:`RequestGuard` is a pure ASGI middleware that answers, without calling the app:

* **413** when the body is larger than ``max_body_bytes``: at once from ``Content-Length``, or
  as soon as a streamed (chunked) body passes the limit. Bodies within the limit are read here
  and handed on whole, so nothing downstream ever holds more than the limit in memory.
* **415** when a ``POST``/``PUT``/``PATCH`` is not ``Content-Type: application/json``. Browsers
  send cross-site requests without a preflight only as ``text/plain``, form encodings or with no
  body type at all, so a web page on another origin cannot create, stop or resume studies (the
  API sends no CORS headers, so a preflighted request is never let through). ``DELETE`` always
  needs a preflight and is therefore not checked. Clients send ``application/json`` even
  without a body (``{}`` or empty).
* **422** when a JSON body is not UTF-8 (JSON text is UTF-8 by definition), in the API's error
  shape with field ``<body>``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["RequestGuard", "JSON_ONLY_METHODS", "is_json_media_type"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_ONLY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` with any parameters (``; charset=utf-8``)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


class _Rejected(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class RequestGuard:
    """Body size cap (413) and JSON-only state changes (415); see the module docstring."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        try:
            self._check_declared_length(headers)
            if scope["method"] in JSON_ONLY_METHODS and not is_json_media_type(
                headers.get(b"content-type", b"").decode("latin-1")
            ):
                raise _Rejected(
                    415, "state-changing requests must be Content-Type: application/json"
                )
            has_body = b"content-length" in headers or b"transfer-encoding" in headers
            if not has_body:
                await self.app(scope, receive, send)
                return
            body = await self._read_body(receive)
        except _Rejected as rejected:
            await _reply(send, rejected.status, rejected.detail)
            return
        if body is None:  # the client went away while sending
            return
        if is_json_media_type(headers.get(b"content-type", b"").decode("latin-1")):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                error = {"field": "<body>", "message": f"not UTF-8: {exc.reason}", "type": "utf8"}
                await _reply(send, 422, "invalid input (<body>)", errors=[error])
                return
        await self.app(scope, _replay(body, receive), send)

    def _check_declared_length(self, headers: dict[bytes, bytes]) -> None:
        raw = headers.get(b"content-length")
        if raw is None:
            return
        if not raw.isdigit() or len(raw) > 18:
            too_long = raw.isdigit()
            raise _Rejected(413 if too_long else 400, "invalid Content-Length header")
        if int(raw) > self.max_body_bytes:
            raise _Rejected(413, self._too_large())

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Rejected(413, self._too_large())
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> str:
        return f"request body larger than {self.max_body_bytes} bytes"


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the client's disconnect

    return replay


async def _reply(
    send: Send, status: int, detail: str, errors: list[dict[str, str]] | None = None
) -> None:
    content: dict[str, Any] = {"detail": detail}
    if errors is not None:
        content["errors"] = errors
    body = json.dumps(content).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 413:
        headers.append(
            (b"connection", b"close")
        )  # the unread body must not be parsed as a request
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
