"""Fault drills: each breaks something real on the lab and asserts the platform's answer."""
from __future__ import annotations

import re
import time

from conftest import lab, on


def wait(what: str, check, timeout: float, step: float = 0.25) -> float:
    """Poll check() until true; the seconds it took. Fails after timeout."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout} s"
        time.sleep(step)
    return time.monotonic() - t0


def main_pid(host: str, unit: str) -> str:
    return on(host, f"systemctl show -p MainPID --value {unit}").strip()


def active(host: str, *units: str) -> bool:
    out = on(host, f"systemctl is-active {' '.join(units)}", check=False)
    return out.split()[: len(units)] == ["active"] * len(units)


def settle_lb(the_lab) -> None:
    """Wait out Nginx's fail_timeout, so that the next drill starts with every app host in rotation."""
    conf = on(the_lab.lb, "cat /etc/nginx/conf.d/ai-platform.conf")
    m = re.search(r"fail_timeout=(\d+)s", conf)
    time.sleep(int(m.group(1)) + 1 if m else 31)


def test_sigkill_gunicorn_master_under_load(the_lab, record):
    """SIGKILL the gunicorn master on one app host under load: back within 5 s, 0 failed GETs."""
    app = the_lab.apps[0]
    ip = the_lab.addr[app]
    pid = main_pid(app, "ai-platform-api")
    assert int(pid) > 0
    the_lab.start_load("sigkill", 25)
    time.sleep(3)
    on(app, f"kill -9 {pid}")
    t0 = time.monotonic()

    def serving() -> bool:
        new = main_pid(app, "ai-platform-api")
        if new in ("0", pid) or not active(app, "ai-platform-api"):
            return False
        return on(the_lab.lb, f"curl -s -o /dev/null -w '%{{http_code}}' -m 2 http://{ip}:8000/health/live", check=False) == "200"
    wait("API back after SIGKILL", serving, 60)
    back = time.monotonic() - t0
    codes = the_lab.load_result("sigkill")
    settle_lb(the_lab)
    record(back_serving_s=round(back, 1), requests=sum(codes.values()), statuses=codes)
    assert set(codes) == {"200"}, codes
    assert back <= 5, f"the API answered again only after {back:.1f} s"


def test_power_off_one_app_host(the_lab, record):
    """Power one app host off for a minute and boot it: traffic continues; every unit comes back by itself."""
    app = the_lab.apps[-1]
    the_lab.start_load("poweroff", 100, pause=0.1)
    time.sleep(3)
    lab("stop", app)
    time.sleep(60)
    lab("start", app)
    units = ("ai-platform-api", "ai-platform-worker", "nginx") if app == the_lab.lb else ("ai-platform-api", "ai-platform-worker")
    up = wait("units active after boot", lambda: _quiet_active(app, *units), 300, step=2)
    failed = on(app, "systemctl --failed --no-legend --plain", check=False).strip()
    codes = the_lab.load_result("poweroff")
    settle_lb(the_lab)
    record(units_back_after_boot_s=round(up, 1), requests=sum(codes.values()), statuses=codes, failed_units=failed or "none")
    assert set(codes) == {"200"}, codes
    assert not failed, failed


def _quiet_active(host: str, *units: str) -> bool:
    try:
        return active(host, *units)
    except Exception:  # the host is still booting
        return False


def test_redis_restart_and_worker_sigkill_lose_no_document(the_lab, record):
    """Restart Redis with documents queued or indexing and SIGKILL a Celery worker mid-task: every document still ends ready."""
    token, project = the_lab.account()
    n = 8
    # About 280 chunks each: the 8 take a minute or more to index, so most are still queued
    # or indexing when the upload ends and the faults hit.
    on(the_lab.client, "for i in $(seq 8); do python3 -c \"import sys; i=int(sys.argv[1]); "
                       "print('\\n\\n'.join(f'Paragraph {p} of drill document {i}: the pump of loop {p} moves water ' * 8 "
                       "for p in range(400)))\" $i > /tmp/drill-doc-$i.md; done")
    ids = []
    for i in range(1, n + 1):
        status, doc = the_lab.curl("POST", f"/api/v1/projects/{project}/documents", token, form_file=f"/tmp/drill-doc-{i}.md")
        if status == 429:  # the upload limit: wait for the bucket
            time.sleep(1.2)
            status, doc = the_lab.curl("POST", f"/api/v1/projects/{project}/documents", token, form_file=f"/tmp/drill-doc-{i}.md")
        assert status == 201, (status, doc)
        ids.append(doc["id"])
        time.sleep(1.05)

    def statuses() -> dict:
        out = {}
        for d in ids:
            _, doc = the_lab.curl("GET", f"/api/v1/projects/{project}/documents/{d}", token)
            out[d] = doc["status"] if isinstance(doc, dict) else "?"
            time.sleep(0.15)
        return out
    # Redis (the broker) restarts while tasks are queued or running: the documents' states
    # just before it (a drill with nothing in flight would prove nothing).
    at_fault = statuses()
    in_flight = sorted(d for d, s in at_fault.items() if s in ("pending", "indexing"))
    on(the_lab.redis, "systemctl restart redis@broker")
    # A worker dies mid-task: SIGKILL its main process (systemd starts it again).
    worker_host = the_lab.apps[0]
    pid = main_pid(worker_host, "ai-platform-worker")
    on(worker_host, f"kill -9 {pid}")
    t0 = time.monotonic()
    last: dict = {}

    def settled() -> bool:
        nonlocal last
        last = statuses()
        return all(s in ("ready", "failed") for s in last.values())
    wait("every document settled", settled, 900, step=5)
    record(documents=n, in_flight_at_fault=len(in_flight), statuses_at_fault=sorted(at_fault.values()),
           settled_after_s=round(time.monotonic() - t0), statuses=sorted(set(last.values())))
    assert in_flight, f"no document was queued or indexing when Redis restarted: {at_fault}"
    assert set(last.values()) == {"ready"}, last


def test_replica_cut_off_catches_up(the_lab, record):
    """Cut the replica off for a minute under writes, then heal: it catches up by itself; pg_wal stays bounded."""
    primary, replica = the_lab.primary, the_lab.replicas[0]
    psql = "runuser -u postgres -- psql -XAtq -d postgres -c"
    keep = on(primary, f"{psql} 'SHOW max_slot_wal_keep_size'").strip()
    wal_before = int(on(primary, "du -sb /var/lib/postgresql/*/main/pg_wal | cut -f1"))
    lab("cut", replica)
    try:
        # Writes while it is away: a table of 200k rows written 3 times.
        on(primary, f"{psql} 'CREATE TABLE IF NOT EXISTS drill_cut (i int, pad text)' "
                    + " ".join(["-c 'INSERT INTO drill_cut SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 200000) g'"] * 3),
           timeout=600)
        time.sleep(45)
        lag = int(on(primary, f"{psql} \"SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint "
                              f"FROM pg_replication_slots WHERE slot_name = '{replica.replace('-', '_')}'\"") or 0)
        wal_during = int(on(primary, "du -sb /var/lib/postgresql/*/main/pg_wal | cut -f1"))
    finally:
        lab("heal", replica)
    target = on(primary, f"{psql} 'SELECT pg_current_wal_lsn()'").strip()
    t = wait("replica replayed everything", lambda: on(
        replica, f"{psql} \"SELECT pg_last_wal_replay_lsn() >= '{target}'\"", check=False).strip() == "t", 300, step=1)
    streaming = on(primary, f"{psql} \"SELECT state FROM pg_stat_replication WHERE application_name = '{replica}'\"").strip()
    wal_status = on(primary, f"{psql} \"SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{replica.replace('-', '_')}'\"").strip()
    on(primary, f"{psql} 'DROP TABLE drill_cut'")
    record(slot_behind_bytes_while_cut=lag, pg_wal_before=wal_before, pg_wal_while_cut=wal_during,
           max_slot_wal_keep_size=keep, caught_up_after_heal_s=round(t, 1), state=streaming, wal_status=wal_status)
    assert streaming == "streaming" and wal_status in ("reserved", "extended")
    assert lag > 0, "the replica was not behind: the cut did not take"
    units = {"kB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
    limit = int(keep[:-2]) * units[keep[-2:]] if keep[-2:] in units else int(keep)
    # pg_wal: what the slot may keep, plus max_wal_size worth of normal segments at most.
    max_wal = on(primary, f"{psql} 'SELECT setting::bigint * 1048576 FROM pg_settings WHERE name = $$max_wal_size$$'").strip()
    assert wal_during <= limit + int(max_wal) + 64 * 2**20


def test_oversized_and_concurrent_uploads(the_lab, record):
    """A 51 MB upload and 100 concurrent uploads: refused or accepted whole, the service stays up, nothing half-written."""
    token, project = the_lab.account()
    c = the_lab.client
    on(c, "head -c $((51 * 1024 * 1024)) /dev/zero | tr '\\0' 'a' > /tmp/drill-51m.txt; "
          "python3 -c \"print('\\n\\n'.join('concurrent upload paragraph %d about turbines' % i for i in range(400)))\" > /tmp/drill-small.md; "
          # 100 different files: the app keeps one document per content (SHA-256) and project.
          "for i in $(seq 100); do { cat /tmp/drill-small.md; echo \"copy $i\"; } > /tmp/drill-small-$i.md; done")
    status, body = the_lab.curl("POST", f"/api/v1/projects/{project}/documents", token, form_file="/tmp/drill-51m.txt")
    time.sleep(6)  # let the upload bucket refill
    out = on(c, f"for i in $(seq 100); do curl -s -o /dev/null -w '%{{http_code}}\\n' --cacert /tmp/drill-ca.crt "
                f"-H 'Authorization: Bearer {token}' -F file=@/tmp/drill-small-$i.md "
                f"{the_lab.base}/api/v1/projects/{project}/documents & done; wait", timeout=600)
    codes: dict[str, int] = {}
    for line in out.split():
        codes[line] = codes.get(line, 0) + 1
    time.sleep(2)
    health, data = the_lab.curl("GET", "/health")
    time.sleep(1)
    _, listed = the_lab.curl("GET", f"/api/v1/projects/{project}/documents?limit=500", token)
    # The API's uploads spool in its private /tmp (PrivateTmp=yes); it must exist, and be empty now.
    leftovers = {app: on(app, "d=$(ls -d /tmp/systemd-private-*-ai-platform-api.service-*/tmp) && find $d -type f | wc -l").strip()
                 for app in the_lab.apps}
    record(oversized_status=status, concurrent_statuses=codes, documents_listed=len(listed), health=health,
           api_temp_files_left=leftovers)
    assert status == 413, (status, body)
    assert set(codes) <= {"201", "429"} and codes.get("201", 0) >= 1, codes
    assert health == 200, data
    assert len(listed) == codes.get("201", 0), (len(listed), codes)
    assert set(leftovers.values()) == {"0"}, leftovers
