"""Health endpoints.

* ``GET /health``: public (through Nginx). Only ``{"status": "ok"|"error"}``, 200 or 503;
  one check of the dependencies serves every caller for HEALTH_CACHE_SECONDS per process,
  so a flood of /health cannot turn into a flood of database queries and Celery pings.
* ``GET /health/details``: the checks with their latencies and errors, for the monitoring
  hosts and the deploy's health gate on the app port. Nginx refuses it, and the app
  refuses it too (404) when the request came through a proxy (X-Forwarded-For set).
* ``GET /health/live``: liveness only, no dependency touched.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import __version__
from app.errors import not_found
from app.health import health_report

router = APIRouter(tags=["health"])
NO_STORE = {"Cache-Control": "no-store"}


class _Cached:
    def __init__(self) -> None:
        self.at = -1e9
        self.healthy = False
        self.lock = asyncio.Lock()


async def _public_status(request: Request) -> bool:
    state = request.app.state
    cache: _Cached = getattr(state, "health_cache", None) or _Cached()
    state.health_cache = cache
    ttl = state.settings.health_cache_seconds
    if time.monotonic() - cache.at < ttl:
        return cache.healthy
    async with cache.lock:  # one check at a time; the others wait and reuse its result
        if time.monotonic() - cache.at >= ttl:
            cache.healthy, _ = await health_report(state.settings, state.db)
            cache.at = time.monotonic()
        return cache.healthy


@router.get("/health", responses={503: {"description": "a dependency is unhealthy"}})
async def health(request: Request) -> JSONResponse:
    healthy = await _public_status(request)
    ttl = request.app.state.settings.health_cache_seconds
    return JSONResponse({"status": "ok" if healthy else "error"},
                        status_code=200 if healthy else 503,
                        headers={"Cache-Control": f"max-age={int(ttl)}"})


@router.get("/health/details", include_in_schema=False)
async def health_details(request: Request) -> JSONResponse:
    if "x-forwarded-for" in request.headers or "x-real-ip" in request.headers:
        raise not_found("page")
    healthy, report = await health_report(request.app.state.settings, request.app.state.db)
    report["version"] = __version__
    return JSONResponse(report, status_code=200 if healthy else 503, headers=NO_STORE)


@router.get("/health/live")
async def live() -> dict[str, Any]:
    return {"status": "ok", "version": __version__,
            "timestamp": datetime.now(UTC).isoformat()}
