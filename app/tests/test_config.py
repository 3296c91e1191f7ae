"""Settings: production refuses missing or placeholder secrets, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from app.config import Settings

GOOD_SECRET = "k" * 8 + "Qw3rTy-Uiop-Asdf-Ghjk-Zxcv-Bnm0123"
GOOD = {
    "environment": "production",
    "password_hash_memory_kib": 65_536,
    "secret_key": GOOD_SECRET,
    "encryption_key": Fernet.generate_key().decode(),
}


def test_production_accepts_real_secrets() -> None:
    s = Settings(**GOOD)
    assert s.environment == "production"
    assert s.jwt_key == GOOD_SECRET


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("secret_key", "", "SECRET_KEY"),
        ("secret_key", "changeme", "SECRET_KEY"),
        ("secret_key", "your-secret-key-here-please-change-it-now", "SECRET_KEY"),
        ("secret_key", "short-but-random-9f8e7d", "SECRET_KEY"),
        ("encryption_key", "", "ENCRYPTION_KEY"),
        ("encryption_key", "not-a-fernet-key", "ENCRYPTION_KEY"),
        ("encryption_key", "c2hvcnQ=", "ENCRYPTION_KEY"),
        ("jwt_secret_key", "changeme", "JWT_SECRET_KEY"),
        ("jwt_secret_key", "tooshort", "JWT_SECRET_KEY"),
    ],
)
def test_production_refuses_bad_secret(field: str, value: str, variable: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{**GOOD, field: value})
    assert variable in str(info.value)


def test_production_refuses_weak_password_hashing() -> None:
    with pytest.raises(ValidationError, match="PASSWORD_HASH_MEMORY_KIB"):
        Settings(**{**GOOD, "password_hash_memory_kib": 1024})


def test_production_refuses_placeholder_database_password() -> None:
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(**GOOD, database_url="postgresql+psycopg://app:changeme@db/app")


def test_development_tolerates_missing_secrets() -> None:
    s = Settings(environment="development", secret_key="", encryption_key=None)
    assert len(s.jwt_key) >= 32
    Fernet(s.fernet_key)  # a usable derived key


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run(args, env=full, capture_output=True, text=True, timeout=60)


def test_check_config_cli_refuses_placeholders() -> None:
    r = _run([sys.executable, "-m", "app.cli", "check-config"],
             ENVIRONMENT="production", SECRET_KEY="changeme", ENCRYPTION_KEY="")
    assert r.returncode == 1
    assert "SECRET_KEY is a placeholder value" in r.stderr
    assert "ENCRYPTION_KEY is missing" in r.stderr
    assert "check-config: FAILED" in r.stderr


def test_check_config_cli_ok() -> None:
    r = _run([sys.executable, "-m", "app.cli", "check-config"], ENVIRONMENT="production",
             SECRET_KEY=GOOD["secret_key"], ENCRYPTION_KEY=GOOD["encryption_key"],
             PASSWORD_HASH_MEMORY_KIB="65536")
    assert r.returncode == 0, r.stderr
    assert "check-config: ok (environment=production)" in r.stdout


def test_check_config_refuses_a_release_that_does_not_load(tmp_path) -> None:
    """A copy of the package whose main module raises: check-config fails, naming why."""
    import shutil

    import app

    pkg = tmp_path / "app"
    shutil.copytree(os.path.dirname(app.__file__), pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    main = pkg / "main.py"
    main.write_text(main.read_text() + '\nraise RuntimeError("deliberately broken")\n')
    r = _run([sys.executable, "-m", "app.cli", "check-config"], PYTHONPATH=str(tmp_path),
             ENVIRONMENT="production", SECRET_KEY=GOOD["secret_key"],
             ENCRYPTION_KEY=GOOD["encryption_key"], PASSWORD_HASH_MEMORY_KIB="65536")
    assert r.returncode == 1, r.stdout
    assert "the release does not load: RuntimeError: deliberately broken" in r.stderr
    assert "check-config: FAILED" in r.stderr


def test_check_config_strict_outside_production() -> None:
    r = _run([sys.executable, "-m", "app.cli", "check-config", "--strict"],
             ENVIRONMENT="staging", SECRET_KEY="changeme")
    assert r.returncode == 1
    assert "SECRET_KEY" in r.stderr


def test_app_refuses_to_start_in_production_with_placeholders() -> None:
    r = _run([sys.executable, "-c", "from app.main import app"],
             ENVIRONMENT="production", SECRET_KEY="your-secret-key", ENCRYPTION_KEY="x")
    assert r.returncode != 0
    assert "SECRET_KEY" in r.stderr and "ENCRYPTION_KEY" in r.stderr


def test_invalid_number_names_variable() -> None:
    r = _run([sys.executable, "-m", "app.cli", "check-config"], DATABASE_POOL_SIZE="lots")
    assert r.returncode == 1
    assert "DATABASE_POOL_SIZE" in r.stderr


def test_chroma_token_header() -> None:
    assert Settings(chroma_token=None).chroma_headers == {}
    assert Settings(chroma_token="tok").chroma_headers == {"Authorization": "Bearer tok"}
    s = Settings(chroma_token="tok", chroma_auth_header="X-Chroma-Token")
    assert s.chroma_headers == {"X-Chroma-Token": "tok"}
    from app.vectorstore import host_port_ssl

    assert host_port_ssl("https://chroma.internal") == ("chroma.internal", 443, True)
    both = Settings(chroma_url="http://10.0.0.1:8000, http://10.0.0.2:8000,")
    assert both.chroma_urls == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert [host_port_ssl(u) for u in both.chroma_urls] == [("10.0.0.1", 8000, False),
                                                             ("10.0.0.2", 8000, False)]


@pytest.mark.parametrize("overrides", [
    {"celery_visibility_timeout": 600},  # == the default indexing time limit
    {"celery_visibility_timeout": 300, "index_time_limit_seconds": 60},  # < 1.2 x 300 s backoff
])
def test_visibility_timeout_must_outlast_a_run_and_a_retry_countdown(overrides: dict) -> None:
    with pytest.raises(ValueError, match="CELERY_VISIBILITY_TIMEOUT"):
        Settings(**overrides)
    assert Settings(celery_visibility_timeout=400, index_time_limit_seconds=60,
                    index_retry_backoff_max_seconds=300).celery_visibility_timeout == 400
