"""All settings, read from the environment (pydantic-settings).

Variable names are the upper-case field names (``DATABASE_URL`` ...). Outside
an explicit ``ENVIRONMENT=development`` or ``test`` construction fails on missing or
placeholder secrets, naming the offending variable, so neither the API, the workers nor
the CLI start (``staging`` is held to the production rules).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_LENGTH = 32
RETRY_JITTER = 0.2  # indexing retry countdowns vary by +-20 % (app.tasks._backoff)
MIN_PRODUCTION_HASH_MEMORY_KIB = 19_456  # OWASP's argon2id floor
# The only environments that may run on the built-in development secrets.
INSECURE_DEFAULTS_ALLOWED = ("development", "test")
_PLACEHOLDERS = ("changeme", "change-me", "change_me", "your-secret-key", "your_secret_key",
                 "secret", "placeholder", "example", "xxx", "todo", "default")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    environment: Literal["development", "test", "staging", "production"] = "development"
    log_level: str = "INFO"

    # PostgreSQL (psycopg 3 through SQLAlchemy: postgresql+psycopg://...)
    database_url: str = "postgresql+psycopg://ai_platform@127.0.0.1:5432/ai_platform"
    database_read_url: str | None = None
    database_pool_size: int = Field(default=5, ge=1)
    database_max_overflow: int = Field(default=10, ge=0)
    database_connect_timeout: int = Field(default=2, ge=2)  # libpq's minimum
    # A database host cut off the network (or powered off without closing its sockets)
    # answers nothing: without these, a pooled connection to it waits for the kernel's
    # retransmissions (about 15 min) and so does the request holding it. Data unacknowledged
    # for DATABASE_TCP_USER_TIMEOUT_MS ends the connection; idle ones are probed by
    # keepalives after DATABASE_KEEPALIVES_IDLE seconds (then every 3 s, 3 times).
    database_tcp_user_timeout_ms: int = Field(default=10000, ge=0)
    database_keepalives_idle: int = Field(default=10, ge=1)
    # Seconds a request waits for a free pooled connection before it is answered 503
    # with Retry-After (SQLAlchemy's default is 30 s, then a 500).
    database_pool_timeout: float = Field(default=5.0, gt=0)

    # Redis and Celery
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str | None = None  # defaults to REDIS_URL
    celery_result_backend: str | None = None  # defaults to REDIS_URL
    # Redis hands an unacknowledged message out again after this long: it must exceed
    # the indexing time limit and the longest retry countdown (both sit unacknowledged).
    celery_visibility_timeout: int = Field(default=900, ge=10)
    index_time_limit_seconds: int = Field(default=600, ge=10)  # hard limit of one indexing run
    index_max_retries: int = Field(default=5, ge=0)
    index_retry_backoff_seconds: float = Field(default=5.0, gt=0)
    index_retry_backoff_max_seconds: float = Field(default=300.0, gt=0)
    reconcile_interval_seconds: int = Field(default=900, ge=10)
    # How often beat looks for a vector store server back from an outage (app.vectorset).
    vector_catchup_interval_seconds: int = Field(default=60, ge=10)
    purge_interval_seconds: int = Field(default=3600, ge=10)
    failed_upload_retention_hours: float = Field(default=168.0, gt=0)
    # Documents pending/indexing this long with no worker on them are queued again
    # (checked every requeue_interval_seconds by beat's requeue_stuck task).
    stuck_requeue_after_minutes: float = Field(default=2.0, gt=0)
    requeue_interval_seconds: int = Field(default=60, ge=10)
    # Redis Sentinel (app.redisconn): with sentinel:// URLs above, the names of the
    # primaries the sentinels watch, and the login to the sentinels themselves.
    redis_sentinel_broker_master: str = "broker"
    redis_sentinel_cache_master: str = "cache"
    redis_sentinel_username: str | None = None
    redis_sentinel_password: SecretStr | None = None
    # Celery beat (RedBeat, app.redisconn.celery_conf): every scheduler host runs beat,
    # the holder of the lock sends the tasks; it renews the lock at least every
    # BEAT_MAX_LOOP_INTERVAL_SECONDS, a standby takes over once it expires.
    beat_max_loop_interval_seconds: int = Field(default=5, ge=1)
    beat_lock_timeout_seconds: int = Field(default=30, ge=3)
    # A worker process is replaced after a task that left it above this resident memory
    # (KiB; Celery's worker_max_memory_per_child); 0 = never.
    worker_max_memory_per_child_kib: int = Field(default=1_572_864, ge=0)
    # Indexing refuses documents whose extracted text is longer than this (characters).
    max_extracted_chars: int = Field(default=5_000_000, ge=1000)
    # Office files (DOCX, PPTX, XLSX) are ZIP archives: limits on what one may unpack.
    max_archive_members: int = Field(default=2000, ge=1)
    max_archive_uncompressed_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    max_archive_ratio: int = Field(default=100, ge=2)

    # Secrets
    secret_key: SecretStr = SecretStr("")
    jwt_secret_key: SecretStr | None = None  # defaults to SECRET_KEY
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_access_token_expire_minutes: int = Field(default=30, ge=1)
    encryption_key: SecretStr | None = None  # Fernet key for provider API keys
    # Key rotation (playbooks/rotate_secrets.yml): earlier keys, comma-separated, still
    # accepted while the new ones take over. Tokens signed with a previous JWT key stay
    # valid until they expire; secrets encrypted with a previous Fernet key still decrypt
    # (MultiFernet) until `ai-platform reencrypt-secrets` has re-encrypted them; a previous
    # database password is tried when the current one is refused (the window between the
    # app's new settings and the database's ALTER ROLE).
    jwt_previous_secret_keys: SecretStr | None = None
    encryption_previous_keys: SecretStr | None = None
    database_previous_password: SecretStr | None = None
    # argon2id cost (RFC 9106 "low memory" profile by default)
    password_hash_time_cost: int = Field(default=3, ge=1)
    password_hash_memory_kib: int = Field(default=65_536, ge=8)
    password_hash_parallelism: int = Field(default=4, ge=1)
    # At most this many argon2 hashes run at once per process; a request that waits
    # longer than PASSWORD_HASH_WAIT_SECONDS for a turn is answered 503 with Retry-After.
    password_hash_concurrency: int = Field(default=2, ge=1)
    password_hash_wait_seconds: float = Field(default=10.0, gt=0)
    # Failed logins per account (Redis) before the account's logins are refused with 429
    # for the rest of the window; on top of Nginx's per-address limit.
    login_max_failures: int = Field(default=10, ge=1)
    login_failure_window_seconds: int = Field(default=900, ge=10)

    # Accounts and quotas (0 = no limit). open: anyone may register; invite: only with
    # an admin's invitation code; closed: only `ai-platform create-admin` makes accounts.
    registration_mode: Literal["open", "invite", "closed"] = "open"
    quota_projects: int = Field(default=100, ge=0)
    quota_documents: int = Field(default=5000, ge=0)
    quota_storage_bytes: int = Field(default=5 * 1024**3, ge=0)
    quota_asks_per_day: int = Field(default=1000, ge=0)

    # Answer providers (OpenAI-compatible chat completions); optional
    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    deepseek_api_key: SecretStr | None = None
    deepseek_base_url: str = "https://api.deepseek.com/v1"
    deepseek_model: str = "deepseek-chat"
    llm_timeout_seconds: float = Field(default=20.0, gt=0)
    # Offer the operator's OPENAI_/DEEPSEEK_API_KEY to users who have no provider.
    offer_env_providers: bool = False
    # Provider URLs must be https and resolve to public addresses, except for these
    # hosts ("host" or "host:port", comma-separated) that the operator trusts: plain
    # http and private addresses are allowed for them (e.g. a model server on the LAN).
    provider_http_allowlist: Annotated[list[str], NoDecode] = []
    provider_max_response_bytes: int = Field(default=1024 * 1024, ge=1024)

    # Uploads and indexing
    max_file_size: int = Field(default=52_428_800, ge=1)
    # Uploads received at once per API process; more are answered 503 with Retry-After.
    upload_concurrency: int = Field(default=4, ge=1)
    chunk_size: int = Field(default=800, ge=100)
    chunk_overlap: int = Field(default=150, ge=0)

    # Embeddings (local ONNX all-MiniLM-L6-v2)
    embedding_model_dir: Path | None = None  # directory with model.onnx + tokenizer.json
    # Texts per ONNX run. Memory grows with it (about 37 MB per 256-token text): one
    # process peaked at 1441 MB with 32, 816 MB with 16, 515 MB with 8, at the same speed.
    embedding_batch_size: int = Field(default=8, ge=1)
    embedding_threads: int = Field(default=1, ge=0)  # 0 = onnxruntime default (all cores)

    # ChromaDB servers: one URL, or several separated by commas that app.vectorset keeps
    # in step (every write to each; reads from the first one not behind).
    chroma_url: str = "http://127.0.0.1:8000"
    chroma_token: SecretStr | None = None
    chroma_auth_header: str = "Authorization"  # "Authorization" -> "Bearer <token>"
    # Prefix of the collection names: each project's vectors live in their own collection,
    # "<prefix>_<project id as 32 hex digits>" (at most 63 characters, Chroma's old limit).
    # A collection named exactly "<prefix>" is the one shared by all projects in earlier
    # releases; `app migrate-vectors` (run by every deploy) and reconcile move it out.
    chroma_collection: str = Field(default="ai_platform_chunks",
                                   pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{1,28}[A-Za-z0-9]$")

    health_timeout_seconds: float = Field(default=2.0, gt=0)
    # The public GET /health answer is reused for this long (seconds) per process.
    health_cache_seconds: float = Field(default=2.0, ge=0)

    # Prometheus metrics (app.metrics): GET /metrics, for the monitoring hosts only.
    metrics_enabled: bool = True
    # Further multiprocess folders to sum, ':'-separated (the Celery worker's), besides
    # PROMETHEUS_MULTIPROC_DIR of this process.
    metrics_multiproc_dirs: str = ""
    metrics_cache_seconds: float = Field(default=5.0, ge=0)  # queue length, documents by status

    # Sentry error reporting: only when set and the optional sentry-sdk is installed.
    sentry_dsn: SecretStr | None = None

    @field_validator("provider_http_allowlist", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [x.strip().lower() for x in value.split(",") if x.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("CHUNK_OVERLAP must be smaller than CHUNK_SIZE")
        longest_unacked = max(self.index_time_limit_seconds,
                              self.longest_retry_countdown_seconds)
        if self.celery_visibility_timeout <= longest_unacked:
            raise ValueError(
                f"CELERY_VISIBILITY_TIMEOUT ({self.celery_visibility_timeout} s) must exceed "
                f"INDEX_TIME_LIMIT_SECONDS and 1.2 x INDEX_RETRY_BACKOFF_MAX_SECONDS "
                f"({longest_unacked:g} s), or Redis hands out a running task twice")
        if self.beat_lock_timeout_seconds < 3 * self.beat_max_loop_interval_seconds:
            raise ValueError("BEAT_LOCK_TIMEOUT_SECONDS must be at least 3 x "
                             "BEAT_MAX_LOOP_INTERVAL_SECONDS, or beat loses its lock between ticks")
        if self.environment not in INSECURE_DEFAULTS_ALLOWED:
            problems = production_problems(self)
            if problems:
                raise ValueError(f"refusing to start in {self.environment}: "
                                 + "; ".join(problems))
        return self

    # Derived values -------------------------------------------------------
    @property
    def longest_retry_countdown_seconds(self) -> float:
        """The longest wait before an indexing retry: the cap plus its +20 % jitter."""
        return self.index_retry_backoff_max_seconds * (1 + RETRY_JITTER)

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def result_backend(self) -> str:
        return self.celery_result_backend or self.redis_url

    @property
    def jwt_key(self) -> str:
        key = self.jwt_secret_key.get_secret_value() if self.jwt_secret_key else ""
        return key or self.secret_key.get_secret_value() or _dev_secret()

    @property
    def jwt_keys(self) -> list[str]:
        """The signing key first, then the previous keys still accepted."""
        return [self.jwt_key, *_split(self.jwt_previous_secret_keys)]

    @property
    def fernet_keys(self) -> list[bytes]:
        """The encrypting key first, then the previous keys that still decrypt."""
        return [self.fernet_key, *(k.encode() for k in _split(self.encryption_previous_keys))]

    @property
    def fernet_key(self) -> bytes:
        """The Fernet key; in development/test a key derived from SECRET_KEY if unset."""
        if self.encryption_key and self.encryption_key.get_secret_value():
            return self.encryption_key.get_secret_value().encode()
        seed = (self.secret_key.get_secret_value() or _dev_secret()).encode()
        return base64.urlsafe_b64encode(hashlib.sha256(b"fernet:" + seed).digest())

    @property
    def chroma_urls(self) -> list[str]:
        """CHROMA_URL's servers (comma-separated), in the order reads prefer them."""
        return [u.strip() for u in self.chroma_url.split(",") if u.strip()]

    @property
    def chroma_headers(self) -> dict[str, str]:
        if not self.chroma_token or not self.chroma_token.get_secret_value():
            return {}
        token = self.chroma_token.get_secret_value()
        if self.chroma_auth_header.lower() == "authorization":
            return {"Authorization": f"Bearer {token}"}
        return {self.chroma_auth_header: token}


def _split(value: SecretStr | None) -> list[str]:
    """Comma-separated secrets as a list (empty items dropped)."""
    raw = value.get_secret_value() if value is not None else ""
    return [k.strip() for k in raw.split(",") if k.strip()]


def _dev_secret() -> str:
    # Only reachable in development and test: every other environment requires real secrets.
    return "development-only-insecure-secret-key-0000"


def _secret_problem(name: str, value: str | None) -> str | None:
    if not value:
        return f"{name} is missing"
    low = value.strip().lower()
    if any(low.startswith(p) for p in _PLACEHOLDERS):
        return f"{name} is a placeholder value"
    if len(value) < MIN_SECRET_LENGTH:
        return f"{name} is shorter than {MIN_SECRET_LENGTH} characters"
    return None


def _fernet_problem(name: str, value: str | None) -> str | None:
    if not value:
        return f"{name} is missing"
    try:
        raw = base64.urlsafe_b64decode(value.encode())
    except (binascii.Error, ValueError):
        return f"{name} is not a valid Fernet key (urlsafe base64 of 32 bytes)"
    if len(raw) != 32:
        return f"{name} is not a valid Fernet key (urlsafe base64 of 32 bytes)"
    return None


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def production_problems(s: Settings) -> list[str]:
    """Every reason the settings are unfit for production, each naming its variable."""
    problems = [
        _secret_problem("SECRET_KEY", _secret(s.secret_key)),
        _fernet_problem("ENCRYPTION_KEY", _secret(s.encryption_key)),
    ]
    if s.password_hash_memory_kib < MIN_PRODUCTION_HASH_MEMORY_KIB:
        problems.append(f"PASSWORD_HASH_MEMORY_KIB is below {MIN_PRODUCTION_HASH_MEMORY_KIB}")
    if s.jwt_secret_key is not None:
        problems.append(_secret_problem("JWT_SECRET_KEY", _secret(s.jwt_secret_key)))
    problems += [_secret_problem("JWT_PREVIOUS_SECRET_KEYS", k)
                 for k in _split(s.jwt_previous_secret_keys)]
    problems += [_fernet_problem("ENCRYPTION_PREVIOUS_KEYS", k)
                 for k in _split(s.encryption_previous_keys)]
    password = urlsplit(s.database_url.replace("+psycopg", "")).password
    if password is not None and _secret_problem("x", password) == "x is a placeholder value":
        problems.append("DATABASE_URL contains a placeholder password")
    return [p for p in problems if p]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
