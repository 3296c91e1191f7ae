"""Structured JSON logs on stdout (structlog), stdlib logging routed through them."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SENSITIVE = re.compile(
    r"passw(or)?d|secret|token|authorization|api[_-]?key|cookie|credential", re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@/\s]+@", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Drop passwords from URLs inside free text (e.g. exception messages)."""
    return _URL_PASSWORD.sub(r"\g<scheme>:***@", text)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key != "event" and _SENSITIVE.search(key):
            event[key] = "***"
        elif isinstance(event[key], str):
            event[key] = redact_text(event[key])
    return event


def _redact_exception(_: Any, __: str,
                      event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Tracebacks are rendered after _redact ran: redact their text too."""
    if isinstance(event.get("exception"), str):
        event["exception"] = redact_text(event["exception"])
    return event


_configured = False


def configure_logging(level: str = "INFO") -> None:
    """Idempotent: JSON lines on stdout for structlog and stdlib loggers alike."""
    global _configured
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_exception,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_ai_platform", False) or not _configured:
            root.removeHandler(old)
    handler._ai_platform = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own handlers would print plain text; let records reach the root instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # Access lines come from our middleware (with request id and timing).
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "chromadb", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    _configured = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)


def _scrub_event(event: dict[str, Any], _hint: Any) -> dict[str, Any]:
    """Sentry events: passwords in URLs and messages removed, like the logs."""
    for exc in (event.get("exception") or {}).get("values") or []:
        if isinstance(exc.get("value"), str):
            exc["value"] = redact_text(exc["value"])
    if isinstance(event.get("message"), str):
        event["message"] = redact_text(event["message"])
    return event


def init_sentry(settings: Any) -> bool:
    """Report errors to Sentry when SENTRY_DSN is set (sentry-sdk is in requirements.lock).
    Unset: the SDK is not even imported, and nothing is sent anywhere."""
    dsn = settings.sentry_dsn.get_secret_value() if settings.sentry_dsn else ""
    if not dsn:
        return False
    import sentry_sdk

    from app import __version__

    sentry_sdk.init(dsn=dsn, environment=settings.environment, release=f"ai-platform@{__version__}",
                    send_default_pii=False, include_local_variables=False,
                    before_send=_scrub_event)
    return True
