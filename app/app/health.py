"""Dependency checks for GET /health, each bounded by HEALTH_TIMEOUT_SECONDS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import httpx
import redis
from celery import Celery
from sqlalchemy import text

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


def check_redis(url: str, timeout: float) -> None:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


@lru_cache(maxsize=8)
def _control_app(broker_url: str) -> Celery:
    # A bare Celery app: broadcasting a ping needs only the broker, not our tasks.
    app = Celery("ai_platform_health", broker=broker_url, set_as_current=False)
    app.conf.broker_connection_timeout = 2
    app.conf.broker_connection_retry = False
    return app


def check_celery(broker_url: str, timeout: float) -> None:
    app = _control_app(broker_url)
    # The URL is passed explicitly: Celery would otherwise prefer $CELERY_BROKER_URL.
    with app.connection_for_write(url=broker_url) as conn:
        conn.ensure_connection(max_retries=0, timeout=timeout)
        # limit=1: return at the first reply instead of waiting out the timeout.
        replies = app.control.ping(timeout=timeout, limit=1, connection=conn)
    if not replies:
        raise RuntimeError("no worker answered the ping")


def check_chroma(settings: Settings, timeout: float) -> None:
    resp = httpx.get(settings.chroma_url.rstrip("/") + "/api/v2/heartbeat",
                     headers=settings.chroma_headers, timeout=timeout)
    resp.raise_for_status()


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
        _run(lambda: check_redis(settings.redis_url, t), t),
        _run(lambda: check_celery(settings.broker_url, t), t),
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
