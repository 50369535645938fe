"""The REST client of ``bnn-tune``: HTTP calls to the service under ``/api/v1`` and one-line
messages from its error bodies.

httpx is a base dependency, imported lazily to keep ``--help`` fast.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from worker.cli.errors import CliError

__all__ = ["DEFAULT_API_URL", "PLOT_KINDS", "Api", "api_from_args", "fetch_study"]

DEFAULT_API_URL = "http://127.0.0.1:8000"
PLOT_KINDS = ("params", "curves", "flips")


class Api:
    """A thin client of the REST API under ``/api/v1`` with one-line errors."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._client = httpx.Client(
            base_url=f"{self.url}/api/v1", headers=headers, timeout=timeout
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the API at {self.url} ({type(exc).__name__}); "
                "is `bnn-tune serve` running? (set --api-url or BNN_TUNE_API_URL)"
            ) from exc
        if response.status_code >= 400:
            raise CliError(_http_error_message(response.status_code, _json_or_text(response)))
        content_type = response.headers.get("content-type", "")
        return response.json() if "json" in content_type else response.content

    def plot(self, study_id: int | str, kind: str, fmt: str) -> bytes:
        """The plot's file content (a JSON answer is passed on as its encoded text)."""
        data = self.request("GET", f"/studies/{study_id}/plots/{kind}", params={"format": fmt})
        return data if isinstance(data, bytes) else json.dumps(data).encode()

    def healthy(self) -> bool:
        """``GET /health`` (outside /api/v1) answers 200."""
        import httpx

        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self._client.close()


def api_from_args(args: argparse.Namespace) -> Api:
    return Api(args.api_url, args.api_key)


def fetch_study(api: Api, study_id: int | str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    study = api.request("GET", f"/studies/{study_id}")
    trials: list[dict[str, Any]] = []
    while True:  # pages of 1000 (the API's maximum)
        params = {"skip": len(trials), "limit": 1000}
        body = api.request("GET", f"/studies/{study_id}/trials", params=params)
        page = _items(body)
        trials += page
        total = body.get("count", 0) if isinstance(body, dict) else 0
        if not page or len(trials) >= total:
            return study, trials


def _items(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("data", "items", "trials"):
            if isinstance(body.get(key), list):
                return body[key]
    return []


def _json_or_text(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _http_error_message(status: int, body: Any) -> str:
    """``field: reason`` lines for 422, the ``detail`` for everything else."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if status == 422:
        errors = body.get("errors") if isinstance(body, dict) else None
        lines = _validation_lines(errors or detail)
        if len(lines) == 1:
            return f"the server rejected the request: {lines[0]}"
        if lines:
            return "the server rejected the request:\n  " + "\n  ".join(lines)
    if status == 401 or status == 403:
        return f"HTTP {status}: {detail} (set --api-key or BNN_TUNE_API_KEY)"
    return f"HTTP {status}: {_short(detail)}"


def _validation_lines(detail: Any) -> list[str]:
    if isinstance(detail, dict) and "errors" in detail:
        detail = detail["errors"]
    if isinstance(detail, dict):
        detail = [detail]
    if not isinstance(detail, list):
        return [str(detail)] if detail else []
    return [_validation_line(error) for error in detail]


def _validation_line(error: Any) -> str:
    """One error of our ``{field, message}`` shape or of FastAPI's ``{loc, msg}`` shape."""
    if not isinstance(error, dict):
        return str(error)
    field = error.get("field")
    if field is None and "loc" in error:
        field = ".".join(str(p) for p in error["loc"] if p != "body")
    message = error.get("message") or error.get("reason") or error.get("msg") or error
    return f"{field}: {message}" if field else str(message)


def _short(detail: Any) -> str:
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return text if len(text) <= 300 else text[:297] + "..."
