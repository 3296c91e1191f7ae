"""The "lose any host" drill: every server host of the lab, in turn, powered off for a
minute under a steady mixed load through the load balancers' virtual IP.

Per host: the load (bench/drills/ha_load.py on the client: reads, searches, uploads at
fixed rates) runs BEFORE s, the host is powered off (`lab.py stop`) for DOWN s and booted
(`lab.py start`), and the load goes on for AFTER s. Then: failed requests (status >= 500
or no answer), seconds from the power-off to the last failure, documents lost (answered
201 but never ready), committed writes lost (a 201 document that is gone), and whether the
host rejoined by itself (its units and its place in its cluster, without anyone acting:
one VIP holder; a database host a running Patroni member, the one leader or a replica
that streams; an etcd member healthy; a Redis instance the sentinels' primary or a
replica linked to it, each sentinel with its quorum; ChromaDB answering and in step).
Targets: 0 documents and 0 writes lost, back within 30 s, rejoined.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import CA, REPO, Lab, benchlab, lab, on, pg

BEFORE, DOWN, AFTER = 15, 60, 75  # seconds of load before, during and after the outage
RECOVER_TARGET_S = 30
READY_TIMEOUT_S = 900  # documents in flight when Redis or a worker died wait for requeue_stuck
LOAD = Path(__file__).with_name("ha_load.py")
TLS = "/etc/ai-platform/tls"  # the project CA and each host's certificates (roles/pki)
HOSTS = [h for h, v in benchlab.inventory(benchlab.INVENTORY)["_meta"]["hostvars"].items()
         if h not in benchlab.inventory(benchlab.INVENTORY).get("lab_clients", {}).get("hosts", [])]


def _groups_of(the_lab: Lab, host: str) -> set[str]:
    return {g for g, members in the_lab.groups.items() if host in members}


def _active(host: str, *units: str) -> bool:
    out = on(host, f"systemctl is-active {' '.join(units)}", check=False)
    return out.split()[: len(units)] == ["active"] * len(units)


def _redis_cli(host: str, port: int, *args: str) -> str:
    secret = (REPO / ".cache/lab/secrets/redis_default").read_text().strip()
    return on(host, f"REDISCLI_AUTH='{secret}' redis-cli --no-auth-warning -p {port} {' '.join(args)}",
              check=False)


def _vip_holders(the_lab: Lab) -> list[str]:
    return [h for h in the_lab.groups["lb"]
            if f" {the_lab.vip}/" in on(h, "ip -o -4 addr show", check=False)]


def _rejoined(the_lab: Lab, host: str) -> tuple[bool, str]:
    """Whether the host is back in its place in every cluster it belongs to; what is not."""
    groups, missing = _groups_of(the_lab, host), []
    if "lb" in groups:
        if not _active(host, "nginx", "keepalived"):
            missing.append("nginx/keepalived")
        if len(_vip_holders(the_lab)) != 1:
            missing.append("one VIP holder")
    if "app" in groups and not _active(host, "ai-platform-api", "ai-platform-worker"):
        missing.append("api/worker")
    if "scheduler" in groups and not _active(host, "ai-platform-beat"):
        missing.append("beat")
    if groups & {"db_primary", "db_replicas"}:
        missing += _db_missing(the_lab, host)
    if "etcd" in groups:
        health = on(host, f"etcdctl --endpoints=https://{the_lab.addr[host]}:2379 --cacert={TLS}/ca.crt "
                          f"--cert={TLS}/etcd.crt --key={TLS}/etcd.key --command-timeout=5s endpoint health 2>&1",
                    check=False)
        if not _active(host, "etcd") or " is healthy" not in health:
            missing.append("etcd member healthy")
    if "backup" in groups and not _active(host, "pgbackrest"):
        missing.append("pgbackrest repository server")
    if "redis" in groups:
        for name, port in (("broker", 6379), ("cache", 6380)):
            # The primary the sentinels name, or a replica whose link to it is up: an old
            # primary that still calls itself master after the boot is a split brain.
            primary = _sentinel_primary(the_lab, name)
            info = _redis_cli(host, port, "INFO replication")
            if not (("role:master" in info and primary == the_lab.addr[host])
                    or (f"master_host:{primary}" in info and "master_link_status:up" in info)):
                missing.append(f"redis {name} in place (primary {primary or 'unknown'})")
    if "redis_sentinel" in groups:
        for name in ("broker", "cache"):
            if "OK" not in _redis_cli(host, 26379, f"SENTINEL ckquorum {name}"):
                missing.append(f"sentinel quorum ({name})")
    if "vector" in groups:  # asked from an app host: ChromaDB admits the app hosts only
        beat = on(the_lab.apps[0], "curl -s -m 3 -o /dev/null -w '%{http_code}' "
                                   f"http://{the_lab.addr[host]}:8000/api/v2/heartbeat", check=False)
        if beat.strip() != "200":
            missing.append("chromadb")
        elif _behind(the_lab):
            missing.append("chromadb in step")
    if "monitoring" in groups and not _active(host, "prometheus"):
        missing.append("prometheus")
    return not missing, ", ".join(missing)


def _sentinel_primary(the_lab: Lab, name: str) -> str:
    """The address of the primary of `name` (broker, cache) as the first sentinel that answers names it."""
    for s in the_lab.groups["redis_sentinel"]:
        addr = _redis_cli(s, 26379, f"SENTINEL get-master-addr-by-name {name}").split()
        if addr and addr[0] in the_lab.addr.values():  # not an error message of redis-cli
            return addr[0]
    return ""


def _behind(the_lab: Lab) -> str:
    """ChromaDB servers marked behind (app.vectorset), read from the broker's primary."""
    addr = _sentinel_primary(the_lab, "broker")
    assert addr, f"no sentinel of {the_lab.groups['redis_sentinel']} answered"
    primary = next(h for h in the_lab.groups["redis"] if the_lab.addr[h] == addr)
    return _redis_cli(primary, 6379, "HKEYS aiplatform:chroma:behind").strip()


def _db_missing(the_lab: Lab, host: str) -> list[str]:
    """What keeps a database host from its place in the Patroni cluster: its Patroni unit,
    one running leader, and this host either that leader or a replica that streams."""
    missing = []
    version = on(host, "ls /etc/postgresql", check=False).split()
    if not version or not _active(host, f"patroni@{version[-1]}-main"):
        missing.append("patroni")
    try:
        members = pg.members(the_lab.dbs)
    except RuntimeError as exc:
        return [*missing, str(exc)]
    leaders = [m["Member"] for m in members if m["Role"] == "Leader" and m["State"] == "running"]
    me = next((m for m in members if m["Member"] == host), None)
    if len(leaders) != 1:
        missing.append(f"one running Patroni leader (got {leaders})")
    if me is None or me["State"] not in ("running", "streaming"):
        missing.append(f"patroni member ({me['State'] if me else 'not listed'})")
    elif host not in leaders and not pg.streams(host):
        missing.append("postgresql replica streaming")
    return missing


@pytest.mark.parametrize("host", HOSTS)
def test_lose_any_host(the_lab, record, host):
    """One server host powered off for a minute under load through the VIP: failures, recovery, losses, rejoin."""
    groups = _groups_of(the_lab, host)
    record(host=host, groups=sorted(groups))
    assert the_lab.vip, "the lab has no virtual IP (keepalived) to send the load to"
    token, project = the_lab.account()
    on(the_lab.client, f"cat > /tmp/ha_load.py <<'EOF'\n{LOAD.read_text()}EOF")
    out = f"/tmp/ha-load-{host}.jsonl"
    seconds = BEFORE + DOWN + AFTER
    on(the_lab.client, f"nohup python3 /tmp/ha_load.py {the_lab.base} {CA} {token} {project} "
                       f"{seconds + 15} {out} >/dev/null 2>&1 &")
    time.sleep(BEFORE)
    t_off = time.time()
    lab("stop", host)
    time.sleep(max(0.0, DOWN - (time.time() - t_off)))
    lab("start", host)
    t_on = time.time()
    deadline = time.time() + 600
    while '"done"' not in on(the_lab.client, f"tail -1 {out}", check=False):
        assert time.time() < deadline, "the load did not end"
        time.sleep(3)
    entries = [json.loads(line) for line in on(the_lab.client, f"cat {out}").splitlines() if line.strip()]
    entries = [e for e in entries if "kind" in e]
    failed = [e for e in entries if e["status"] == 0 or e["status"] >= 500]
    recover = round(max(e["t"] for e in failed) - t_off, 1) if failed else 0.0
    docs = [e["doc"] for e in entries if e["kind"] == "upload" and e["status"] == 201]

    # Rejoined by itself: nobody touches the host or its clusters after the boot.
    t_rejoin, why = None, ""
    while time.time() < t_on + 300:
        ok, why = _rejoined(the_lab, host)
        if ok:
            t_rejoin = round(time.time() - t_on, 1)
            break
        time.sleep(5)

    # Every document answered 201 must exist (a committed write) and end ready.
    statuses: dict[str, str] = {}
    end = time.time() + READY_TIMEOUT_S
    while True:
        for d in docs:
            if statuses.get(d) not in ("ready", "gone"):
                code, doc = the_lab.curl("GET", f"/api/v1/projects/{project}/documents/{d}", token)
                statuses[d] = "gone" if code == 404 else (doc.get("status", "?") if isinstance(doc, dict) else "?")
                time.sleep(0.15)
        if all(s in ("ready", "gone", "failed") for s in statuses.values()) or time.time() > end:
            break
        time.sleep(10)
    lost_docs = sum(1 for s in statuses.values() if s != "ready")
    lost_writes = sum(1 for s in statuses.values() if s == "gone")
    by_kind = {k: sum(1 for e in failed if e["kind"] == k) for k in ("read", "search", "upload")}
    record(requests=len(entries), failed=len(failed), failed_by_kind=by_kind,
           recovered_after_s=recover, uploads_201=len(docs), documents_lost=lost_docs,
           writes_lost=lost_writes, rejoined=t_rejoin is not None, rejoined_after_boot_s=t_rejoin,
           not_rejoined=why if t_rejoin is None else "")
    assert lost_writes == 0, f"{lost_writes} committed uploads are gone"
    assert lost_docs == 0, f"{lost_docs} uploads answered 201 never became ready: {statuses}"
    assert t_rejoin is not None, f"{host} did not rejoin by itself: {why}"
    assert recover <= RECOVER_TARGET_S, f"failures until {recover} s after the power-off ({len(failed)} failed)"
