"""Password hashing (argon2), access tokens (JWT) and secret encryption (Fernet)."""

from __future__ import annotations

import uuid
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


def decode_access_token(token: str, settings: Settings) -> uuid.UUID:
    try:
        claims = _verified_claims(token, settings)
        if claims.get("type") != "access":
            raise InvalidTokenError("not an access token")
        return uuid.UUID(str(claims["sub"]))
    except (jwt.PyJWTError, ValueError) as exc:
        raise InvalidTokenError(str(exc)) from exc


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
