"""Redis connections, straight to one server or through Redis Sentinel.

REDIS_URL (the cache), CELERY_BROKER_URL and CELERY_RESULT_BACKEND are each either one
server, ``redis://user:password@host:6379/0``, or the sentinels in the form Celery and
kombu document, ``sentinel://user:password@s1:26379/0;sentinel://user:password@s2:26379/0``,
where the user and password are those of the Redis instances and the database is the
instance's. The sentinels are asked which server is the primary of
REDIS_SENTINEL_BROKER_MASTER (broker and results) or REDIS_SENTINEL_CACHE_MASTER (cache),
logging in as REDIS_SENTINEL_USERNAME / REDIS_SENTINEL_PASSWORD. After a failover, a
connection that fails or lands on a demoted primary is made again to the new primary.
"""

from __future__ import annotations

import socket
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from app.config import Settings

SENTINEL_SCHEME = "sentinel"
SENTINEL_SEPARATOR = ";"


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME + "://")


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The sentinels' (host, port) list and the instance's login and db of a sentinel URL."""
    hosts: list[tuple[str, int]] = []
    login: dict[str, Any] = {}
    for chunk in url.split(SENTINEL_SEPARATOR):
        parts = urlsplit(chunk.strip())
        if parts.scheme != SENTINEL_SCHEME or not parts.hostname:
            raise ValueError(f"not a sentinel URL: {parts.scheme}://{parts.hostname or ''}")
        hosts.append((parts.hostname, parts.port or 26379))
        if not login:
            path = parts.path.strip("/")
            login = {"username": unquote(parts.username) if parts.username else None,
                     "password": unquote(parts.password) if parts.password else None,
                     "db": int(path) if path else 0}
    return hosts, login


def sentinel_kwargs(settings: Settings, timeout: float = 2.0) -> dict[str, Any]:
    """How to log in to the sentinels themselves. A sentinel whose host is down must not
    hold a client up for the kernel's connect timeout: the next one is asked instead, at
    once. redis-py (8) retries a connection 10 times by default, and the sentinels are its
    own clients: with the first sentinel's host powered off, every discovery of the
    primary (each new connection, each of kombu's channels) waited 11 connect timeouts
    before asking the second. The lose-any-host drill measured 12-49 s per request."""
    kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout,
                              "retry": Retry(NoBackoff(), 0)}
    if settings.redis_sentinel_username:
        kwargs["username"] = settings.redis_sentinel_username
    if settings.redis_sentinel_password:
        kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    return kwargs


def transport_options(settings: Settings, url: str, master: str) -> dict[str, Any]:
    """kombu's and Celery's options for a URL: master name and sentinel login, if any."""
    if not is_sentinel(url):
        return {}
    return {"master_name": master, "sentinel_kwargs": sentinel_kwargs(settings)}


_sentinels: dict[tuple[Any, ...], Sentinel] = {}
_sentinels_lock = threading.Lock()


def _sentinel(url: str, settings: Settings, timeout: float) -> Sentinel:
    """One Sentinel object per URL and timeout in a process: it moves the sentinel that
    answered to the front of its list, so a dead one is asked once, not on every client."""
    password = settings.redis_sentinel_password
    key = (url, timeout, settings.redis_sentinel_username,
           password.get_secret_value() if password else None)
    with _sentinels_lock:
        found = _sentinels.get(key)
        if found is None:
            hosts, login = sentinel_parts(url)
            found = _sentinels[key] = Sentinel(
                hosts, sentinel_kwargs=sentinel_kwargs(settings, timeout),
                socket_timeout=timeout, socket_connect_timeout=timeout, **login)
        return found


def client(url: str, master: str, settings: Settings, timeout: float) -> redis.Redis:
    """A client of the server at ``url``, or of the current primary of ``master``."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return _sentinel(url, settings, timeout).master_for(
        master, socket_timeout=timeout, socket_connect_timeout=timeout)


BEAT_KEY_PREFIX = "redbeat:"
BEAT_LOCK_KEY = BEAT_KEY_PREFIX + ":lock"  # RedBeat's lock: <prefix>:lock
BEAT_SOCKET_TIMEOUT = 5.0  # a primary that died without closing its sockets
KEEPALIVE = {socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}


def celery_conf(settings: Settings) -> dict[str, Any]:
    """Celery settings for Redis: broker and result transport options (visibility timeout,
    sentinel login), and Celery beat's RedBeat scheduler on the broker's Redis.

    Beat runs on every host of the scheduler group; RedBeat lets only the holder of a
    lock in Redis send tasks. The holder renews it every tick (at most every
    BEAT_MAX_LOOP_INTERVAL_SECONDS) for BEAT_LOCK_TIMEOUT_SECONDS; a standby beat takes
    it over when it expires, and a beat that finds it has lost the lock stops before
    sending anything (systemd starts it again as a standby)."""
    broker, results = settings.broker_url, settings.result_backend
    master = settings.redis_sentinel_broker_master
    # A primary whose host died answers nothing, not even a reset: without timeouts a
    # publish or the worker's BRPOP would wait on its socket for good. Keepalive probes
    # find a dead peer of an idle connection in about 25 s.
    sockets = {"visibility_timeout": settings.celery_visibility_timeout,
               "socket_timeout": BEAT_SOCKET_TIMEOUT, "socket_connect_timeout": 3.0,
               "socket_keepalive": True, "socket_keepalive_options": KEEPALIVE}
    conf: dict[str, Any] = {
        "broker_transport_options": sockets | transport_options(settings, broker, master),
        "result_backend_transport_options": sockets | transport_options(settings, results,
                                                                         master),
        "redis_socket_timeout": BEAT_SOCKET_TIMEOUT,
        "redis_socket_connect_timeout": 3.0,
        "redis_socket_keepalive": True,
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "beat_max_loop_interval": settings.beat_max_loop_interval_seconds,
        "redbeat_key_prefix": BEAT_KEY_PREFIX,
        "redbeat_lock_timeout": settings.beat_lock_timeout_seconds,
    }
    timeout = BEAT_SOCKET_TIMEOUT
    if is_sentinel(broker):
        hosts, login = sentinel_parts(broker)
        conf["redbeat_redis_url"] = "redis-sentinel://"
        conf["redbeat_redis_options"] = {
            "sentinels": hosts, "service_name": master,
            "sentinel_kwargs": sentinel_kwargs(settings),
            "socket_timeout": timeout, **{k: v for k, v in login.items() if v is not None}}
    else:
        conf["redbeat_redis_url"] = broker
        conf["redbeat_redis_options"] = {"socket_timeout": timeout,
                                         "socket_connect_timeout": timeout}
    return conf
