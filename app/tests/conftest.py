"""Fixtures over REAL services: PostgreSQL, Redis, ChromaDB and Celery worker processes.

tests/run-app-tests.sh starts the services and exports their URLs:
AI_TEST_PG_ADMIN_URL, AI_TEST_REDIS_URL, AI_TEST_CHROMA_URL (and AI_TEST_STATE_DIR).
The app's own environment variables are set here, before any ``app`` module is imported.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.fernet import Fernet
from helpers import Worker

REQUIRED = ("AI_TEST_PG_ADMIN_URL", "AI_TEST_REDIS_URL", "AI_TEST_CHROMA_URL")
RUN_ID = uuid.uuid4().hex[:8]
TEST_DB = f"aiplat_test_{RUN_ID}"
STATE_DIR = Path(os.environ.get("AI_TEST_STATE_DIR", f"/tmp/ai-platform-test-{RUN_ID}"))
LOG_DIR = STATE_DIR / "logs"


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def db_url(name: str) -> str:
    base = os.environ["AI_TEST_PG_ADMIN_URL"].rsplit("/", 1)[0]
    return f"{base}/{name}"


def admin_execute(sql: str) -> None:
    with psycopg.connect(_libpq(os.environ["AI_TEST_PG_ADMIN_URL"]), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def pytest_configure(config: pytest.Config) -> None:
    missing = [v for v in REQUIRED if not os.environ.get(v)]
    if missing:
        raise pytest.UsageError(
            f"missing {', '.join(missing)}: run the suite with tests/run-app-tests.sh"
        )
    admin_execute(f'CREATE DATABASE "{TEST_DB}"')
    redis_url = os.environ["AI_TEST_REDIS_URL"].rstrip("/")
    os.environ.update({
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "INFO",
        "DATABASE_URL": db_url(TEST_DB),
        "REDIS_URL": f"{redis_url}/0",
        "CELERY_BROKER_URL": f"{redis_url}/0",
        "CELERY_RESULT_BACKEND": f"{redis_url}/0",
        "CHROMA_URL": os.environ["AI_TEST_CHROMA_URL"],
        "CHROMA_COLLECTION": f"test-{RUN_ID}",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "INDEX_RETRY_BACKOFF_SECONDS": "0.5",
        "HEALTH_TIMEOUT_SECONDS": "2",
        # Cheap argon2id for speed; production refuses memory below 19 MiB (see test_config).
        "PASSWORD_HASH_TIME_COST": "1",
        "PASSWORD_HASH_MEMORY_KIB": "1024",
        "PASSWORD_HASH_PARALLELISM": "1",
        # The fake provider servers of the tests listen on loopback, reached as localhost.
        "PROVIDER_HTTP_ALLOWLIST": "localhost",
        "QUOTA_ASKS_PER_DAY": "0",
    })
    for var in ("DATABASE_READ_URL", "OPENAI_API_KEY", "DEEPSEEK_API_KEY", "JWT_SECRET_KEY",
                "EMBEDDING_MODEL_DIR", "CHROMA_TOKEN", "SENTRY_DSN", "REGISTRATION_MODE"):
        os.environ.pop(var, None)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / "pids").mkdir(parents=True, exist_ok=True)
    os.environ["AI_TEST_RUN_ID"] = RUN_ID
    os.environ.setdefault("AI_TEST_STATE_DIR", str(STATE_DIR))
    import redis

    redis.Redis.from_url(f"{redis_url}/0").flushdb()
    redis.Redis.from_url(f"{redis_url}/1").flushdb()


def pytest_unconfigure(config: pytest.Config) -> None:
    if all(os.environ.get(v) for v in REQUIRED):
        with contextlib.suppress(psycopg.Error):
            admin_execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


# ---------------------------------------------------------------- app and client
@pytest.fixture(scope="session")
def migrated() -> None:
    from app import migrate

    migrate.upgrade(migrate.alembic_config(os.environ["DATABASE_URL"]))


@pytest.fixture(scope="session")
def settings(migrated: None) -> Any:
    from app.config import get_settings

    return get_settings()


@pytest.fixture(scope="session")
def app(settings: Any) -> Any:
    from app.main import create_app

    return create_app(settings)


@pytest.fixture(scope="session")
def client(app: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture()
def make_user(client: Any) -> Callable[..., dict[str, Any]]:
    def _make(email: str | None = None, password: str = "correct horse battery") -> dict:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        r = client.post("/api/v1/auth/register", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        r = client.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        return {"email": email, "password": password, "token": token,
                "headers": {"Authorization": f"Bearer {token}"}}

    return _make


@pytest.fixture()
def user(make_user: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return make_user()


@pytest.fixture()
def project(client: Any, user: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/api/v1/projects", json={"name": f"kb-{uuid.uuid4().hex[:6]}"},
                    headers=user["headers"])
    assert r.status_code == 201, r.text
    return r.json()


# ---------------------------------------------------------------- celery workers
@pytest.fixture(scope="session")
def worker(settings: Any) -> Iterator[Worker]:
    w = Worker("main")
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="session")
def dead_port() -> int:
    """A loopback port with nothing listening."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


@pytest.fixture()
def fresh_db() -> Iterator[str]:
    """An empty database of its own; dropped afterwards."""
    name = f"aiplat_mig_{uuid.uuid4().hex[:8]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield db_url(name)
    finally:
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
