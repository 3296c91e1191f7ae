"""Accounts as an attacker would use them: token versions (logout, password change,
create-admin), default secrets, per-account login throttling, bounded argon2 hashing,
registration modes, quotas, personal API keys and the one way in (one bearer scheme)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import run_cli, upload

ME = "/api/v1/users/me"


def test_logout_ends_every_token(client: Any, user: dict[str, Any]) -> None:
    second = client.post("/api/v1/auth/login", json={"email": user["email"],
                                                     "password": user["password"]}).json()
    assert client.post("/api/v1/auth/logout", headers=user["headers"]).status_code == 204
    assert client.get(ME, headers=user["headers"]).status_code == 401
    other = {"Authorization": f"Bearer {second['access_token']}"}
    assert client.get(ME, headers=other).status_code == 401
    again = client.post("/api/v1/auth/login", json={"email": user["email"],
                                                    "password": user["password"]})
    assert client.get(ME, headers={"Authorization": f"Bearer {again.json()['access_token']}"}
                      ).status_code == 200


def test_password_change(client: Any, user: dict[str, Any]) -> None:
    url = "/api/v1/auth/password"
    wrong = client.post(url, headers=user["headers"],
                        json={"current_password": "not-it-at-all", "new_password": "n3w-pass-word"})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "wrong_password"
    r = client.post(url, headers=user["headers"],
                    json={"current_password": user["password"], "new_password": "n3w-pass-word"})
    assert r.status_code == 200, r.text
    assert client.get(ME, headers=user["headers"]).status_code == 401  # the old token
    fresh = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert client.get(ME, headers=fresh).status_code == 200
    old = client.post("/api/v1/auth/login", json={"email": user["email"],
                                                  "password": user["password"]})
    assert old.status_code == 401
    assert client.post("/api/v1/auth/login", json={"email": user["email"],
                                                   "password": "n3w-pass-word"}).status_code == 200


def test_tokens_of_earlier_releases_end_at_logout(client: Any, user: dict[str, Any],
                                                  settings: Any) -> None:
    """A token without ``ver`` (made by a release before token versions) is version 0:
    it survives a rolling upgrade, and dies with the account's first logout."""
    from datetime import UTC, datetime, timedelta

    import jwt

    me = client.get(ME, headers=user["headers"]).json()
    now = datetime.now(UTC)
    legacy = {"Authorization": "Bearer " + jwt.encode(
        {"sub": me["id"], "iat": now, "exp": now + timedelta(minutes=5), "type": "access"},
        settings.jwt_key, algorithm="HS256")}
    assert client.get(ME, headers=legacy).status_code == 200
    assert client.post("/api/v1/auth/logout", headers=user["headers"]).status_code == 204
    assert client.get(ME, headers=legacy).status_code == 401
    forged = {"Authorization": "Bearer " + jwt.encode(
        {"sub": me["id"], "iat": now, "exp": now + timedelta(minutes=5), "type": "access",
         "ver": "1"}, settings.jwt_key, algorithm="HS256")}
    assert client.get(ME, headers=forged).status_code == 401  # a version must be a number


def test_create_admin_refuses_silent_promotion(client: Any, make_user: Any,
                                               tmp_path: Any) -> None:
    victim = make_user()
    pw = tmp_path / "pw"
    pw.write_text("admin-password-1\n")
    r = run_cli(["create-admin", "--email", victim["email"], "--password-file", str(pw)])
    assert r.returncode == 1 and "--promote" in r.stderr, (r.stdout, r.stderr)
    assert client.get(ME, headers=victim["headers"]).json()["is_admin"] is False
    ok = client.post("/api/v1/auth/login", json={"email": victim["email"],
                                                 "password": victim["password"]})
    assert ok.status_code == 200  # the password was not reset
    r = run_cli(["create-admin", "--email", victim["email"], "--password-file", str(pw),
                 "--promote"])
    assert r.returncode == 0 and f"create-admin: updated {victim['email']}" in r.stdout
    assert client.get(ME, headers=victim["headers"]).status_code == 401  # tokens ended
    r = client.post("/api/v1/auth/login", json={"email": victim["email"],
                                                "password": "admin-password-1"})
    me = client.get(ME, headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert me.json()["is_admin"] is True


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_only_development_and_test_run_on_default_secrets(environment: str) -> None:
    from pydantic import ValidationError

    from app.config import Settings

    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(environment=environment, secret_key="", encryption_key=None)
    for env in ("development", "test"):
        assert Settings(environment=env, secret_key="", encryption_key=None).jwt_key


def test_login_throttled_per_account(client: Any, make_user: Any, settings: Any) -> None:
    victim = make_user()
    for _ in range(settings.login_max_failures):
        r = client.post("/api/v1/auth/login",
                        json={"email": victim["email"], "password": "guess-guess"})
        assert r.status_code == 401
    r = client.post("/api/v1/auth/login",  # even the right password now waits
                    json={"email": victim["email"], "password": victim["password"]})
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) > 0
    assert r.json()["error"]["code"] == "login_throttled"
    other = make_user()  # another account is not affected
    assert client.post("/api/v1/auth/login", json={"email": other["email"],
                                                   "password": other["password"]}
                       ).status_code == 200


def test_password_hashing_is_bounded(settings: Any, user: dict[str, Any]) -> None:
    """With every hashing slot taken, a login waits PASSWORD_HASH_WAIT_SECONDS and is
    answered 503 with Retry-After instead of starting another argon2 hash."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.security import hashing_slots

    s = settings.model_copy(update={"password_hash_concurrency": 1,
                                    "password_hash_wait_seconds": 0.5})
    slots = hashing_slots(s)
    assert slots.acquire(timeout=5)
    try:
        with TestClient(create_app(s)) as c:
            r = c.post("/api/v1/auth/login",
                       json={"email": user["email"], "password": user["password"]})
    finally:
        slots.release()
    assert r.status_code == 503 and r.headers.get("retry-after"), r.text


@pytest.fixture()
def app_with(settings: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    clients: list[Any] = []

    def _make(**update: Any) -> Any:
        c = TestClient(create_app(settings.model_copy(update=update)))
        c.__enter__()
        clients.append(c)
        return c

    yield _make
    for c in clients:
        c.__exit__(None, None, None)


def _register(c: Any, email: str, **extra: Any) -> Any:
    return c.post("/api/v1/auth/register",
                  json={"email": email, "password": "long-enough-pw", **extra})


def test_registration_closed(app_with: Any) -> None:
    c = app_with(registration_mode="closed")
    r = _register(c, f"closed-{uuid.uuid4().hex[:8]}@example.com")
    assert r.status_code == 403 and r.json()["error"]["code"] == "registration_closed"


def test_registration_by_invitation(app_with: Any, client: Any, make_user: Any,
                                    tmp_path: Any) -> None:
    c = app_with(registration_mode="invite")
    email = f"invited-{uuid.uuid4().hex[:8]}@example.com"
    assert _register(c, email).status_code == 403
    assert _register(c, email, invite_code="inv_made-up").status_code == 403
    admin = make_user()
    pw = tmp_path / "pw"
    pw.write_text(admin["password"])
    run_cli(["create-admin", "--email", admin["email"], "--password-file", str(pw),
             "--promote"])
    tok = client.post("/api/v1/auth/login", json={"email": admin["email"],
                                                  "password": admin["password"]}).json()
    ah = {"Authorization": f"Bearer {tok['access_token']}"}
    plain = make_user()
    assert c.post("/api/v1/admin/invites", json={}, headers=plain["headers"]).status_code == 403
    inv = c.post("/api/v1/admin/invites", json={"email": email}, headers=ah)
    assert inv.status_code == 201, inv.text
    code = inv.json()["code"]
    other = f"other-{uuid.uuid4().hex[:8]}@example.com"
    assert _register(c, other, invite_code=code).status_code == 403  # bound to one email
    assert _register(c, email, invite_code=code).status_code == 201
    assert _register(c, f"x{email}", invite_code=code).status_code == 403  # used up


def test_quotas(app_with: Any) -> None:
    c = app_with(quota_projects=1, quota_documents=1, quota_storage_bytes=0,
                 quota_asks_per_day=1)
    email = f"quota-{uuid.uuid4().hex[:8]}@example.com"
    _register(c, email)
    tok = c.post("/api/v1/auth/login", json={"email": email, "password": "long-enough-pw"})
    u = {"headers": {"Authorization": f"Bearer {tok.json()['access_token']}"}}
    p = c.post("/api/v1/projects", json={"name": "one"}, headers=u["headers"])
    assert p.status_code == 201
    r = c.post("/api/v1/projects", json={"name": "two"}, headers=u["headers"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded"
    pid = p.json()["id"]
    assert upload(c, u, pid, "a.txt", b"first document").status_code == 201
    r = upload(c, u, pid, "b.txt", b"second document")
    assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded"
    ask = {"question": "anything?"}
    first = c.post(f"/api/v1/projects/{pid}/ask", json=ask, headers=u["headers"])
    assert first.status_code in (200, 503), first.text  # 503 only if Chroma were down
    r = c.post(f"/api/v1/projects/{pid}/ask", json=ask, headers=u["headers"])
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_storage_quota(app_with: Any) -> None:
    c = app_with(quota_storage_bytes=100)
    email = f"bytes-{uuid.uuid4().hex[:8]}@example.com"
    _register(c, email)
    tok = c.post("/api/v1/auth/login", json={"email": email, "password": "long-enough-pw"})
    u = {"headers": {"Authorization": f"Bearer {tok.json()['access_token']}"}}
    pid = c.post("/api/v1/projects", json={"name": "b"}, headers=u["headers"]).json()["id"]
    assert upload(c, u, pid, "a.txt", b"x" * 60).status_code == 201
    r = upload(c, u, pid, "b.txt", b"y" * 60)
    assert r.status_code == 403 and "bytes" in r.json()["error"]["message"]


def test_env_provider_keys_only_on_opt_in(client: Any, settings: Any,
                                          user: dict[str, Any]) -> None:
    from pydantic import SecretStr

    from app.answer import resolve_provider
    from app.db import Database
    from app.models import User

    db = Database(settings)
    with db.session() as s:
        me = s.get(User, uuid.UUID(client.get(ME, headers=user["headers"]).json()["id"]))
        off = settings.model_copy(update={"openai_api_key": SecretStr("sk-operator-key")})
        assert resolve_provider(s, me, off, None) is None
        on = off.model_copy(update={"offer_env_providers": True})
        assert resolve_provider(s, me, on, None).name == "openai"  # type: ignore[union-attr]
    db.dispose()


def test_api_keys(client: Any, user: dict[str, Any], settings: Any) -> None:
    r = client.post("/api/v1/api-keys", json={"name": "script"}, headers=user["headers"])
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith("aip_") and created["prefix"] == key[:12]
    kh = {"Authorization": f"Bearer {key}"}
    assert client.get(ME, headers=kh).json()["email"] == user["email"]
    listed = client.get("/api/v1/api-keys", headers=user["headers"]).json()
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT key_hash FROM api_keys WHERE id = :i"),
                              {"i": created["id"]}).scalar_one()
    engine.dispose()
    assert key not in stored and len(stored) == 64  # hashed at rest
    # A key cannot make more keys or change the password.
    assert client.post("/api/v1/api-keys", json={"name": "x"}, headers=kh).status_code == 403
    assert client.delete(f"/api/v1/api-keys/{created['id']}",
                         headers=user["headers"]).status_code == 204
    assert client.get(ME, headers=kh).status_code == 401
    assert client.get(ME, headers={"Authorization": "Bearer aip_made-up"}).status_code == 401


def test_one_bearer_scheme_everywhere(app: Any) -> None:
    spec = app.openapi()
    assert list(spec["components"]["securitySchemes"]) == ["OAuth2PasswordBearer"]
    public = {("/api/v1/auth/register", "post"), ("/api/v1/auth/login", "post"),
              ("/api/v1/auth/token", "post"), ("/health", "get"), ("/health/live", "get")}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if (path, method) in public:
                continue
            assert op.get("security") == [{"OAuth2PasswordBearer": []}], (path, method)


def test_one_token_to_user_function() -> None:
    """The token -> user logic lives in app.api.deps.user_from_token only."""
    import inspect

    import app.api.documents
    import app.api.search

    for module in (app.api.documents, app.api.search):
        source = inspect.getsource(module)
        assert "decode_access_token" not in source and "HTTPBearer" not in source


def test_concurrent_logins_all_answered(client: Any, user: dict[str, Any]) -> None:
    codes: list[int] = []

    def one() -> None:
        codes.append(client.post("/api/v1/auth/login", json={
            "email": user["email"], "password": user["password"]}).status_code)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(codes)) == [200], codes
