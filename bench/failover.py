"""failover: the database cluster under Patroni, faults injected on the leader under app
writes, timed from the application's side, with the committed writes that were lost, the
writes the isolated leader took after its TTL, and whether the old leader came back by itself."""
from __future__ import annotations

import json
import time

from bench import pg
from bench.lab import Lab, log, on, remote_script
from bench.lab import lab as lab_tool
from bench.report import Row

NAME = "failover"
SETTLE = 60         # seconds of writes after a fault, for the app to write again


def measure(lab: Lab) -> dict:
    """Writers POST new projects to the API (4 threads, straight to the app hosts from
    the load balancer, past Nginx's rate limit) while, one after another: a planned
    switchover (pg_switchover.yml); the leader powered off; every
    PostgreSQL process of the leader killed (SIGKILL); the leader cut off the network
    (lab.py cut), with a write tried on it every second from inside the host. No playbook
    runs after a fault: Patroni alone must restore writes. The power-off pulls the cord
    (lab.py kill: SIGKILL to every process of the host; an orderly shutdown would let
    Patroni hand over first). Measured per fault: seconds
    from the fault until the app writes again, how long writes failed, committed writes
    lost (answered 201 but absent on the leader afterwards), the writes the isolated
    leader accepted after its TTL, and the seconds until the faulty host streams as a
    replica again by itself (power and network back)."""
    dbs = lab.groups["db_primary"] + lab.groups.get("db_replicas", [])
    apps = ",".join(lab.addr[h] for h in lab.app_hosts)
    token = lab.token()
    on(lab.lb, f"cat > /tmp/writer.py <<'PY'\n{remote_script('writer.py')}\nPY")
    sync = on(pg.leader(dbs), f"{pg.PSQL} -d postgres -c 'SHOW synchronous_standby_names'").strip()
    ttl = pg.ttl(dbs)
    out: dict = {"members": dbs, "ttl_s": ttl, "synchronous_standby_names": sync}

    def writes(prefix: str, fault) -> dict:
        if sync:
            pg.wait_sync(dbs)
        # A writer left by an interrupted run would write into the new file: end it first (by its PID file).
        on(lab.lb, f"touch /tmp/writer-{prefix}.stop; p=$(cat /tmp/writer-{prefix}.pid 2>/dev/null) && "
                   f"while kill -0 $p 2>/dev/null; do sleep 1; done; rm -f /tmp/writer-{prefix}.stop; "
                   f"nohup python3 /tmp/writer.py {apps} {token} {prefix} 4 >/dev/null 2>&1 & echo $! > /tmp/writer-{prefix}.pid")
        time.sleep(5)
        t0 = time.time()
        try:
            extra = fault() or {}
            time.sleep(max(0.0, SETTLE - (time.time() - t0)))
        finally:
            on(lab.lb, f"touch /tmp/writer-{prefix}.stop; sleep 16")
        rows = [json.loads(x) for x in on(lab.lb, f"cat /tmp/writer-{prefix}.jsonl").splitlines()]
        res = {**_outage(rows, t0), **extra}
        lead = pg.leader(dbs)
        present = set(on(lead, f"{pg.PSQL} -d aiplatform -c \"SELECT name FROM projects WHERE name LIKE '{prefix}-%'\"").split())
        ok = [r for r in rows if r[2] == 201]
        res.update(leader_after=lead, committed_lost=len([r for r in ok if r[3] not in present]))
        log(f"failover {prefix}: {res}")
        return res

    try:
        # To a replica that is not the synchronous one when there is such a replica: the
        # longer path (the playbook makes every replica synchronous first), whichever
        # replica Patroni happened to pick; the row says which it was.
        first = pg.leader(dbs)
        roles = {m["Member"]: m["Role"] for m in pg.members(dbs)}
        other = sorted((h for h in dbs if h != first), key=lambda h: roles.get(h) == "Sync Standby")[0]
        out["switchover"] = writes("sw", lambda: {"playbook_s": lab.playbook("playbooks/pg_switchover.yml", "-e", f"new_primary={other}")[0]})
        out["switchover"].update(candidate=other, candidate_was_sync=roles.get(other) == "Sync Standby")

        # etcd runs on the database hosts: when the host also leads etcd, etcd elects a
        # leader first, and the new one gives every lease (Patroni's leader key too) its
        # whole TTL again, so the failover takes seconds longer. Recorded, not chosen.
        victim = pg.leader(dbs)
        etcd_lead = pg.etcd_leader(lab.groups.get("etcd", dbs), lab.addr)
        out["poweroff"] = writes("off", lambda: lab_tool("kill", victim) and None)
        out["poweroff"].update(host=victim, etcd_leader=etcd_lead)
        pg.boot(victim)
        out["poweroff"]["rejoin_s"] = pg.wait_streaming(victim)

        victim = pg.leader(dbs)
        out["sigkill"] = writes("kill", lambda: on(victim, "pkill -KILL -u postgres -x postgres") and None)
        out["sigkill"]["host"] = victim

        victim = pg.leader(dbs)
        etcd_lead = pg.etcd_leader(lab.groups.get("etcd", dbs), lab.addr)
        out["partition"] = writes("cut", lambda: _cut_and_probe(victim, ttl))
        out["partition"].update(host=victim, etcd_leader=etcd_lead)
        lab_tool("heal", victim)
        out["partition"]["rejoin_s"] = pg.wait_streaming(victim)
    finally:  # every member powered on and connected again, whatever step failed
        for h in dbs:
            lab_tool("heal", h, check=False)
            lab_tool("start", h, check=False)
        lead = pg.leader(dbs)
        on(lead, f"{pg.PSQL} -d aiplatform -c \"DELETE FROM projects WHERE name ~ '^(sw|off|kill|cut)-'\" "
                 f"-c 'DROP TABLE IF EXISTS bench_fence'", check=False)
    return out


def _outage(rows: list, t0: float) -> dict:
    """From the writers' records: seconds from the fault (t0) until writes succeed again,
    and how long they failed."""
    ok = [r for r in rows if r[2] == 201]
    bad = [r for r in rows if r[2] != 201 and r[0] >= t0]
    if bad:
        last_bad = max(r[1] for r in bad)
        again = min((r[1] for r in ok if r[0] >= last_bad), default=None)
        before = max((r[1] for r in ok if r[1] <= min(r[0] for r in bad)), default=t0)
    else:  # no failed write: the longest pause between two answered writes
        ends = sorted(r[1] for r in ok if r[1] >= t0)
        gaps = [(b - a, b) for a, b in zip([t0, *ends], ends)]
        before, again = (max(gaps)[1] - max(gaps)[0], max(gaps)[1]) if gaps else (t0, None)
    return {"writes_ok": len(ok), "writes_failed": len(bad),
            "app_writes_again_s": round(again - t0, 1) if again else None,
            "writes_stopped_s": round(again - before, 1) if again else None}


def _cut_and_probe(host: str, ttl: int) -> dict:
    """Cut the leader off the network and try a write on it every second, from inside the
    host (synchronous_commit=local, so that only its own state decides), for ttl + 20 s."""
    on(host, f"{pg.PSQL} -d aiplatform -c 'CREATE TABLE IF NOT EXISTS bench_fence (at timestamptz)'")
    lab_tool("cut", host)
    t_cut = time.time()
    tries = []
    while time.time() - t_cut < ttl + 20:
        t = time.time()
        r = on(host, f"{pg.PSQL} -d aiplatform -c 'SET synchronous_commit TO local' -c 'SET statement_timeout TO 2000' "
                     "-c 'INSERT INTO bench_fence VALUES (clock_timestamp())' && echo WROTE", check=False, timeout=30)
        tries.append((round(t - t_cut, 1), "WROTE" in r))
        time.sleep(max(0.0, 1 - (time.time() - t)))
    accepted = [t for t, ok in tries if ok]
    return {"fence_tries": len(tries), "fence_last_accepted_s": max(accepted, default=None),
            "fence_accepted_after_ttl": len([t for t in accepted if t > ttl])}


def rows(res: dict) -> list[Row]:
    fo = res.get(NAME)
    if not fo:
        return []
    if "members" not in fo:
        return _rows_before_patroni(fo, res.get("runs", {}).get(NAME, {}).get("when", "an earlier run")[:10])
    mode = f"synchronous ({fo['synchronous_standby_names']})" if fo["synchronous_standby_names"] else "asynchronous"
    out = []
    sw = fo.get("switchover")
    if sw:
        to = {True: " to the synchronous replica", False: " to a replica that was not synchronous"}.get(sw.get("candidate_was_sync"), "")
        out.append(Row(f"switchover (pg_switchover.yml, through Patroni){to} under app writes: start → app writes again",
                       "≤ 15 s; 0 committed writes lost",
                       f"{sw['app_writes_again_s']} s (writes failed for {sw['writes_stopped_s']} s, playbook "
                       f"{sw['playbook_s']} s); {sw['committed_lost']} lost of {sw['writes_ok']} committed",
                       sw["app_writes_again_s"] is not None and sw["app_writes_again_s"] <= 15 and sw["committed_lost"] == 0))
    for key, what in (("poweroff", "the leader powered off (power cord pulled)"), ("sigkill", "SIGKILL of every PostgreSQL process of the leader"),
                      ("partition", "the leader cut off the network")):
        f = fo.get(key)
        if not f:
            continue
        again = f["app_writes_again_s"]
        lost_ok = f["committed_lost"] == 0 or not fo["synchronous_standby_names"]
        if "etcd_leader" in f:
            what += " (it led etcd too)" if f["etcd_leader"] == f["host"] else " (not etcd's leader)"
        out.append(Row(f"failover by Patroni alone, {what}, under app writes ({mode} replication, ttl {fo['ttl_s']} s): "
                       "fault → app writes again; committed writes lost",
                       "≤ 30 s (stretch 15 s); 0 lost with synchronous replication",
                       f"{again} s (writes failed for {f['writes_stopped_s']} s); {f['committed_lost']} lost of "
                       f"{f['writes_ok']} committed; leader afterwards {f['leader_after']}",
                       again is not None and again <= 30 and lost_ok))
        if "rejoin_s" in f:
            out.append(Row(f"{what}: the old leader ({f['host']}) streams as a replica again by itself once it is back",
                           "rejoins without a playbook, within 60 s (on a cluster idle by then)",
                           f"{f['rejoin_s']} s" if f["rejoin_s"] is not None else "not within 600 s",
                           f["rejoin_s"] is not None and f["rejoin_s"] <= 60))
    p = fo.get("partition")
    if p:
        out.append(Row(f"fencing: writes accepted by the isolated old leader after the TTL ({fo['ttl_s']} s), one try a second "
                       "from inside the host", "0",
                       f"{p['fence_accepted_after_ttl']} of {p['fence_tries']} tries; last accepted "
                       f"{p['fence_last_accepted_s']} s after the cut", p["fence_accepted_after_ttl"] == 0))
    return out


def _rows_before_patroni(fo: dict, when: str) -> list[Row]:
    """Results of the release before Patroni (playbook-driven switchover and failover, keys
    switchover and failover_async/failover_sync), still in results.json until the section
    runs again: shown as what they are, and not judged, since they measured a failover path
    this release no longer has."""
    again = "not judged: an older release (`python3 -m bench --only failover` measures this one)"
    out = []
    for key, what in (("switchover", "switchover (pg_switchover.yml)"),
                      ("failover_async", "failover, asynchronous replication, primary SIGKILLed, pg_failover.yml run at once"),
                      ("failover_sync", "failover, synchronous (ANY 1) replication, primary SIGKILLed, pg_failover.yml run at once")):
        f = fo.get(key)
        if f:
            out.append(Row(f"before Patroni (run of {when}): {what} under app writes: start → app writes again; committed writes lost",
                           again, f"{f['app_writes_again_s']} s (playbook {f['playbook_s']} s); {f['committed_lost']} lost of "
                           f"{f['writes_ok']} committed"))
    return out
