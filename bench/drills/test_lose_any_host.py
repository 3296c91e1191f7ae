"""The "lose any host" drill: every server host of the lab, in turn, powered off for a
minute under a steady mixed load through the load balancers' virtual IP.

Per host: the load (bench/drills/ha_load.py on the client: reads, searches, uploads at
fixed rates) runs BEFORE s, the host is powered off (`lab.py stop`) for DOWN s and booted
(`lab.py start`), and the load goes on for AFTER s. Then: failed requests (status >= 500
or no answer), seconds from the power-off to the last failure, documents lost (answered
201 but never ready), committed writes lost (a 201 document that is gone), and whether the
host rejoined by itself (its units and its place in its cluster, without anyone acting).
Targets: 0 documents and 0 writes lost, back within 30 s, rejoined.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import CA, REPO, Lab, benchlab, lab, on

BEFORE, DOWN, AFTER = 15, 60, 75  # seconds of load before, during and after the outage
RECOVER_TARGET_S = 30
READY_TIMEOUT_S = 900  # documents in flight when Redis or a worker died wait for requeue_stuck
LOAD = Path(__file__).with_name("ha_load.py")
HOSTS = [h for h, v in benchlab.inventory(benchlab.INVENTORY)["_meta"]["hostvars"].items()
         if h not in benchlab.inventory(benchlab.INVENTORY).get("lab_clients", {}).get("hosts", [])]


def _groups_of(the_lab: Lab, host: str) -> set[str]:
    return {g for g, members in the_lab.groups.items() if host in members}


def _active(host: str, *units: str) -> bool:
    out = on(host, f"systemctl is-active {' '.join(units)}", check=False)
    return out.split()[: len(units)] == ["active"] * len(units)


def _has_unit(host: str, unit: str) -> bool:
    return on(host, f"systemctl cat {unit} >/dev/null 2>&1 && echo yes", check=False).strip() == "yes"


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
        if _has_unit(host, "patroni.service") and not _active(host, "patroni"):
            missing.append("patroni")
        state = on(host, "runuser -u postgres -- psql -XAtq -c \"SELECT pg_is_in_recovery(), "
                         "(SELECT status FROM pg_stat_wal_receiver)\"", check=False).strip()
        if state not in ("f|", "t|streaming"):  # a primary, or a replica that streams
            missing.append(f"postgresql ({state or 'down'})")
    if "redis" in groups:
        for name, port in (("broker", 6379), ("cache", 6380)):
            info = _redis_cli(host, port, "INFO replication")
            if "role:master" not in info and "master_link_status:up" not in info:
                missing.append(f"redis {name} linked")
    if "redis_sentinel" in groups and "OK" not in _redis_cli(host, 26379, "SENTINEL ckquorum broker"):
        missing.append("sentinel quorum")
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


def _behind(the_lab: Lab) -> str:
    """ChromaDB servers marked behind (app.vectorset), read from the broker's primary."""
    sentinel = the_lab.groups["redis_sentinel"][0]
    for s in the_lab.groups["redis_sentinel"]:
        addr = _redis_cli(s, 26379, "SENTINEL get-master-addr-by-name broker").split()
        if addr:
            primary = next(h for h in the_lab.groups["redis"] if the_lab.addr[h] == addr[0])
            return _redis_cli(primary, 6379, "HKEYS aiplatform:chroma:behind").strip()
    raise AssertionError(f"no sentinel answered (first: {sentinel})")


def _automatic_db_failover(the_lab: Lab) -> bool:
    return any(_has_unit(h, "patroni.service")
               for h in the_lab.groups.get("db_primary", []) + the_lab.groups.get("db_replicas", []))


@pytest.mark.parametrize("host", HOSTS)
def test_lose_any_host(the_lab, record, host):
    """One server host powered off for a minute under load through the VIP: failures, recovery, losses, rejoin."""
    groups = _groups_of(the_lab, host)
    record(host=host, groups=sorted(groups))
    if "db_primary" in groups and not _automatic_db_failover(the_lab):
        record(pending="needs automatic PostgreSQL failover (Patroni), not on this lab")
        pytest.skip("pending: the PostgreSQL primary's row needs automatic failover (Patroni)")
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
