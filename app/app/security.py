"""Password hashing (argon2), access tokens (JWT) and secret encryption (Fernet)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken

from app.config import Settings


@lru_cache(maxsize=4)
def _hasher(time_cost: int, memory_kib: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)


def hasher(settings: Settings) -> PasswordHasher:
    return _hasher(settings.password_hash_time_cost, settings.password_hash_memory_kib,
                   settings.password_hash_parallelism)


def hash_password(password: str, settings: Settings) -> str:
    return hasher(settings).hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Parameters come from the hash itself, so any hasher verifies any argon2 hash."""
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


def create_access_token(user_id: uuid.UUID, settings: Settings) -> tuple[str, int]:
    """A signed token and its lifetime in seconds."""
    now = datetime.now(UTC)
    lifetime = settings.jwt_access_token_expire_minutes * 60
    claims = {
        "sub": str(user_id),
        "iat": now,
        "exp": now + timedelta(seconds=lifetime),
        "type": "access",
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, settings.jwt_key, algorithm=settings.jwt_algorithm), lifetime


class InvalidTokenError(Exception):
    pass


def decode_access_token(token: str, settings: Settings) -> uuid.UUID:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_key,
            algorithms=[settings.jwt_algorithm],
            options={"require": ["exp", "iat", "sub"]},
        )
        if claims.get("type") != "access":
            raise InvalidTokenError("not an access token")
        return uuid.UUID(str(claims["sub"]))
    except (jwt.PyJWTError, ValueError) as exc:
        raise InvalidTokenError(str(exc)) from exc


def fernet(settings: Settings) -> Fernet:
    return Fernet(settings.fernet_key)


def encrypt_secret(value: str, settings: Settings) -> bytes:
    return fernet(settings).encrypt(value.encode())


def decrypt_secret(token: bytes, settings: Settings) -> str | None:
    """The plaintext, or None when ENCRYPTION_KEY changed since it was stored."""
    try:
        return fernet(settings).decrypt(token).decode()
    except InvalidToken:
        return None
