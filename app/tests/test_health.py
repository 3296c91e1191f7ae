"""Health endpoints, request ids, timing header and JSON logs without secrets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import captured_logs

COMPONENTS = ("api", "database", "redis", "celery", "chroma")


def test_liveness_has_no_dependencies(client: Any) -> None:
    r = client.get("/health/live")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_health_all_ok(client: Any, worker: Any) -> None:
    for path in ("/health/details", "/api/v1/health/details"):
        r = client.get(path)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ok"
        for c in COMPONENTS:
            assert body[c]["status"] == "ok", c
        assert body["celery"]["latency_ms"] < 1500  # answered, not timed out
        assert "timestamp" in body and body["version"] == "1.0.0"


@pytest.fixture()
def broken_client(settings: Any, dead_port: int) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    broken = settings.model_copy(update={
        "redis_url": f"redis://127.0.0.1:{dead_port}/0",
        "celery_broker_url": f"redis://127.0.0.1:{dead_port}/0",
        "chroma_url": f"http://127.0.0.1:{dead_port}",
        "health_timeout_seconds": 1.0,
    })
    with TestClient(create_app(broken)) as c:
        yield c


def test_health_503_when_dependencies_are_down(broken_client: Any) -> None:
    assert broken_client.get("/health").status_code == 503
    r = broken_client.get("/health/details")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "error"
    assert body["api"]["status"] == "ok" and body["database"]["status"] == "ok"
    for c in ("redis", "celery", "chroma"):
        assert body[c]["status"] == "error" and body[c]["error"], c
    assert r.elapsed.total_seconds() < 6
    assert broken_client.get("/health/live").status_code == 200


def test_health_503_when_database_is_down(settings: Any, dead_port: int) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    url = f"postgresql+psycopg://app:topsecretpw@127.0.0.1:{dead_port}/nope"
    with TestClient(create_app(settings.model_copy(update={"database_url": url}))) as c:
        r = c.get("/health/details")
        assert r.status_code == 503
        assert r.json()["database"]["status"] == "error"
        assert "topsecretpw" not in r.text
        # Requests needing the database answer 503, not 500.
        r = c.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "x"})
        assert r.status_code == 503


def test_request_id_and_process_time(client: Any) -> None:
    r = client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert float(r.headers["x-process-time"]) >= 0
    r = client.get("/health/live", headers={"X-Request-ID": "bad id with spaces\n"})
    assert r.headers["x-request-id"] != "bad id with spaces\n"
    assert len(client.get("/health/live").headers["x-request-id"]) == 32


def test_logs_are_json_and_free_of_secrets(client: Any, user: dict[str, Any]) -> None:
    import logging

    with captured_logs() as lines:  # every line is JSON
        client.post("/api/v1/auth/login",
                    json={"email": user["email"], "password": user["password"]},
                    headers={"X-Request-ID": "log-check-1"})
        client.get("/api/v1/users/me", headers=user["headers"])
        client.get(f"/api/v1/projects?token={user['token']}", headers=user["headers"])
        logging.getLogger("app.test").info("probe", extra={"api_key": "sk-should-not-appear"})
        import structlog

        structlog.get_logger("app.test").info("probe2", password="hunter2-never",
                                              dsn="postgresql://u:pw-never@h/db")
    out = lines.text
    access = [x for x in lines if x.get("event") == "request"]
    assert any(x.get("request_id") == "log-check-1" and x["status"] == 200 for x in access)
    assert all({"method", "path", "status", "duration_ms", "timestamp"} <= x.keys()
               for x in access)
    for secret in (user["password"], user["token"], "hunter2-never", "pw-never"):
        assert secret not in out
