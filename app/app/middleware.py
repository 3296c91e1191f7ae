"""Pure ASGI middleware (safe with streaming bodies): request ids, access log, metrics,
and the 500 answer for unhandled exceptions (in the error model, with X-Request-ID)."""

from __future__ import annotations

import json
import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body
from app.log import get_logger
from app.metrics import observe_request

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = get_logger("app.access")


class RequestContextMiddleware:
    """Request id (accepted from X-Request-ID or made), X-Process-Time, one access log line,
    and the request's count and duration by route template (app.metrics)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _VALID_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                elapsed = time.perf_counter() - start
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"x-process-time", f"{elapsed:.4f}".encode()))
                message["headers"] = headers
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            # Details (redacted) to the log only; the client gets the request id to quote.
            log.exception("unhandled_error", method=scope["method"], path=scope["path"])
            if not started:
                body = json.dumps(error_body(500, "internal_error", "internal error",
                                             request_id)).encode()
                await send_wrapper({"type": "http.response.start", "status": 500,
                                    "headers": [(b"content-type", b"application/json"),
                                                (b"content-length", str(len(body)).encode())]})
                await send_wrapper({"type": "http.response.body", "body": body})
        finally:
            observe_request(scope, status, time.perf_counter() - start)
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],  # never the query string: it may carry tokens
                status=status,
                duration_ms=round((time.perf_counter() - start) * 1000, 2),
                client=(scope.get("client") or ("-",))[0],
            )
            structlog.contextvars.unbind_contextvars("request_id")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None
