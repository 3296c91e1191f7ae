"""GET /health (all dependencies; 503 if any fails) and GET /health/live (no dependencies)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import __version__
from app.health import health_report

router = APIRouter(tags=["health"])


@router.get("/health", responses={503: {"description": "a dependency is unhealthy"}})
async def health(request: Request) -> JSONResponse:
    healthy, report = await health_report(request.app.state.settings, request.app.state.db)
    report["version"] = __version__
    return JSONResponse(report, status_code=200 if healthy else 503,
                        headers={"Cache-Control": "no-store"})


@router.get("/health/live")
async def live() -> dict[str, Any]:
    return {"status": "ok", "version": __version__,
            "timestamp": datetime.now(UTC).isoformat()}
