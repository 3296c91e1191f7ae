"""Dependency checks for GET /health, each bounded by HEALTH_TIMEOUT_SECONDS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from celery import Celery
from sqlalchemy import text

from app import redisconn
from app.config import Settings
from app.db import Database
from app.log import redact_text

COMPONENTS = ("api", "database", "redis", "celery", "chroma")


def _detail(exc: BaseException) -> str:
    return redact_text(f"{type(exc).__name__}: {exc}")[:300]


def check_database(db: Database, timeout: float) -> None:
    with db.engine.connect() as conn:
        conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"),
                     {"ms": str(int(timeout * 1000))})
        conn.execute(text("SELECT 1"))


def check_redis(settings: Settings, timeout: float) -> None:
    """The cache instance answers (its primary, with Sentinel)."""
    client = redisconn.client(settings.redis_url, settings.redis_sentinel_cache_master,
                              settings, timeout)
    try:
        client.ping()
    finally:
        client.close()


_control_apps: dict[str, Celery] = {}


def _control_app(settings: Settings) -> Celery:
    # A bare Celery app: broadcasting a ping needs only the broker, not our tasks.
    app = _control_apps.get(settings.broker_url)
    if app is None:
        app = Celery("ai_platform_health", broker=settings.broker_url, set_as_current=False)
        app.conf.broker_connection_timeout = 2
        app.conf.broker_connection_retry = False
        app.conf.broker_transport_options = redisconn.transport_options(
            settings, settings.broker_url, settings.redis_sentinel_broker_master)
        _control_apps[settings.broker_url] = app
    return app


def check_celery(settings: Settings, timeout: float) -> None:
    app = _control_app(settings)
    broker_url = settings.broker_url
    # The URL is passed explicitly: Celery would otherwise prefer $CELERY_BROKER_URL.
    with app.connection_for_write(url=broker_url) as conn:
        conn.ensure_connection(max_retries=0, timeout=timeout)
        # limit=1: return at the first reply instead of waiting out the timeout.
        replies = app.control.ping(timeout=timeout, limit=1, connection=conn)
    if not replies:
        raise RuntimeError("no worker answered the ping")


def check_chroma(settings: Settings, timeout: float) -> None:
    """At least one ChromaDB server answers (app.vectorset reads from whichever does)."""
    errors = []
    for url in settings.chroma_urls:
        try:
            resp = httpx.get(url.rstrip("/") + "/api/v2/heartbeat",
                             headers=settings.chroma_headers, timeout=timeout)
            resp.raise_for_status()
            return
        except httpx.HTTPError as exc:
            errors.append(f"{url}: {type(exc).__name__}")
    raise RuntimeError("no ChromaDB server answered: " + "; ".join(errors))


async def _run(fn: Callable[[], Any], timeout: float) -> dict[str, Any]:
    start = time.perf_counter()
    result: dict[str, Any] = {"status": "ok"}
    try:
        await asyncio.wait_for(asyncio.to_thread(fn), timeout=timeout + 0.5)
    except TimeoutError:
        result = {"status": "error", "error": f"timed out after {timeout}s"}
    except Exception as exc:
        result = {"status": "error", "error": _detail(exc)}
    result["latency_ms"] = round((time.perf_counter() - start) * 1000, 1)
    return result


async def health_report(settings: Settings, db: Database) -> tuple[bool, dict[str, Any]]:
    t = settings.health_timeout_seconds
    database, redis_, celery_, chroma = await asyncio.gather(
        _run(lambda: check_database(db, t), t),
        _run(lambda: check_redis(settings, t), t),
        _run(lambda: check_celery(settings, t), t),
        _run(lambda: check_chroma(settings, t), t),
    )
    report: dict[str, Any] = {
        "status": "ok",
        "api": {"status": "ok"},
        "database": database,
        "redis": redis_,
        "celery": celery_,
        "chroma": chroma,
        "timestamp": datetime.now(UTC).isoformat(),
    }
    healthy = all(report[c]["status"] == "ok" for c in COMPONENTS)
    report["status"] = "ok" if healthy else "error"
    return healthy, report
