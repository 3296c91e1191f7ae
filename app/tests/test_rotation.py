"""Key and password rotation (playbooks/rotate_secrets.yml): the overlap the app provides.

- JWT: tokens signed with a key in JWT_PREVIOUS_SECRET_KEYS stay valid; without it they fail.
- Fernet: secrets stored under a key in ENCRYPTION_PREVIOUS_KEYS still decrypt, and
  `ai-platform reencrypt-secrets` re-encrypts them with ENCRYPTION_KEY (idempotent).
- Database: a connection refused with the URL's password is tried with
  DATABASE_PREVIOUS_PASSWORD, against a real PostgreSQL role.
"""

from __future__ import annotations

import os
import secrets
import uuid
from typing import Any

import pytest
from conftest import admin_execute
from cryptography.fernet import Fernet
from helpers import run_cli
from sqlalchemy import select, text


def _settings(**env: str) -> Any:
    from app.config import Settings

    return Settings(**{k.lower(): v for k, v in env.items()})


def test_token_signed_with_a_previous_key_is_accepted_during_the_overlap(settings: Any) -> None:
    from app.security import InvalidTokenError, create_access_token, decode_access_token

    old, new = secrets.token_urlsafe(40), secrets.token_urlsafe(40)
    user_id = uuid.uuid4()
    old_token, _ = create_access_token(user_id, 0, _settings(jwt_secret_key=old))
    rotating = _settings(jwt_secret_key=new,
                         jwt_previous_secret_keys=f"{old}, {secrets.token_urlsafe(40)}")
    assert decode_access_token(old_token, rotating) == (user_id, 0)
    new_token, _ = create_access_token(user_id, 0, rotating)
    assert decode_access_token(new_token, _settings(jwt_secret_key=new)) == (user_id, 0)
    # After the overlap: the previous key is gone, its tokens are refused.
    with pytest.raises(InvalidTokenError):
        decode_access_token(old_token, _settings(jwt_secret_key=new))
    # A token whose other parts are bad is refused whatever the keys.
    with pytest.raises(InvalidTokenError):
        decode_access_token(old_token[:-4] + "AAAA", rotating)


def test_previous_jwt_keys_are_checked_in_production() -> None:
    from app.config import production_problems

    s = _settings(environment="test", secret_key=secrets.token_urlsafe(40),
                  encryption_key=Fernet.generate_key().decode(),
                  jwt_previous_secret_keys="short", encryption_previous_keys="not-a-key")
    problems = " ".join(production_problems(s))
    assert "JWT_PREVIOUS_SECRET_KEYS is shorter" in problems
    assert "ENCRYPTION_PREVIOUS_KEYS is not a valid Fernet key" in problems


def test_fernet_rotation_decrypts_old_and_reencrypts_stored_keys(settings: Any) -> None:
    from app.db import Database
    from app.models import Provider
    from app.security import decrypt_secret, encrypt_secret

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    stored = encrypt_secret("sk-rotation-test-0123456789", _settings(encryption_key=old))
    db = Database(settings)
    try:
        with db.session() as s:
            p = Provider(owner_id=None, name=f"rot-{uuid.uuid4().hex[:6]}",
                         base_url="https://llm.example.org/v1", model="m", api_key_encrypted=stored)
            s.add(p)
            s.flush()
            pid = p.id
        rotating = {"ENCRYPTION_KEY": new, "ENCRYPTION_PREVIOUS_KEYS": old}
        assert decrypt_secret(stored, _settings(**rotating)) == "sk-rotation-test-0123456789"
        assert decrypt_secret(stored, _settings(encryption_key=new)) is None

        out = run_cli(["reencrypt-secrets"], **rotating)
        assert out.returncode == 0, out.stderr
        assert "reencrypt-secrets: changed (" in out.stdout, out.stdout
        with db.session() as s:
            token = s.scalar(select(Provider.api_key_encrypted).where(Provider.id == pid))
        # Encrypted with the new key now: it decrypts without the old one.
        assert decrypt_secret(token, _settings(encryption_key=new)) == "sk-rotation-test-0123456789"
        again = run_cli(["reencrypt-secrets"], **rotating)
        assert "reencrypt-secrets: no change (0 re-encrypted" in again.stdout, again.stdout
    finally:
        with db.session() as s:
            s.execute(text("DELETE FROM providers WHERE name LIKE 'rot-%'"))
        db.dispose()


def test_database_previous_password_is_tried_when_the_current_one_is_refused(settings: Any) -> None:
    from sqlalchemy.exc import OperationalError

    from app.db import make_engine

    role, old, new = f"rot_{uuid.uuid4().hex[:8]}", secrets.token_hex(16), secrets.token_hex(16)
    # Members of password_auth log in with a checked password (tests/run-app-tests.sh's pg_hba).
    admin_execute("DO $$ BEGIN CREATE ROLE password_auth NOLOGIN; "
                  "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    admin_execute(f"CREATE ROLE {role} LOGIN PASSWORD '{old}' IN ROLE password_auth")
    try:
        base = os.environ["DATABASE_URL"]
        scheme, rest = base.split("://", 1)
        url = f"{scheme}://{role}:{new}@{rest.split('@', 1)[1]}"
        # The app has the new password, the database still the old one.
        refused = make_engine(url, _settings(database_url=url))
        with pytest.raises(OperationalError, match="password authentication failed"):
            refused.connect().close()
        refused.dispose()
        overlap = make_engine(url, _settings(database_url=url, database_previous_password=old))
        with overlap.connect() as conn:
            assert conn.scalar(text("SELECT current_user")) == role
        # The database takes the new password: the same engine connects with it.
        admin_execute(f"ALTER ROLE {role} PASSWORD '{new}'")
        overlap.dispose()
        with overlap.connect() as conn:
            assert conn.scalar(text("SELECT 1")) == 1
        overlap.dispose()
    finally:
        admin_execute(f"DROP ROLE IF EXISTS {role}")
