"""Prometheus metrics of one worker process, served by ``--metrics-port`` (off by default).

The worker loop calls :func:`trial_finished` when a trial's outcome is told and
:func:`epoch_ended` at the end of every epoch; GPU memory and utilisation are read when
Prometheus scrapes (torch's allocator counters; utilisation through NVML where the driver offers
it, absent otherwise). Metric names start with ``bnn_tune_worker_``; the API's own metrics are in
``service.metrics``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["epoch_ended", "start_metrics_server", "trial_finished"]

logger = logging.getLogger(__name__)

TRIALS = Counter(
    "bnn_tune_worker_trials_finished",
    "Trials this worker finished, by final Optuna state.",
    ["state"],
)
EPOCHS = Histogram(
    "bnn_tune_worker_epoch_seconds",
    "Wall time of one training epoch (of one trial, or of a stacked group).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)


def trial_finished(state: str) -> None:
    """Count a finished trial (``COMPLETE``, ``PRUNED``, ``FAIL``)."""
    TRIALS.labels(state=state).inc()


def epoch_ended(seconds: float) -> None:
    """Record one epoch's wall time."""
    EPOCHS.observe(seconds)


class GpuCollector(Collector):
    """Memory (torch's caching allocator) and utilisation (NVML) of the visible GPUs, read at
    scrape time; nothing when torch has no CUDA device, so CPU workers export no GPU series."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            import torch

            if not torch.cuda.is_available():
                return
            count = torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - a scrape never fails because of the GPU query
            return
        allocated = GaugeMetricFamily(
            "bnn_tune_worker_gpu_memory_allocated_bytes", "Bytes held by tensors.", labels=["gpu"]
        )
        reserved = GaugeMetricFamily(
            "bnn_tune_worker_gpu_memory_reserved_bytes",
            "Bytes reserved by torch's caching allocator.",
            labels=["gpu"],
        )
        utilisation = GaugeMetricFamily(
            "bnn_tune_worker_gpu_utilization_percent",
            "Percent of time a kernel ran over the last sample period (NVML).",
            labels=["gpu"],
        )
        for index in range(count):
            allocated.add_metric([str(index)], torch.cuda.memory_allocated(index))
            reserved.add_metric([str(index)], torch.cuda.memory_reserved(index))
            try:
                utilisation.add_metric([str(index)], torch.cuda.utilization(index))
            except Exception:  # noqa: BLE001 - NVML (pynvml) is optional
                pass
        yield allocated
        yield reserved
        if utilisation.samples:
            yield utilisation


_gpu_collector: GpuCollector | None = None


def start_metrics_server(port: int, addr: str | None = None) -> None:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread (``BNN_TUNE_METRICS_ADDR``,
    default all interfaces: Prometheus scrapes the pod or container address)."""
    global _gpu_collector
    if _gpu_collector is None:  # one per process, however often this is called
        _gpu_collector = GpuCollector()
        REGISTRY.register(_gpu_collector)
    start_http_server(port, addr=addr or os.environ.get("BNN_TUNE_METRICS_ADDR", "0.0.0.0"))
    logger.info("metrics on :%d/metrics", port)
