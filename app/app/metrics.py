"""Prometheus metrics: HTTP requests, Celery tasks, queue depth, documents by status.

gunicorn runs several uvicorn worker processes and Celery several pool processes, so
counters and histograms use prometheus_client's multiprocess mode when
PROMETHEUS_MULTIPROC_DIR is set (each unit has its own systemd RuntimeDirectory): every
process writes its own files there and ``GET /metrics`` of any API process sums them, and
also those of the folders in METRICS_MULTIPROC_DIRS (the Celery worker's). Without the
variable (tests, development) the metrics live in this process only.

Queue depth (Redis LLEN of the Celery queue) and documents by status (one GROUP BY) are
read when Prometheus scrapes, cached for METRICS_CACHE_SECONDS. /metrics is for the
monitoring hosts only: the public Nginx site refuses it and the firewall admits the app
port from the load balancers and the monitoring hosts only.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import text

from app import redisconn
from app.config import Settings
from app.db import Database
from app.log import get_logger

log = get_logger("app.metrics")
CELERY_QUEUE = "celery"  # Celery's default queue: a Redis list of that name

HTTP_REQUESTS = Counter(
    "aiplatform_http_requests_total", "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "aiplatform_http_request_duration_seconds", "Time to answer a request, by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CELERY_TASKS = Counter(
    "aiplatform_celery_tasks_total", "Celery tasks finished, by task and outcome "
    "(succeeded, failed, retried).", ["task", "state"],
)
CELERY_DURATION = Histogram(
    "aiplatform_celery_task_duration_seconds", "Run time of Celery tasks, by task.", ["task"],
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0),
)


def multiprocess_dirs(settings: Settings) -> list[str]:
    """Folders of multiprocess files to sum: this unit's own, then the configured others."""
    dirs = [os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")]
    dirs += settings.metrics_multiproc_dirs.split(":")
    return [d for d in dict.fromkeys(dirs) if d and os.path.isdir(d)]


def route_of(scope: dict[str, Any]) -> str:
    """The route template (/api/v1/projects/{project_id}), never the raw path.

    FastAPI nests included routers: the matched route knows its path below the
    include_router() prefix only (/projects/{project_id}). The prefix is the part of the
    request path before the suffix that the route's own pattern matches."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    pattern = getattr(route, "path_regex", None)
    if not isinstance(template, str):
        return "<unmatched>"
    path = scope.get("path", "")
    if pattern is None or pattern.match(path):
        return template
    for i, char in enumerate(path):
        if char == "/" and i and pattern.match(path[i:]):
            return path[:i] + template
    return template


def observe_request(scope: dict[str, Any], status: int, seconds: float) -> None:
    method = scope.get("method", "GET")
    route = route_of(scope)
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)


class _Cached:
    """A value computed at most once per `ttl` seconds (per process)."""

    def __init__(self, ttl: float, compute: Callable[[], Any]) -> None:
        self.ttl, self.compute = ttl, compute
        self.value: Any = None
        self.at = float("-inf")
        self.lock = threading.Lock()

    def get(self) -> Any:
        with self.lock:
            if time.monotonic() - self.at >= self.ttl:
                self.value = self.compute()
                self.at = time.monotonic()
            return self.value


class ScrapeTimeCollector(Collector):
    """Celery queue length and documents by status, read when Prometheus scrapes."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        ttl = settings.metrics_cache_seconds
        self.queue = _Cached(ttl, self._queue_length)
        self.documents = _Cached(ttl, self._documents)
        self.vectors = _Cached(ttl, self._vector_servers)

    def _queue_length(self) -> tuple[int, float] | None:
        """Tasks waiting, and seconds left on Celery beat's lock (-1: nobody holds it)."""
        s = self.settings
        client = redisconn.client(s.broker_url, s.redis_sentinel_broker_master, s,
                                  s.health_timeout_seconds)
        try:
            with client.pipeline(transaction=False) as pipe:
                length, lock_ms = pipe.llen(CELERY_QUEUE).pttl(redisconn.BEAT_LOCK_KEY).execute()
            return int(length), (lock_ms / 1000 if lock_ms >= 0 else -1.0)
        except redis.RedisError as exc:
            log.warning("metrics_queue_unavailable", error=type(exc).__name__)
            return None
        finally:
            client.close()

    def _vector_servers(self) -> dict[str, tuple[int, int]]:
        """Per ChromaDB server: (answers its heartbeat, marked behind) as 0/1."""
        from app.vectorset import get_vector_store
        from app.vectorstore import VectorStoreUnavailable

        store = get_vector_store(self.settings)
        behind = store.behind.get() if len(store.servers) > 1 else {}
        out = {}
        for server in store.servers:
            try:
                server.heartbeat(self.settings.health_timeout_seconds)
                up = 1
            except VectorStoreUnavailable:
                up = 0
            out[server.url] = (up, int(server.url in behind))
        return out

    def _documents(self) -> dict[str, int] | None:
        from app.models import DocumentStatus

        try:
            with self.db.read_engine.connect() as conn:
                rows = conn.execute(text("SELECT status, count(*) FROM documents GROUP BY status"))
                counts = {str(s): int(n) for s, n in rows}
        except Exception as exc:  # the database being down must not break /metrics
            log.warning("metrics_documents_unavailable", error=type(exc).__name__)
            return None
        return {s.value: counts.get(s.value, 0) for s in DocumentStatus}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        broker = self.queue.get()
        up = GaugeMetricFamily("aiplatform_metrics_source_up",
                               "1 when the source of a scrape-time metric answered.",
                               labels=["source"])
        up.add_metric(["redis"], 0 if broker is None else 1)
        if broker is not None:
            queue = GaugeMetricFamily("aiplatform_celery_queue_length",
                                      "Tasks waiting in the Celery queue (Redis LLEN).",
                                      labels=["queue"])
            queue.add_metric([CELERY_QUEUE], broker[0])
            yield queue
            yield GaugeMetricFamily(
                "aiplatform_celery_beat_lock_ttl_seconds",
                "Seconds left on Celery beat's lock in Redis (RedBeat), -1 when no beat holds "
                "it. The holder renews it every few seconds.", value=broker[1])
        servers = self.vectors.get()
        up_family = GaugeMetricFamily("aiplatform_vector_server_up",
                                      "1 when the ChromaDB server answers its heartbeat.",
                                      labels=["server"])
        behind_family = GaugeMetricFamily(
            "aiplatform_vector_server_behind",
            "1 while the ChromaDB server misses writes the others took (app.vectorset); reads "
            "avoid it until reconcile has brought it back in step.", labels=["server"])
        for url, (answers, behind) in servers.items():
            up_family.add_metric([url], answers)
            behind_family.add_metric([url], behind)
        yield up_family
        yield behind_family
        documents = self.documents.get()
        up.add_metric(["database"], 0 if documents is None else 1)
        if documents is not None:
            docs = GaugeMetricFamily("aiplatform_documents", "Documents, by indexing status.",
                                     labels=["status"])
            for status, n in documents.items():
                docs.add_metric([status], n)
            yield docs
        yield up


def registry_for(settings: Settings, db: Database) -> CollectorRegistry:
    """What GET /metrics serves: the summed multiprocess files, or this process's metrics."""
    registry = CollectorRegistry()
    if multiprocess_dirs(settings):
        registry.register(_MultiProcessFolders(settings))
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(ScrapeTimeCollector(settings, db))
    return registry


class _MultiProcessFolders(Collector):
    """Every process's files of every folder, merged into one set of families (a folder
    may appear later, e.g. when the worker starts after the API)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        files = [f for d in multiprocess_dirs(self.settings)
                 for f in sorted(glob.glob(os.path.join(d, "*.db")))]
        yield from MultiProcessCollector.merge(files, accumulate=True)


class _Forward(Collector):
    """The process-wide registry's metrics, inside another registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST


# --- Celery ------------------------------------------------------------------------

_started: dict[str, float] = {}


def connect_celery_signals() -> None:
    """Count and time tasks in the worker processes (called by app.tasks)."""
    from celery import signals

    # dispatch_uid: connecting twice (app.tasks, tests) still counts once.
    @signals.task_prerun.connect(weak=False, dispatch_uid="aiplatform-metrics-prerun")
    def _prerun(task_id: str | None = None, **_: Any) -> None:
        if task_id:
            _started[task_id] = time.monotonic()

    @signals.task_postrun.connect(weak=False, dispatch_uid="aiplatform-metrics-postrun")
    def _postrun(task_id: str | None = None, task: Any = None, state: str | None = None,
                 **_: Any) -> None:
        name = getattr(task, "name", "unknown")
        began = _started.pop(task_id or "", None)
        if began is not None:
            CELERY_DURATION.labels(name).observe(time.monotonic() - began)
        outcome = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}.get(
            state or "", (state or "unknown").lower())
        CELERY_TASKS.labels(name, outcome).inc()
