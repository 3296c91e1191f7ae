"""The app's Redis connections through Redis Sentinel, and Celery beat's lock (RedBeat).

This module starts its own real Redis primary, replica and sentinel on loopback
(redis-server, as on the lab hosts), with passwords on both the instances and the
sentinel, and fails the primary over while the app's clients are in use.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import Listener, free_port

INSTANCE_PASSWORD = "instance-password-0123456789"
SENTINEL_PASSWORD = "sentinel-password-0123456789"
MASTER = "broker"


def _wait(what: str, check: Any, timeout: float, step: float = 0.2) -> float:
    t0 = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - t0
        except (redis.RedisError, OSError):
            pass
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout} s"
        time.sleep(step)


class SentinelSet:
    """A primary, its replica and one sentinel (quorum 1), each a redis-server process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.primary, self.replica, self.sentinel = free_port(), free_port(), free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--requirepass", INSTANCE_PASSWORD, "--masterauth", INSTANCE_PASSWORD]
        self._start("primary", ["--port", str(self.primary), *common])
        self._start("replica", ["--port", str(self.replica), *common,
                                "--replicaof", "127.0.0.1", str(self.primary)])
        conf = folder / "sentinel.conf"
        conf.write_text("\n".join([
            f"port {self.sentinel}", "bind 127.0.0.1", f"dir {folder}",
            f"requirepass {SENTINEL_PASSWORD}",
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary} 1",
            f"sentinel auth-pass {MASTER} {INSTANCE_PASSWORD}",
            f"sentinel down-after-milliseconds {MASTER} 2000",
            f"sentinel failover-timeout {MASTER} 5000", ""]))
        self._start("sentinel", [str(conf), "--sentinel"])
        self.wait_replica_ready()

    def wait_replica_ready(self) -> None:
        """Until the sentinel sees a replica it could promote (up, linked to its primary)."""
        def ready() -> bool:
            return any(r.get("flags") == "slave" and r.get("master-link-status") == "ok"
                       for r in self.sentinel_cli().sentinel_slaves(MASTER))
        _wait("the sentinel sees a replica it could promote", ready, 60)

    def _start(self, name: str, args: list[str]) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen(["redis-server", *args], stdout=log,
                                           stderr=subprocess.STDOUT, cwd=self.folder))

    def url(self, db: int) -> str:
        return f"sentinel://:{INSTANCE_PASSWORD}@127.0.0.1:{self.sentinel}/{db}"

    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.url(0), "CELERY_BROKER_URL": self.url(0),
                "CELERY_RESULT_BACKEND": self.url(1), "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
                "REDIS_SENTINEL_BROKER_MASTER": MASTER, "REDIS_SENTINEL_CACHE_MASTER": MASTER}

    def sentinel_cli(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel, password=SENTINEL_PASSWORD, decode_responses=True)

    def primary_port(self) -> int:
        return int(self.sentinel_cli().sentinel_get_master_addr_by_name(MASTER)[1])

    def failover(self) -> int:
        """SENTINEL FAILOVER; the new primary's port once it runs as primary."""
        old = self.primary_port()
        self.wait_replica_ready()
        assert self.sentinel_cli().sentinel_failover(MASTER)
        new_port = 0

        def switched() -> bool:
            """Done only when every view agrees. GET-MASTER-ADDR-BY-NAME names the promoted
            replica while the failover is still under way, but SENTINEL MASTERS (which
            redis-py's clients ask) keeps the old address until it ends, and the old
            primary takes writes until the sentinel demotes it: a write in that window is
            lost when it resyncs. That is Sentinel's asynchronous failover, not the app's."""
            nonlocal new_port
            new_port = self.primary_port()
            role = redis.Redis(port=new_port, password=INSTANCE_PASSWORD).role()[0]
            listed = int(self.sentinel_cli().sentinel_master(MASTER)["port"])
            demoted = redis.Redis(port=old, password=INSTANCE_PASSWORD).role()[0]
            return (new_port != old and role == b"master" and listed == new_port
                    and demoted == b"slave")
        _wait("failover", switched, 60)
        return new_port

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    s = SentinelSet(tmp_path_factory.mktemp("sentinel"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture()
def sentinel_settings(settings: Any, sentinel_set: SentinelSet) -> Any:
    from pydantic import SecretStr

    return settings.model_copy(update={
        "redis_url": sentinel_set.url(0), "celery_broker_url": sentinel_set.url(0),
        "celery_result_backend": sentinel_set.url(1),
        "redis_sentinel_password": SecretStr(SENTINEL_PASSWORD),
        "redis_sentinel_broker_master": MASTER, "redis_sentinel_cache_master": MASTER})


def test_sentinel_urls_are_parsed_and_passed_to_celery(sentinel_settings: Any) -> None:
    from app import redisconn

    url = sentinel_settings.broker_url + ";sentinel://:x@10.0.0.2:26380/0"
    hosts, login = redisconn.sentinel_parts(url)
    assert hosts[-1] == ("10.0.0.2", 26380) and len(hosts) == 2
    assert login == {"username": None, "password": INSTANCE_PASSWORD, "db": 0}
    conf = redisconn.celery_conf(sentinel_settings)
    for key in ("broker_transport_options", "result_backend_transport_options"):
        assert conf[key]["master_name"] == MASTER
        kwargs = dict(conf[key]["sentinel_kwargs"])
        assert kwargs.pop("retry").get_retries() == 0  # a dead sentinel: ask the next at once
        assert kwargs == {
            "password": SENTINEL_PASSWORD, "socket_timeout": 2.0, "socket_connect_timeout": 2.0}
        assert conf[key]["socket_timeout"] == 5.0 and conf[key]["socket_keepalive"] is True
        assert conf[key]["visibility_timeout"] == sentinel_settings.celery_visibility_timeout
    assert conf["redbeat_redis_url"] == "redis-sentinel://"
    assert conf["redbeat_redis_options"]["service_name"] == MASTER
    with pytest.raises(ValueError):
        redisconn.sentinel_parts("redis://127.0.0.1:6379/0")


def test_clients_follow_a_failover(sentinel_settings: Any, sentinel_set: SentinelSet) -> None:
    """The cache client, /health's Redis check, /metrics' queue length and a kombu
    producer/consumer on the broker all reach the primary through the sentinel, before
    and after it fails over to the replica."""
    from kombu import Connection

    from app import health, redisconn
    from app.metrics import ScrapeTimeCollector

    def use_everything(token: str) -> None:
        cache = redisconn.client(sentinel_settings.redis_url, MASTER, sentinel_settings, 2.0)
        cache.set("sentinel:probe", token)
        assert cache.get("sentinel:probe") == token.encode()
        cache.close()
        health.check_redis(sentinel_settings, 2.0)
        collector = ScrapeTimeCollector(sentinel_settings, db=None)  # type: ignore[arg-type]
        assert collector._queue_length() is not None
        options = redisconn.transport_options(sentinel_settings, sentinel_settings.broker_url,
                                              MASTER)
        with Connection(sentinel_settings.broker_url, transport_options=options) as conn:
            queue = conn.SimpleQueue(f"sentinel-test-{token}")
            queue.put({"token": token})
            msg = queue.get(timeout=10)
            assert msg.payload == {"token": token}
            msg.ack()
            queue.close()

    before = sentinel_set.primary_port()
    use_everything("before")
    after = sentinel_set.failover()
    assert after != before
    use_everything("after")
    # The write made before the failover reached the replica that is primary now.
    assert redis.Redis(port=after, password=INSTANCE_PASSWORD).get("sentinel:probe") == b"after"


def test_a_dead_first_sentinel_is_asked_once_per_discovery(sentinel_settings: Any,
                                                           sentinel_set: SentinelSet) -> None:
    """The first sentinel of the URL is gone (its host powered off), the second answers.
    Each discovery of the primary tries the dead one once and asks the next: the cache
    client's Sentinel keeps the live one first for good, and a kombu channel (a new
    Sentinel each) costs one connect. redis-py's default (10 retries per connection)
    made it 11 connects, each a connect timeout on a real network: 12-49 s per request
    on the lab when the host of the first sentinel was powered off."""
    from kombu import Connection

    from app import redisconn

    dead = Listener(hold=False)  # where the first sentinel was
    try:
        url = (f"sentinel://:{INSTANCE_PASSWORD}@127.0.0.1:{dead.port}/0;"
               f"sentinel://:{INSTANCE_PASSWORD}@127.0.0.1:{sentinel_set.sentinel}/0")
        settings = sentinel_settings.model_copy(update={
            "redis_url": url, "celery_broker_url": url, "celery_result_backend": url})
        for i in range(5):
            cache = redisconn.client(settings.redis_url, MASTER, settings, 2.0)
            cache.set("sentinel:dead-first", str(i))
            cache.close()
        assert dead.connects == 1, f"{dead.connects} connects to the dead sentinel for 5 clients"
        options = redisconn.celery_conf(settings)["broker_transport_options"]
        before = dead.connects
        with Connection(url, transport_options=options) as conn:
            queue = conn.SimpleQueue("sentinel-test-dead-first")
            queue.put({"n": 1})
            msg = queue.get(timeout=10)
            msg.ack()
            queue.close()
        asked = dead.connects - before
        assert 1 <= asked <= 3, f"{asked} connects to the dead sentinel for one kombu queue"
    finally:
        dead.close()


def _beat(name: str, env: dict[str, str], folder: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = folder / f"beat-{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "beat",
         "--loglevel", "INFO"],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return proc, log


def _sent(log: Path) -> int:
    return len(re.findall(r"Sending due task requeue-stuck", log.read_text(errors="replace")))


def _holds(log: Path) -> bool:
    return "beat: Acquired lock" in log.read_text(errors="replace")


def test_two_beats_fire_once_and_the_standby_takes_over(sentinel_set: SentinelSet,
                                                        tmp_path: Path) -> None:
    """Two Celery beats (RedBeat, through the sentinel): one holds the lock and sends
    requeue-stuck every 10 s, the other waits. SIGKILL the holder: the standby takes
    the lock once it expires and carries on the same schedule, never sending twice."""
    from app.redisconn import BEAT_LOCK_KEY

    env = dict(os.environ, **sentinel_set.env(), BEAT_MAX_LOOP_INTERVAL_SECONDS="1",
               BEAT_LOCK_TIMEOUT_SECONDS="3", REQUEUE_INTERVAL_SECONDS="10",
               PURGE_INTERVAL_SECONDS="3600", RECONCILE_INTERVAL_SECONDS="3600")
    beats = {n: _beat(n, env, tmp_path) for n in ("a", "b")}
    t0 = time.monotonic()
    try:
        _wait("a beat holds the lock", lambda: any(_holds(log) for _, log in beats.values()), 60)
        holder = next(n for n, (_, log) in beats.items() if _holds(log))
        standby = next(n for n in beats if n != holder)
        time.sleep(12)
        assert not _holds(beats[standby][1]), "both beats hold the lock"
        assert _sent(beats[standby][1]) == 0
        assert _sent(beats[holder][1]) >= 1
        primary = redis.Redis(port=sentinel_set.primary_port(), password=INSTANCE_PASSWORD)
        assert 0 < primary.pttl(BEAT_LOCK_KEY) <= 3000
        beats[holder][0].send_signal(signal.SIGKILL)
        beats[holder][0].wait(timeout=10)
        took = _wait("the standby takes the lock", lambda: _holds(beats[standby][1]), 30)
        _wait("the standby sends the next run",
              lambda: _sent(beats[standby][1]) >= 1, 20)
        time.sleep(11)
        elapsed = time.monotonic() - t0
        total = _sent(beats[holder][1]) + _sent(beats[standby][1])
        print(f"standby took the lock {took:.1f} s after the kill; "
              f"{total} sends in {elapsed:.0f} s")
        # One send per 10 s from one beat at a time: never twice for the same run.
        assert total <= elapsed // 10 + 1, total
    finally:
        for proc, _ in beats.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_login_throttling_and_ask_quota_through_sentinel(sentinel_settings: Any) -> None:
    """REDIS_URL is a sentinel:// URL: the per-account login counter and the daily ask
    quota live on the cache's primary found through the sentinels (not failing open)."""
    import uuid as uuid_mod

    from app import limits

    s = sentinel_settings.model_copy(update={"login_max_failures": 2, "quota_asks_per_day": 1})
    email = f"sentinel-{uuid_mod.uuid4().hex[:8]}@example.com"
    assert limits.login_retry_after(s, email) is None
    limits.record_login_failure(s, email)
    limits.record_login_failure(s, email)
    assert (limits.login_retry_after(s, email) or 0) > 0
    limits.clear_login_failures(s, email)
    assert limits.login_retry_after(s, email) is None
    user = uuid_mod.uuid4()
    assert limits.take_ask(s, user) is None
    assert (limits.take_ask(s, user) or 0) > 0
