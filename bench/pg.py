"""The database cluster as Patroni sees it, for the sections that measure it."""
from __future__ import annotations

import json
import re
import subprocess
import time

from bench.lab import lab as lab_tool
from bench.lab import log, on

PSQL = "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1"
PATRONICTL = "runuser -u postgres -- patronictl -c /etc/patroni/{ver}-main.yml"


def version(host: str) -> str:
    return on(host, "ls /etc/postgresql").split()[-1]


def _patronictl(hosts: list[str], args: str, parse):
    """parse(output of `patronictl ARGS`) from the first of hosts that answers with output
    parse accepts (it raises ValueError otherwise)."""
    for h in hosts:
        try:  # a host that is powered off, or cut off (patronictl waits for etcd): ask the next one
            return parse(on(h, f"{PATRONICTL.format(ver=version(h))} {args}", timeout=60))
        except (RuntimeError, ValueError, subprocess.TimeoutExpired):
            continue
    raise RuntimeError(f"no Patroni member of {hosts} answered `patronictl {args}`")


def members(hosts: list[str]) -> list[dict]:
    """`patronictl list` from the first of hosts that answers."""
    return _patronictl(hosts, "list -f json", json.loads)


def _ttl_of(conf: str) -> int:
    m = re.search(r"^ttl: (\d+)$", conf, re.M)
    if not m:
        raise ValueError("no ttl in the dynamic configuration")
    return int(m.group(1))


def ttl(hosts: list[str]) -> int:
    """Patroni's ttl (seconds) in the cluster's dynamic configuration."""
    return _patronictl(hosts, "show-config", _ttl_of)


def leader(hosts: list[str], timeout: float = 120) -> str:
    """The member that leads and runs, waiting until there is one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            lead = [m["Member"] for m in members(hosts) if m["Role"] == "Leader" and m["State"] == "running"]
            if len(lead) == 1:
                return lead[0]
        except RuntimeError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no leader among {hosts} within {timeout} s")
        time.sleep(1)


def wait_sync(hosts: list[str], timeout: float = 300) -> None:
    """Synchronous mode: wait until a member is the leader's synchronous replica (Patroni
    fails over only to one), so that each fault starts from a cluster that can fail over."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(m["Role"] == "Sync Standby" and m["State"] in ("running", "streaming") for m in members(hosts)):
                return
        except RuntimeError:
            pass
        time.sleep(2)
    raise RuntimeError(f"no synchronous replica among {hosts} within {timeout} s")


def streams(host: str) -> bool:
    """host runs as a replica whose WAL receiver streams."""
    q = "SELECT pg_is_in_recovery() AND (SELECT status FROM pg_stat_wal_receiver) = 'streaming'"
    return on(host, f"{PSQL} -d postgres -c \"{q}\"", check=False, timeout=30).strip() == "t"


def wait_streaming(host: str, timeout: float = 600) -> float | None:
    """Seconds until host streams as a replica by itself (None: not within timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if streams(host):
            return round(time.monotonic() - t0, 1)
        time.sleep(2)
    return None


def etcd_leader(hosts: list[str], addr: dict[str, str], port: int = 2381) -> str | None:
    """The etcd member that leads the consensus store (etcd_server_is_leader on its own
    metrics listener, read on each host: the firewall admits only the monitoring hosts)."""
    for h in hosts:
        metric = on(h, f"curl -s --max-time 5 http://{addr[h]}:{port}/metrics | grep '^etcd_server_is_leader '",
                    check=False, timeout=30).split()
        if metric[-1:] == ["1"]:
            return h
    return None


def boot(host: str) -> None:
    """Power a lab host on and wait until systemd runs there."""
    lab_tool("start", host)
    for _ in range(90):
        if on(host, "systemctl is-system-running", check=False).strip() in ("running", "degraded"):
            return
        time.sleep(2)
    log(f"pg: {host} did not finish booting")
