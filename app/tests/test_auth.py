"""Accounts: registration, login, profile; bad input and bad tokens."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest


def test_register_login_me(client: Any) -> None:
    email = f"Alice-{uuid.uuid4().hex[:6]}@Example.org"
    r = client.post("/api/v1/auth/register", json={"email": email, "password": "s3cret-pass"})
    assert r.status_code == 201
    body = r.json()
    assert body["email"] == email.lower() and body["is_admin"] is False
    assert "password" not in r.text and "hash" not in r.text

    r = client.post("/api/v1/auth/login", json={"email": email.upper(), "password": "s3cret-pass"})
    assert r.status_code == 200
    tok = r.json()
    assert tok["token_type"] == "bearer" and tok["expires_in"] == 30 * 60
    headers = {"Authorization": f"Bearer {tok['access_token']}"}
    for path in ("/api/v1/users/me", "/api/v1/auth/me"):
        me = client.get(path, headers=headers)
        assert me.status_code == 200 and me.json()["id"] == body["id"]
    header = jwt.get_unverified_header(tok["access_token"])
    assert header["alg"] == "HS256"


def test_oauth2_form_token(client: Any, user: dict[str, Any]) -> None:
    r = client.post("/api/v1/auth/token",
                    data={"username": user["email"], "password": user["password"]})
    assert r.status_code == 200 and r.json()["access_token"]


def test_stored_hash_is_argon2(client: Any, user: dict[str, Any], settings: Any) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        h = conn.execute(text("SELECT password_hash FROM users WHERE email = :e"),
                         {"e": user["email"]}).scalar_one()
    engine.dispose()
    assert h.startswith("$argon2id$")


def test_duplicate_registration_is_409(client: Any, user: dict[str, Any]) -> None:
    r = client.post("/api/v1/auth/register",
                    json={"email": user["email"].upper(), "password": "another-pass"})
    assert r.status_code == 409


@pytest.mark.parametrize("password", ["wrong-password", ""])
def test_wrong_password_is_401(client: Any, user: dict[str, Any], password: str) -> None:
    r = client.post("/api/v1/auth/login", json={"email": user["email"], "password": password})
    assert r.status_code in (401, 422)


def test_unknown_user_is_401(client: Any) -> None:
    r = client.post("/api/v1/auth/login",
                    json={"email": "nobody@example.com", "password": "whatever-pass"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "password": "long-enough"},
        {"email": "a@example.com", "password": "short"},
        {"email": "a@example.com"},
        {"password": "long-enough"},
        {"email": "a@example.com", "password": "long-enough", "is_admin": True},
        [],
    ],
)
def test_malformed_registration_is_422(client: Any, body: Any) -> None:
    assert client.post("/api/v1/auth/register", json=body).status_code == 422


def test_non_json_body_is_422(client: Any) -> None:
    r = client.post("/api/v1/auth/register", content=b"{not json",
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def _token(settings: Any, **claims: Any) -> str:
    now = datetime.now(UTC)
    base = {"sub": str(uuid.uuid4()), "iat": now, "exp": now + timedelta(minutes=5),
            "type": "access"}
    base.update(claims)
    return jwt.encode(base, settings.jwt_key, algorithm="HS256")


def test_bad_tokens_are_401(client: Any, user: dict[str, Any], settings: Any) -> None:
    me = client.get("/api/v1/users/me", headers=user["headers"]).json()
    now = datetime.now(UTC)
    bad = {
        "missing": None,
        "garbage": "not.a.token",
        "expired": _token(settings, sub=me["id"], iat=now - timedelta(hours=2),
                          exp=now - timedelta(hours=1)),
        "wrong key": jwt.encode({"sub": me["id"], "iat": now, "exp": now + timedelta(minutes=5),
                                 "type": "access"}, "another-key-" * 4, algorithm="HS256"),
        "alg none": jwt.encode({"sub": me["id"], "iat": now, "exp": now + timedelta(minutes=5),
                                "type": "access"}, None, algorithm="none"),
        "unknown user": _token(settings),
        "no type": _token(settings, sub=me["id"], type="refresh"),
        "bad sub": _token(settings, sub="not-a-uuid"),
    }
    for name, token in bad.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = client.get("/api/v1/users/me", headers=headers)
        assert r.status_code == 401, name
        assert r.headers.get("www-authenticate") == "Bearer", name
