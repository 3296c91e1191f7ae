"""One error model for every answer that is not a success:
``{"error": {"code": "...", "message": "...", "request_id": "..."}}``.

``ApiError`` carries a stable machine-readable ``code``; FastAPI's HTTPException and
validation errors, database outages and busy pools are mapped onto the same body here.
Unhandled exceptions become a 500 in app.middleware (so that the answer still carries
X-Request-ID); their details only go to the log.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.log import get_logger
from app.security import HashingBusy

log = get_logger("app.errors")
RETRY_AFTER_SECONDS = "5"

_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "validation_error", 429: "too_many_requests",
    500: "internal_error", 503: "service_unavailable",
}


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


# Documented on every route (FastAPI(responses=...)).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": code.replace("_", " ")}
    for status, code in _CODES.items() if status not in (405,)
}


class ApiError(Exception):
    """An answer with a status, a stable code, a message for the user and headers."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def request_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def error_body(status: int, code: str | None, message: str,
               request_id: str | None) -> dict[str, Any]:
    return {"error": {"code": code or _CODES.get(status, "error"), "message": message,
                      "request_id": request_id}}


def error_response(request: Request, status: int, code: str | None, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, code, message, request_id_of(request)),
                        status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else _CODES.get(exc.status_code, "")
        return error_response(request, exc.status_code, None, message,
                              getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, "validation_error", _validation_message(exc))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def db_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.error("database_error", error=type(exc).__name__, path=request.url.path)
        return error_response(request, 503, "database_unavailable", "database unavailable",
                              {"Retry-After": RETRY_AFTER_SECONDS})

    @app.exception_handler(PoolTimeout)
    async def pool_busy(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database_pool_exhausted", path=request.url.path)
        return error_response(request, 503, "database_busy",
                              "all database connections are busy, retry shortly",
                              {"Retry-After": RETRY_AFTER_SECONDS})

    @app.exception_handler(HashingBusy)
    async def hashing_busy(request: Request, exc: Exception) -> JSONResponse:
        log.warning("password_hashing_busy", path=request.url.path)
        return error_response(request, 503, "busy", "too many sign-ins at once, retry shortly",
                              {"Retry-After": RETRY_AFTER_SECONDS})
