"""One error model everywhere, 500s with X-Request-ID and redacted tracebacks, database
pool exhaustion as 503 with Retry-After, /ask without a held connection, read-your-writes,
and the public /health (status only, cached) against /health/details."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import FakeLLM, add_provider, captured_logs


@pytest.fixture()
def make_client(settings: Any) -> Iterator[Any]:
    from app.main import create_app

    made: list[TestClient] = []

    def _make(**update: Any) -> tuple[Any, TestClient]:
        app = create_app(settings.model_copy(update=update))
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        made.append(c)
        return app, c

    yield _make
    for c in made:
        c.__exit__(None, None, None)


def _login(c: TestClient) -> dict[str, str]:
    email = f"err-{uuid.uuid4().hex[:8]}@example.com"
    c.post("/api/v1/auth/register", json={"email": email, "password": "long-enough-pw"})
    tok = c.post("/api/v1/auth/login", json={"email": email, "password": "long-enough-pw"})
    return {"Authorization": f"Bearer {tok.json()['access_token']}"}


def test_unhandled_error_is_500_with_request_id_and_redacted(make_client: Any) -> None:
    app, c = make_client()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("cannot reach postgresql://app:pw-never-logged@db1/app")

    with captured_logs() as logs:
        r = c.get("/boom", headers={"X-Request-ID": "req-500-check"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "req-500-check"
    assert r.json() == {"error": {"code": "internal_error", "message": "internal error",
                                  "request_id": "req-500-check"}}
    out = logs.text
    assert "unhandled_error" in out and "RuntimeError" in out  # the traceback is logged
    assert "pw-never-logged" not in out and "pw-never-logged" not in r.text


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), [
    ("GET", "/api/v1/users/me", {}, 401, "unauthorized"),
    ("GET", "/nowhere", {}, 404, "not_found"),
    ("POST", "/api/v1/auth/register", {"json": {"email": "x"}}, 422, "validation_error"),
])
def test_error_model(client: Any, method: str, path: str, kwargs: dict[str, Any],
                     status: int, code: str) -> None:
    r = client.request(method, path, headers={"X-Request-ID": "model-1"}, **kwargs)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["request_id"] == "model-1" and r.json()["error"]["message"]


def test_error_model_documented_for_every_route(app: Any) -> None:
    spec = app.openapi()
    assert "ErrorOut" in spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status in ("422", "500"):
                content = op["responses"][status]["content"]["application/json"]
                assert content["schema"]["$ref"].endswith("/ErrorOut"), (path, method, status)


def test_pool_timeout_is_503_with_retry_after(make_client: Any) -> None:
    app, c = make_client(database_pool_size=1, database_max_overflow=0,
                         database_pool_timeout=0.5)
    headers = _login(c)
    with app.state.db.engine.connect() as held:  # the only connection, taken
        held.exec_driver_sql("SELECT 1")
        r = c.get("/api/v1/projects", headers=headers)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] and r.json()["error"]["code"] == "database_busy"
    assert c.get("/api/v1/projects", headers=headers).status_code == 200


def test_database_connections_give_up_on_a_silent_host(make_client: Any) -> None:
    """Every pooled connection carries libpq's TCP user timeout and keepalives, so a
    database host cut off the network frees the requests waiting on it in seconds, not
    after the kernel's retransmissions (about 15 min). The behaviour itself is measured by
    the failover bench's network cut on the lab (loopback acknowledges every packet)."""
    app, _ = make_client(database_tcp_user_timeout_ms=7000, database_keepalives_idle=9)
    for engine in {app.state.db.engine, app.state.db.read_engine}:
        with engine.connect() as conn:
            params = conn.connection.dbapi_connection.info.get_parameters()
        assert params.get("tcp_user_timeout") == "7000", params
        assert (params.get("keepalives"), params.get("keepalives_idle")) == ("1", "9"), params


def test_ask_holds_no_connection_while_the_provider_thinks(make_client: Any,
                                                           worker: Any) -> None:
    """One pooled connection: while /ask waits for a slow provider, other requests of the
    same process still get it."""
    from helpers import upload, wait_for_status

    _, c = make_client(database_pool_size=1, database_max_overflow=0,
                       database_pool_timeout=20, llm_timeout_seconds=30)
    headers = _login(c)
    u = {"headers": headers}
    p = c.post("/api/v1/projects", json={"name": "slow"}, headers=headers).json()
    doc = upload(c, u, p["id"], "a.txt", b"Slow providers should not starve the pool.").json()
    wait_for_status(c, u, p["id"], doc["id"], {"ready"})
    with FakeLLM(delay=15) as llm:
        assert add_provider(c, u, llm.url).status_code == 201
        result: dict[str, Any] = {}
        asking = threading.Thread(target=lambda: result.update(r=c.post(
            f"/api/v1/projects/{p['id']}/ask", json={"question": "pool?"}, headers=headers)))
        asking.start()
        deadline = time.monotonic() + 30
        while not llm.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert llm.requests, "the provider was never called"
        r = c.get(f"/api/v1/projects/{p['id']}", headers=headers)
        still_asking = asking.is_alive()
        asking.join()
    assert r.status_code == 200, r.text
    assert still_asking  # answered while /ask was still waiting for the provider
    assert result["r"].json()["mode"] == "generative"


def test_read_your_writes(make_client: Any, fresh_db: str) -> None:
    """Reads go to a replica that has none of the new rows (lag): a user who just
    registered and made a project is still authenticated and finds it."""
    from app import migrate

    migrate.upgrade(migrate.alembic_config(fresh_db))
    _, c = make_client(database_read_url=fresh_db)
    headers = _login(c)
    p = c.post("/api/v1/projects", json={"name": "new"}, headers=headers).json()
    for path, body in ((f"/api/v1/projects/{p['id']}/search", {"query": "anything"}),
                       (f"/api/v1/projects/{p['id']}/ask", {"question": "anything?"})):
        r = c.post(path, json=body, headers=headers)
        assert r.status_code == 200, (path, r.status_code, r.text)


def test_public_health_is_status_only_and_cached(make_client: Any, worker: Any,
                                                 monkeypatch: Any) -> None:
    import app.api.health as api_health

    calls = []
    real = api_health.health_report

    async def counting(*args: Any) -> Any:
        calls.append(1)
        return await real(*args)

    monkeypatch.setattr(api_health, "health_report", counting)
    _, c = make_client(health_cache_seconds=60)
    for _ in range(5):
        r = c.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert len(calls) == 1
    details = c.get("/health/details")
    assert details.status_code == 200
    assert details.json()["database"]["status"] == "ok" and "latency_ms" in details.json()["redis"]
    proxied = c.get("/health/details", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status_code == 404


def test_public_health_hides_errors(make_client: Any, dead_port: int) -> None:
    _, c = make_client(redis_url=f"redis://127.0.0.1:{dead_port}/0",
                       health_timeout_seconds=1.0)
    r = c.get("/health")
    assert r.status_code == 503 and r.json() == {"status": "error"}
    d = c.get("/health/details").json()
    assert d["redis"]["status"] == "error" and d["redis"]["error"]
