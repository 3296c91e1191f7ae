"""The ai-platform console script: markers that automation can use for `changed`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from helpers import run_cli as run


def test_version() -> None:
    r = run(["--version"])
    assert r.returncode == 0 and "ai-platform 1.0.0" in r.stdout


def test_migrate_reports_applied_then_no_change(fresh_db: str) -> None:
    first = run(["migrate"], db=fresh_db)
    assert first.returncode == 0, first.stderr
    assert "applied 0001:" in first.stdout and "applied 0003:" in first.stdout
    assert "migrate: changed (3 revision(s) applied, now at 0003)" in first.stdout
    second = run(["migrate"], db=fresh_db)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "migrate: no change (already at 0003)"


def test_migrate_check_tells_pending_then_up_to_date(fresh_db: str) -> None:
    """deploy.yml makes a restore point before migrations only when --check says some
    are pending."""
    before = run(["migrate", "--check"], db=fresh_db)
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith("migrate: pending (at nothing, head "), before.stdout
    assert run(["migrate"], db=fresh_db).returncode == 0
    after = run(["migrate", "--check"], db=fresh_db)
    assert after.returncode == 0, after.stderr
    assert after.stdout.startswith("migrate: up to date (at "), after.stdout


def test_migrate_from_earlier_revision(fresh_db: str) -> None:
    from app import migrate

    migrate.upgrade(migrate.alembic_config(fresh_db), "0001")
    r = run(["migrate"], db=fresh_db)
    assert r.returncode == 0, r.stderr
    assert "applied 0001" not in r.stdout
    assert "applied 0002:" in r.stdout and "migrate: changed" in r.stdout


def test_migrate_unreachable_database_fails_cleanly(dead_port: int) -> None:
    r = run(["migrate"], db=f"postgresql+psycopg://u:hunter2secret@127.0.0.1:{dead_port}/x")
    assert r.returncode == 1
    assert "migrate: error" in r.stderr
    assert "hunter2secret" not in r.stderr + r.stdout


def test_create_admin_idempotent(client: Any, tmp_path: Path) -> None:
    email = f"Admin-{os.getpid()}-{tmp_path.name[-6:]}@Example.com"
    pw_file = tmp_path / "pw"
    pw_file.write_text("first-admin-password\n")
    r = run(["create-admin", "--email", email, "--password-file", str(pw_file)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"create-admin: created {email.lower()}"
    r = run(["create-admin", "--email", email, "--password-file", str(pw_file)])
    assert r.stdout.strip() == f"create-admin: no change {email.lower()}"
    r = run(["create-admin", "--email", email, "--password-env", "ADMIN_PW"],
            ADMIN_PW="second-admin-password")
    assert r.stdout.strip() == f"create-admin: updated {email.lower()}"
    assert "second-admin-password" not in r.stdout + r.stderr

    login = client.post("/api/v1/auth/login",
                        json={"email": email, "password": "second-admin-password"})
    assert login.status_code == 200
    me = client.get("/api/v1/users/me",
                    headers={"Authorization": f"Bearer {login.json()['access_token']}"})
    assert me.json()["is_admin"] is True


@pytest.mark.parametrize("pw", ["", "short"])
def test_create_admin_rejects_bad_password(pw: str) -> None:
    r = run(["create-admin", "--email", "x@example.com", "--password-env", "PW"], PW=pw)
    assert r.returncode != 0
    assert "create-admin:" in r.stderr
