"""Every Prometheus metric ringpipe exports, and the ``/metrics`` handler.

Workers run prometheus-client in multiprocess mode: the supervisor creates and wipes the
directory and sets ``PROMETHEUS_MULTIPROC_DIR`` *before* any worker imports this module (the
client picks its value class at import time), and calls ``mark_process_dead`` when it reaps
a worker so that worker's live gauges disappear. Each scrape builds a fresh registry with a
``MultiProcessCollector``. Without the variable (unit tests, one-off imports) the metrics
live in this process's default registry.

No metric carries a path name: paths may be secrets (SPEC Part 4).
"""

from __future__ import annotations

import os

import anyio.to_thread
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "BYTES_IN",
    "BYTES_OUT",
    "REJECTIONS",
    "RING_BYTES",
    "TRANSFERS",
    "TRANSFERS_ACROSS_WORKERS",
    "WORKER_RESTARTS",
    "mark_process_dead",
    "metrics_endpoint",
    "render",
]

BYTES_IN = Counter("ringpipe_bytes_in", "Bytes of uploads written into rings.")
BYTES_OUT = Counter("ringpipe_bytes_out", "Bytes sent to receivers.")
TRANSFERS = Counter("ringpipe_transfers", "Transfers that ended, by how they ended.", ["ending"])
TRANSFERS_ACROSS_WORKERS = Counter(
    "ringpipe_transfers_across_workers",
    "Transfers whose sender and receivers were not all served by one worker process.",
)
REJECTIONS = Counter("ringpipe_rejections", "Requests answered with an error status, by status code.", ["code"])
RING_BYTES = Gauge("ringpipe_ring_bytes", "Shared memory held by rings of live transfers.", multiprocess_mode="livesum")
WORKER_RESTARTS = Counter("ringpipe_worker_restarts", "Workers the supervisor had to replace.")


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> bytes:
    """The Prometheus text of every worker (merged) or of this process alone."""
    if _multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def mark_process_dead(pid: int) -> None:
    if _multiprocess_dir() is not None:
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: every worker's samples merged (the files are read off the event loop)."""
    body = await anyio.to_thread.run_sync(render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
