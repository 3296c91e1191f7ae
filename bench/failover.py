"""failover: switchover and failover of PostgreSQL timed from the application's side,
with the committed writes that were lost."""
from __future__ import annotations

import json
import time

from bench.lab import Lab, log, on, remote_script
from bench.lab import lab as lab_tool
from bench.report import Row

NAME = "failover"
PSQL = "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d aiplatform"


def measure(lab: Lab) -> dict:
    """Switchover and failover timed from the application's side: writers POST new
    projects to the API (4 threads, straight to the app hosts from the load balancer,
    past Nginx's rate limit) while playbooks/pg_switchover.yml runs, or while the
    primary has crashed (lab.py kill: SIGKILL to all its processes) and
    playbooks/pg_failover.yml promotes the replica (with asynchronous replication,
    then with synchronous). Measured: seconds from the start
    (playbook start; power-off for a failover) until the app writes again, how long
    writes failed, and committed writes lost: answered 201 but absent on the new
    primary. The lab is put back as it was (pg_rejoin.yml, switchover back)."""
    primary = lab.groups["db_primary"][0]
    replica = lab.groups["db_replicas"][0]
    apps = ",".join(lab.addr[h] for h in lab.app_hosts)
    token = lab.token()
    on(lab.lb, f"cat > /tmp/writer.py <<'PY'\n{remote_script('writer.py')}\nPY")

    def playbook(name: str, *extra: str) -> float:
        return lab.playbook(f"playbooks/{name}", *extra)[0]

    def measure_one(prefix: str, act, new_primary: str) -> dict:
        # A writer left by an interrupted run would write into the new file: end it first (by its PID file).
        on(lab.lb, f"touch /tmp/writer-{prefix}.stop; p=$(cat /tmp/writer-{prefix}.pid 2>/dev/null) && "
                   f"while kill -0 $p 2>/dev/null; do sleep 1; done; rm -f /tmp/writer-{prefix}.stop; "
                   f"nohup python3 /tmp/writer.py {apps} {token} {prefix} 4 >/dev/null 2>&1 & echo $! > /tmp/writer-{prefix}.pid")
        time.sleep(5)
        t0 = time.time()
        try:
            took = act()
            time.sleep(10)
        finally:
            on(lab.lb, f"touch /tmp/writer-{prefix}.stop; sleep 16")
        rows = [json.loads(x) for x in on(lab.lb, f"cat /tmp/writer-{prefix}.jsonl").splitlines()]
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
        present = set(on(new_primary, f"{PSQL} -c \"SELECT name FROM projects WHERE name LIKE '{prefix}-%'\"").split())
        lost = [r[3] for r in ok if r[3] not in present]
        res = {"playbook_s": took, "writes_ok": len(ok), "writes_failed": len(bad),
               "app_writes_again_s": round(again - t0, 1) if again else None,
               "writes_stopped_s": round(again - before, 1) if again else None, "committed_lost": len(lost)}
        log(f"failover {prefix}: {res}")
        return res

    def rejoin(host: str, of: str) -> None:
        """host streams from `of`: kept, rewound, or cloned again when that fails."""
        try:
            playbook("pg_rejoin.yml", "-e", f"primary={of}", "--limit", host)
        except RuntimeError:
            playbook("pg_rejoin.yml", "-e", f"primary={of}", "-e", "postgresql_replica_reclone=true", "--limit", host)

    def put_back() -> None:
        """After a failed step: both hosts up, the inventory's primary the primary again, the
        other streaming from it."""
        for h in (primary, replica):
            lab_tool("start", h, check=False)  # up already, or booted degraded (a failed PostgreSQL): both fine here
        time.sleep(10)
        role = {h: on(h, f"{PSQL} -c 'SELECT pg_is_in_recovery()'", check=False).strip() for h in (primary, replica)}
        log(f"failover: putting the lab back, pg_is_in_recovery: {role}")
        if role[primary] != "f" and role[replica] == "f":
            rejoin(primary, replica)
            playbook("pg_switchover.yml", "-e", f"current_primary={replica}", "-e", f"new_primary={primary}")
        on(primary, f"{PSQL} -c 'ALTER SYSTEM RESET synchronous_standby_names' -c 'SELECT pg_reload_conf()'")
        rejoin(replica, primary)

    out: dict = {"primary": primary, "replica": replica}
    try:
        _runs(out, primary, replica, measure_one, playbook)
    except BaseException:
        put_back()
        raise
    finally:
        on(primary, f"{PSQL} -c \"DELETE FROM projects WHERE name ~ '^(sw|foasync|fosync)-'\"", check=False)
    return out


def _runs(out: dict, primary: str, replica: str, measure_one, playbook) -> None:
    out["switchover"] = measure_one("sw", lambda: playbook("pg_switchover.yml", "-e", f"new_primary={replica}"), replica)
    out["switchover"]["switch_back_s"] = playbook("pg_switchover.yml", "-e", f"current_primary={replica}", "-e", f"new_primary={primary}")
    app_name = on(primary, f"{PSQL} -c 'SELECT application_name FROM pg_stat_replication'").split()[0]
    for mode in ("async", "sync"):
        sync = f"ANY 1 ({app_name})" if mode == "sync" else ""
        on(primary, f"{PSQL} -c \"ALTER SYSTEM SET synchronous_standby_names = '{sync}'\" -c 'SELECT pg_reload_conf()'")
        time.sleep(2)
        state = on(primary, f"{PSQL} -c 'SELECT sync_state FROM pg_stat_replication'").strip()

        def power_off_and_fail_over() -> float:
            # kill, not stop: an orderly power-off shuts PostgreSQL down cleanly and its WAL
            # senders hand every commit to the replica first; a crash does not.
            lab_tool("kill", primary)
            return playbook("pg_failover.yml")
        res = measure_one(f"fo{mode}", power_off_and_fail_over, replica)
        res["sync_state"] = state
        lab_tool("start", primary)
        for _ in range(60):
            if on(primary, "systemctl is-system-running", check=False).strip() in ("running", "degraded"):
                break
            time.sleep(2)
        res["rejoin_s"] = playbook("pg_rejoin.yml", "-e", f"primary={replica}", "--limit", primary)
        res["switch_back_s"] = playbook("pg_switchover.yml", "-e", f"current_primary={replica}", "-e", f"new_primary={primary}")
        on(primary, f"{PSQL} -c 'ALTER SYSTEM RESET synchronous_standby_names' -c 'SELECT pg_reload_conf()'")
        out[f"failover_{mode}"] = res


def rows(res: dict) -> list[Row]:
    fo = res.get(NAME)
    if not fo:
        return []
    sw = fo["switchover"]
    out = [Row(f"switchover ({fo['primary']} → {fo['replica']}, pg_switchover.yml) under app writes: start → app writes again",
               "≤ 15 s; 0 committed writes lost",
               f"{sw['app_writes_again_s']} s (writes failed for {sw['writes_stopped_s']} s, playbook {sw['playbook_s']} s); "
               f"{sw['committed_lost']} lost of {sw['writes_ok']} committed",
               sw["app_writes_again_s"] is not None and sw["app_writes_again_s"] <= 15 and sw["committed_lost"] == 0)]
    for mode in ("async", "sync"):
        f = fo.get(f"failover_{mode}")
        if f:
            sync = mode == "sync"
            out.append(Row(f"failover, {'synchronous (ANY 1)' if sync else 'asynchronous'} replication: primary crashed "
                           "(SIGKILL to all its processes) under app writes, pg_failover.yml run at once: crash → app writes again; "
                           "committed writes lost",
                           "app writes again; 0 committed writes lost" if sync else "app writes again; loss reported",
                           f"{f['app_writes_again_s']} s (playbook {f['playbook_s']} s); {f['committed_lost']} lost of "
                           f"{f['writes_ok']} committed; replica state `{f['sync_state']}`",
                           f["app_writes_again_s"] is not None and (f["committed_lost"] == 0 or not sync)))
    return out
