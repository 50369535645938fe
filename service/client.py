"""The Python client of the BNN-Tune REST API (``/api/v1``), torch-free.

    from service.client import Client

    client = Client()                    # BNN_TUNE_API_URL / BNN_TUNE_API_KEY, or arguments
    study = client.submit("examples/digits-bop.yaml")
    client.wait(study["id"])             # a progress bar over finished trials
    client.best_params(study["id"])      # {'gamma': 0.0012, 'threshold': 1e-06, ...}
    df = client.trials_dataframe(study["id"])   # pandas: pip install 'bnn-tune[client]'

Contract:

* Every call is one HTTP request (a list is one request per page of 1000) through
  :meth:`Client.request`, the only place that talks HTTP; the ``bnn-tune`` client commands go
  through this class too, so both say the same thing about the same failure.
* Failures raise :class:`ClientError`: :class:`ConnectionFailed` when the server cannot be
  reached, :class:`ApiError` (``status_code``, ``detail``, ``errors``: the API's
  ``[{"field", "message"}]``) for every 4xx/5xx answer. The message is one line per field.
* A base URL that cannot be right (no scheme, or ending in ``/api/v1``, which the client adds
  itself) is refused at construction with the URL to use instead.
* Trials are the API's JSON dicts. Progress counts budget slots, never trials: a failed trial
  that was retried counts once, through its retry, and the count never exceeds ``n_trials``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.client_views import finished_count, plain_params, trial_row

__all__ = [
    "DEFAULT_API_URL",
    "TERMINAL_STATUSES",
    "ApiError",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "check_api_url",
]

DEFAULT_API_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
TERMINAL_STATUSES = ("completed", "failed", "stopped", "cancelled", "deleted")
_PAGE = 1000  # the API's largest page


class ClientError(Exception):
    """Anything the client cannot do, with a one-line (per field) message."""


class ConnectionFailed(ClientError):
    """The server did not answer (refused, unknown host, timeout)."""


class ApiError(ClientError):
    """The server answered 4xx/5xx. ``errors`` lists ``{"field", "message"}`` for a 422."""

    def __init__(self, status_code: int, detail: str, errors: list[dict[str, str]]) -> None:
        self.status_code = status_code
        self.detail = detail
        self.errors = errors
        super().__init__(_error_text(status_code, detail, errors))


def check_api_url(url: str) -> str:
    """``url`` without a trailing slash, or ClientError with the URL to use instead."""
    url = url.strip().rstrip("/")
    where = "(--api-url, BNN_TUNE_API_URL)"
    if "://" not in url:
        raise ClientError(f"API URL {url!r} has no scheme; use 'http://{url}' {where}")
    if not url.split("://", 1)[1]:
        raise ClientError(f"API URL {url!r} names no host {where}")
    if url.endswith(API_PREFIX):
        raise ClientError(
            f"API URL {url!r} ends in {API_PREFIX}, which the client adds itself; "
            f"use {url.removesuffix(API_PREFIX)!r} {where}"
        )
    return url


class Client:
    """A client of one BNN-Tune server. ``api_url`` and ``api_key`` default to the environment
    variables ``BNN_TUNE_API_URL`` (else http://127.0.0.1:8000) and ``BNN_TUNE_API_KEY``."""

    def __init__(
        self, api_url: str | None = None, api_key: str | None = None, timeout: float = 30.0
    ) -> None:
        import httpx

        self.url = check_api_url(api_url or os.environ.get("BNN_TUNE_API_URL") or DEFAULT_API_URL)
        key = api_key if api_key is not None else os.environ.get("BNN_TUNE_API_KEY")
        if key and not (key.isascii() and key.isprintable()):  # HTTP headers cannot carry it
            raise ClientError("the API key must be printable ASCII (--api-key, BNN_TUNE_API_KEY)")
        self._http = httpx.Client(
            base_url=self.url + API_PREFIX,
            headers={"X-API-Key": key} if key else {},
            timeout=timeout,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- HTTP ------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request under /api/v1: the decoded JSON, or the bytes of any other body."""
        import httpx

        if method != "GET" and "json" not in kwargs:  # state changes are JSON-only (no
            kwargs["json"] = {}  # cross-site form can send them), bodiless ones included
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(
                f"cannot reach the API at {self.url} ({type(exc).__name__}); is `bnn-tune serve` "
                "running? (set --api-url or BNN_TUNE_API_URL)"
            ) from None
        if response.status_code >= 400:
            raise _api_error(response)
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return response.content

    def healthy(self) -> bool:
        """``GET /health`` (outside /api/v1) answers 200."""
        import httpx

        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def _pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paged list (``{"data": [...], "count": N}``)."""
        seen = 0
        while True:
            body = self.request("GET", path, params={**params, "skip": seen, "limit": _PAGE})
            page = body.get("data") or []
            yield from page
            seen += len(page)
            if not page or seen >= int(body.get("count") or 0):
                return

    # --- studies ---------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any] | str | Path) -> dict[str, Any]:
        """Create a study from a spec dict or a YAML/JSON file; the new study
        (``id``, ``name``, ``status``, ``optuna_study_name``, ``links``)."""
        return self.request("POST", "/studies", json=read_spec(spec))

    def get(self, study_id: int) -> dict[str, Any]:
        """One study: status, spec, progress, budget, best trial or Pareto front."""
        return self.request("GET", f"/studies/{int(study_id)}")

    def list_studies(self, status: str | None = None) -> list[dict[str, Any]]:
        """Studies, newest first (deleted ones only with ``status="deleted"``)."""
        return list(self._pages("/studies", **({"status": status} if status else {})))

    def stop(self, study_id: int) -> dict[str, Any]:
        """Ask the workers to stop the study; running trials end within a few steps."""
        return self.request("POST", f"/studies/{int(study_id)}/stop")

    def delete(self, study_id: int, purge: bool = False) -> dict[str, Any]:
        """Hide the study; ``purge=True`` also removes its Optuna study and frees its name."""
        params = {"purge": "true"} if purge else {}
        return self.request("DELETE", f"/studies/{int(study_id)}", params=params)

    def resume(self, study_id: int, add_trials: int | None = None) -> dict[str, Any]:
        """Queue a stopped, failed or completed study again, optionally with ``add_trials``
        more trials in its budget; the study."""
        body = {} if add_trials is None else {"add_trials": int(add_trials)}
        return self.request("POST", f"/studies/{int(study_id)}/resume", json=body)

    def wait(
        self,
        study_id: int,
        progress: bool = True,
        interval: float = 2.0,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the study ends (completed, failed, stopped, deleted); the final study.
        ``progress`` draws a tqdm bar over finished trials (stderr)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        try:
            while True:
                study = self.get(study_id)
                total = int(study.get("n_trials") or 0)  # resume may grow it while we wait
                done = finished_count(self.trials(study_id), total)
                if progress:
                    bar = bar or _progress_bar(total)
                    bar.total = total
                    bar.n = done
                    bar.set_postfix(status=study.get("status"), refresh=False)
                    bar.refresh()
                if study.get("status") in TERMINAL_STATUSES:
                    return study
                if deadline is not None and time.monotonic() > deadline:
                    raise ClientError(f"study {study_id} still {study.get('status')} after wait")
                time.sleep(interval)
        finally:
            if bar is not None:
                bar.close()

    # --- trials ----------------------------------------------------------------------------

    def trials(self, study_id: int, state: str | None = None) -> list[dict[str, Any]]:
        """Every trial by number (the API's view: params, values, state, epochs, user_attrs,
        error, retry_of); ``state`` filters (RUNNING, COMPLETE, PRUNED, FAIL, WAITING)."""
        params = {"state": state.upper()} if state else {}
        return list(self._pages(f"/studies/{int(study_id)}/trials", **params))

    def trial_rows(self, study_id: int) -> list[dict[str, Any]]:
        """One flat dict per trial (what ``bnn-tune export`` writes): number, state,
        ``value_<objective>``, ``params_<name>``, flip_ratio, epochs, seconds, worker, error."""
        study = self.get(study_id)
        objectives = (study.get("spec") or {}).get("objectives") or ["val_accuracy"]
        return [trial_row(t, objectives) for t in self.trials(study_id)]

    def trials_dataframe(self, study_id: int) -> Any:
        """:meth:`trial_rows` as a pandas DataFrame indexed by trial number."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "trials_dataframe needs pandas: pip install 'bnn-tune[client]'"
            ) from None
        rows = self.trial_rows(study_id)
        frame = pd.DataFrame(rows)
        return frame.set_index("number") if rows else frame

    def best_params(self, study_id: int) -> dict[str, Any]:
        """The best trial's parameters (``include_zero`` choices shown as the value 0).
        A two-objective study has a front, not one best: use ``get(id)["pareto_front"]``."""
        study = self.get(study_id)
        if study.get("pareto_front") is not None:
            raise ClientError(
                f"study {study_id} has {len(study.get('directions') or [])} objectives and no "
                "single best trial; see get(study_id)['pareto_front']"
            )
        best = study.get("best_trial")
        if not best:
            raise ClientError(f"study {study_id} has no completed trial yet")
        return plain_params(best.get("params") or {})

    def plot(
        self,
        study_id: int,
        kind: str,
        path: str | Path | None = None,
        format: str | None = None,
        *,
        trial: int | None = None,
        compare: int | None = None,
    ) -> bytes:
        """The plot's bytes (PNG, or SVG when ``format="svg"`` or ``path`` ends in .svg);
        written to ``path`` when given. ``trial``: the trial a ``layer-flips`` plot draws (default
        the best); ``compare``: another study whose best filters a ``filter`` plot overlays."""
        fmt = format or (
            "svg" if path is not None and str(path).lower().endswith(".svg") else "png"
        )
        params: dict[str, Any] = {"format": fmt}
        if trial is not None:
            params["trial"] = int(trial)
        if compare is not None:
            params["compare"] = int(compare)
        data = self.request("GET", f"/studies/{int(study_id)}/plots/{kind}", params=params)
        if not isinstance(data, bytes):  # a JSON answer, e.g. "nothing to plot yet"
            data = json.dumps(data).encode()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
        return data


def read_spec(spec: dict[str, Any] | str | Path) -> dict[str, Any]:
    """A spec dict as given, or the content of a .yaml/.yml/.json file (not validated here: the
    server validates and answers 422 naming each field)."""
    if isinstance(spec, dict):
        return spec
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"cannot read spec {path}: {exc.strerror or exc}") from None
    import yaml

    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ClientError(f"cannot parse spec {path}: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ClientError(f"spec {path} is not a mapping of fields")
    return data


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="trial", desc="trials", dynamic_ncols=True)


def _api_error(response: Any) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    detail = body.get("detail", body) if isinstance(body, dict) else body
    errors = body.get("errors") if isinstance(body, dict) else None
    if not errors and response.status_code == 422 and isinstance(detail, list):
        errors = detail  # FastAPI's own {loc, msg} list
    fields = [_field_error(e) for e in errors or []]
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return ApiError(response.status_code, text, fields)


def _field_error(error: Any) -> dict[str, str]:
    """``{field, message}`` from our shape or FastAPI's ``{loc, msg}``."""
    if not isinstance(error, dict):
        return {"field": "", "message": str(error)}
    field = error.get("field")
    if field is None and "loc" in error:
        field = ".".join(str(p) for p in error["loc"] if p != "body")
    message = error.get("message") or error.get("msg") or json.dumps(error)
    return {"field": str(field or ""), "message": " ".join(str(message).split())}


def _error_text(status: int, detail: str, errors: list[dict[str, str]]) -> str:
    if errors:
        lines = [f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors]
        if len(lines) == 1:
            return f"the server rejected the request: {lines[0]}"
        return "the server rejected the request:\n  " + "\n  ".join(lines)
    hint = " (set --api-key or BNN_TUNE_API_KEY)" if status in (401, 403) else ""
    short = detail if len(detail) <= 300 else detail[:297] + "..."
    return f"HTTP {status}: {' '.join(short.split())}{hint}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
