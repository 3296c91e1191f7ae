"""Password hashing (argon2), access tokens (JWT), API keys and secret encryption (Fernet).

Argon2 is memory- and CPU-hard by design: at most PASSWORD_HASH_CONCURRENCY hashes run at
once per process, so a burst of logins cannot exhaust the host's memory or threads."""

from __future__ import annotations

import hashlib
import secrets
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.config import Settings


@lru_cache(maxsize=4)
def _hasher(time_cost: int, memory_kib: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)


def hasher(settings: Settings) -> PasswordHasher:
    return _hasher(settings.password_hash_time_cost, settings.password_hash_memory_kib,
                   settings.password_hash_parallelism)


class HashingBusy(Exception):
    """No argon2 slot became free within PASSWORD_HASH_WAIT_SECONDS (answered 503)."""


_slots_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}


def hashing_slots(settings: Settings) -> threading.BoundedSemaphore:
    with _slots_lock:
        return _slots.setdefault(settings.password_hash_concurrency,
                                 threading.BoundedSemaphore(settings.password_hash_concurrency))


@contextmanager
def _hashing_slot(settings: Settings | None) -> Iterator[None]:
    if settings is None:
        yield
        return
    slots = hashing_slots(settings)
    if not slots.acquire(timeout=settings.password_hash_wait_seconds):
        raise HashingBusy("too many password hashes in progress")
    try:
        yield
    finally:
        slots.release()


def hash_password(password: str, settings: Settings) -> str:
    with _hashing_slot(settings):
        return hasher(settings).hash(password)


def verify_password(password_hash: str, password: str,
                    settings: Settings | None = None) -> bool:
    """Parameters come from the hash itself, so any hasher verifies any argon2 hash.
    With settings, the verification takes one of the process's hashing slots."""
    with _hashing_slot(settings):
        try:
            return _hasher(1, 8, 1).verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


def password_needs_rehash(password_hash: str, settings: Settings) -> bool:
    return hasher(settings).check_needs_rehash(password_hash)


@lru_cache(maxsize=4)
def _dummy_hash(time_cost: int, memory_kib: int, parallelism: int) -> str:
    return _hasher(time_cost, memory_kib, parallelism).hash("timing-equaliser-not-a-password")


def dummy_hash(settings: Settings) -> str:
    """A hash to verify against when the user does not exist, so timing does not tell."""
    return _dummy_hash(settings.password_hash_time_cost, settings.password_hash_memory_kib,
                       settings.password_hash_parallelism)


def create_access_token(user_id: uuid.UUID, token_version: int,
                        settings: Settings) -> tuple[str, int]:
    """A signed token and its lifetime in seconds; ``ver`` is the user's token version."""
    now = datetime.now(UTC)
    lifetime = settings.jwt_access_token_expire_minutes * 60
    claims = {
        "sub": str(user_id),
        "ver": token_version,
        "iat": now,
        "exp": now + timedelta(seconds=lifetime),
        "type": "access",
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.jwt_key, algorithm=settings.jwt_algorithm), lifetime


class InvalidTokenError(Exception):
    pass


def _verified_claims(token: str, settings: Settings) -> dict:
    """The claims of a token signed with the current key or a previous one (key rotation)."""
    def decode(key: str) -> dict:
        return jwt.decode(token, key, algorithms=[settings.jwt_algorithm],
                          options={"require": ["exp", "iat", "sub"]})
    *current_and_previous, last = settings.jwt_keys
    for key in current_and_previous:
        try:
            return decode(key)
        except jwt.InvalidSignatureError:
            continue
    return decode(last)


def decode_access_token(token: str, settings: Settings) -> tuple[uuid.UUID, int]:
    """The user id and token version of a valid access token."""
    try:
        claims = _verified_claims(token, settings)
        if claims.get("type") != "access":
            raise InvalidTokenError("not an access token")
        # Tokens of releases before token versions have no "ver": version 0, so they keep
        # working through a rolling upgrade and die at the account's first logout.
        version = claims.get("ver", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise InvalidTokenError("bad token version")
        return uuid.UUID(str(claims["sub"])), version
    except (jwt.PyJWTError, ValueError) as exc:
        raise InvalidTokenError(str(exc)) from exc


API_KEY_PREFIX = "aip_"


def new_api_key() -> tuple[str, str]:
    """A new personal API key and its SHA-256 (hex), the only form that is stored."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, api_key_hash(key)


def api_key_hash(key: str) -> str:
    # Keys are 256 random bits: a plain hash is enough (no password stretching needed).
    return hashlib.sha256(key.encode()).hexdigest()


def fernet(settings: Settings) -> MultiFernet:
    """Encrypts with ENCRYPTION_KEY, decrypts with it or any of ENCRYPTION_PREVIOUS_KEYS."""
    return MultiFernet([Fernet(k) for k in settings.fernet_keys])


def reencrypt_secret(token: bytes, settings: Settings) -> bytes | None:
    """The token encrypted with the current key; None when it already is (nothing to do)."""
    try:
        Fernet(settings.fernet_key).decrypt(token)
        return None
    except InvalidToken:
        return fernet(settings).rotate(token)


def encrypt_secret(value: str, settings: Settings) -> bytes:
    return fernet(settings).encrypt(value.encode())


def decrypt_secret(token: bytes, settings: Settings) -> str | None:
    """The plaintext, or None when ENCRYPTION_KEY changed since it was stored."""
    try:
        return fernet(settings).decrypt(token).decode()
    except InvalidToken:
        return None
