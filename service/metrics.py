"""Prometheus metrics of the API: ``GET /metrics`` (no API key, like ``/health``: scrape it from
inside the cluster or the compose network, never publish it).

``install_metrics(app)`` adds a middleware that counts requests and times them per route
template (``/api/v1/studies/{study_id}``, so study ids never become label values) and the
``/metrics`` route. Each app has its own registry (tests build many apps in one process).

The service's state is read from the database at scrape time, one short query each:

- ``bnn_tune_studies{status}``: studies by status (every status, 0 when none);
- ``bnn_tune_trials{state}``: Optuna trials by state (``RUNNING``, ``WAITING``, ...);
- ``bnn_tune_live_workers{device,device_name}``: live workers by the registry's rule;
- ``bnn_tune_queue_depth``: trials not yet claimed in queued and running studies
  (``n_trials - n_claimed``), plus ``bnn_tune_trials{state="WAITING"}`` retries;
- ``bnn_tune_database_up``: 0 when those queries failed (the other series are then absent).
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterator

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select, text

from service.db import session_scope
from service.models import ACTIVE_STATUSES, STUDY_STATUSES, Study
from service.settings import Settings
from service.workers import list_workers, live_after_s

__all__ = ["install_metrics", "metrics_router"]

metrics_router = APIRouter(tags=["health"])


class ServiceCollector(Collector):
    """Studies, trials, live workers and queue depth, queried when Prometheus scrapes."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("bnn_tune_database_up", "1 when the scrape's queries succeeded.")
        engine: Engine | None = getattr(self.app.state, "engine", None)
        try:
            if engine is None:
                raise RuntimeError("no engine yet")
            families = self._query(engine, self.app.state.settings)
        except Exception:  # noqa: BLE001 - a scrape reports the outage instead of failing
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    @staticmethod
    def _query(engine: Engine, settings: Settings) -> list[GaugeMetricFamily]:
        studies = GaugeMetricFamily("bnn_tune_studies", "Studies by status.", labels=["status"])
        trials = GaugeMetricFamily("bnn_tune_trials", "Optuna trials by state.", labels=["state"])
        workers = GaugeMetricFamily(
            "bnn_tune_live_workers", "Live workers by device.", labels=["device", "device_name"]
        )
        queue = GaugeMetricFamily(
            "bnn_tune_queue_depth", "Trials not yet claimed in queued and running studies."
        )
        with session_scope(engine) as session:
            by_status = dict(
                session.execute(select(Study.status, func.count()).group_by(Study.status)).all()
            )
            unclaimed = session.scalar(
                select(func.coalesce(func.sum(Study.n_trials - Study.n_claimed), 0)).where(
                    Study.status.in_(ACTIVE_STATUSES)
                )
            )
            # Optuna's own table (the same name in every Optuna version since 1.0).
            by_state = session.execute(
                text("SELECT state, count(*) FROM trials GROUP BY state")
            ).all()
            live = Tally(
                (w.device, w.device_name)
                for w in list_workers(session, live_after_s(settings))
                if w.live
            )
        for status in STUDY_STATUSES:
            studies.add_metric([status], by_status.get(status, 0))
        for state, count in by_state:
            trials.add_metric([getattr(state, "name", str(state))], count)
        for (device, device_name), count in sorted(live.items()):
            workers.add_metric([device, device_name], count)
        queue.add_metric([], max(int(unclaimed or 0), 0))
        return [studies, trials, workers, queue]


def _route_template(request: Request) -> str:
    """The matched route's template with the prefixes of the routers it is nested in
    (``/api/v1/studies/{study_id}``): nested routers keep the route's own path relative, so the
    static prefix is the part of the URL path before the route's own match. Unmatched paths
    share one label value, so a scan of random URLs cannot grow the label set."""
    route = request.scope.get("route")
    regex, own = getattr(route, "path_regex", None), getattr(route, "path", None)
    if regex is None or own is None:
        return "unmatched"
    path = request.url.path
    for index, char in enumerate(path):
        if char == "/" and regex.match(path[index:]):
            return path[:index] + own
    return own


def install_metrics(app: FastAPI) -> None:
    """Request metrics middleware and ``GET /metrics`` on ``app``."""
    registry = CollectorRegistry()
    requests = Counter(
        "bnn_tune_http_requests",
        "HTTP requests by method, route template and status code.",
        ["method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "bnn_tune_http_request_duration_seconds",
        "HTTP request latency by method and route template.",
        ["method", "route"],
        registry=registry,
    )
    registry.register(ServiceCollector(app))
    app.state.metrics_registry = registry

    @app.middleware("http")
    async def count_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            template = _route_template(request)
            requests.labels(request.method, template, str(status)).inc()
            latency.labels(request.method, template).observe(time.perf_counter() - start)

    app.include_router(metrics_router)


@metrics_router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """The Prometheus text format (runs in a thread: the collector queries the database)."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
