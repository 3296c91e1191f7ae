"""Counters in Redis (REDIS_URL, through Sentinel when it is a sentinel:// URL): failed
logins per account and asks per user per day.

Both fail open: when Redis does not answer, logins and asks go on (Nginx's per-address
limits still apply) and a warning is logged.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import redis

from app import redisconn
from app.config import Settings
from app.log import get_logger

log = get_logger("app.limits")
# What "Redis did not answer" looks like (ValueError: a URL this client cannot use).
_DOWN = (redis.RedisError, OSError, ValueError)


_clients: dict[tuple[str, str], redis.Redis] = {}


def _redis(settings: Settings) -> redis.Redis:
    """The cache's Redis (REDIS_URL: one server, or its primary through Sentinel)."""
    key = (settings.redis_url, settings.redis_sentinel_cache_master)
    if key not in _clients:
        _clients[key] = redisconn.client(settings.redis_url,
                                         settings.redis_sentinel_cache_master, settings, 1.0)
    return _clients[key]


def _login_key(email: str) -> str:
    return "aip:login-fail:" + hashlib.sha256(email.encode()).hexdigest()[:32]


def login_retry_after(settings: Settings, email: str) -> int | None:
    """Seconds until the account may try again, or None when it may try now."""
    try:
        r = _redis(settings)
        key = _login_key(email)
        failures = int(r.get(key) or 0)
        if failures < settings.login_max_failures:
            return None
        ttl = int(r.ttl(key))
        return max(ttl, 1)
    except _DOWN as exc:
        log.warning("login_throttle_unavailable", error=type(exc).__name__)
        return None


def record_login_failure(settings: Settings, email: str) -> None:
    try:
        r = _redis(settings)
        key = _login_key(email)
        pipe = r.pipeline()
        pipe.incr(key)
        pipe.expire(key, settings.login_failure_window_seconds, nx=True)
        pipe.execute()
    except _DOWN as exc:
        log.warning("login_throttle_unavailable", error=type(exc).__name__)


def clear_login_failures(settings: Settings, email: str) -> None:
    try:
        _redis(settings).delete(_login_key(email))
    except _DOWN as exc:
        log.warning("login_throttle_unavailable", error=type(exc).__name__)


def take_ask(settings: Settings, user_id: uuid.UUID) -> int | None:
    """Count one ask against today's (UTC) quota. None: allowed; else the seconds until
    the quota resets."""
    limit = settings.quota_asks_per_day
    if not limit:
        return None
    now = datetime.now(UTC)
    reset = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    seconds = max(int((reset - now).total_seconds()), 1)
    key = f"aip:asks:{now:%Y%m%d}:{user_id.hex}"
    try:
        r = _redis(settings)
        pipe = r.pipeline()
        pipe.incr(key)
        pipe.expire(key, seconds + 60, nx=True)
        count = int(pipe.execute()[0])
    except _DOWN as exc:
        log.warning("ask_quota_unavailable", error=type(exc).__name__)
        return None
    return seconds if count > limit else None
