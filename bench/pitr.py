"""pitr: the WAL archive's recovery point under writes, and a point-in-time recovery with
playbooks/restore.yml checked row for row."""
from __future__ import annotations

import time

from bench import pg
from bench.lab import Lab, log, on
from bench.report import Row

NAME = "pitr"
ARCHIVE_TIMEOUT = 60  # postgresql_archive_timeout (the role's default)


def measure(lab: Lab) -> dict:
    """RPO: 120 s of steady writes on the leader (pgbench, 2 clients, 20 transactions/s);
    every 2 s, how long ago the archive last received a WAL segment (pg_stat_archiver):
    the committed writes not yet archived are at most that old, so its maximum is the
    recovery point a loss of every database host would have had at worst. PITR: rows A,
    the time, rows B and a dropped table on the leader; playbooks/restore.yml restores to
    that time beside the running cluster (on a replica, port 5439); the restored rows A
    must equal the leader's row for row, and B and the drop must be absent."""
    dbs = lab.groups["db_primary"] + lab.groups.get("db_replicas", [])
    lead = pg.leader(dbs)
    ver = pg.version(lead)
    psql = f"{pg.PSQL} -d aiplatform"
    out: dict = {"leader": lead, "archive_timeout_s": ARCHIVE_TIMEOUT}

    # RPO under writes.
    on(lead, f"runuser -u postgres -- /usr/lib/postgresql/{ver}/bin/pgbench -i -q -s 1 aiplatform 2>&1 | tail -1")
    on(lead, f"{psql} -c 'SELECT pg_switch_wal()'")
    time.sleep(5)
    sample = ("SELECT extract(epoch FROM now() - last_archived_time)::numeric(8,1), "
              "(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'), failed_count FROM pg_stat_archiver")
    secs = 120
    run = (f"(for i in $(seq {secs // 2}); do {psql} -F' ' -c \"{sample}\"; sleep 2; done > /tmp/bench-rpo.txt) & "
           f"runuser -u postgres -- /usr/lib/postgresql/{ver}/bin/pgbench -n -c 2 -R 20 -T {secs} aiplatform > /dev/null 2>&1; wait")
    on(lead, run, timeout=secs + 300)
    samples = [line.split() for line in on(lead, "cat /tmp/bench-rpo.txt").splitlines() if line.strip()]
    ages = [float(a) for a, _, _ in samples]
    out["rpo"] = {"seconds": secs, "samples": len(samples), "max_unarchived_s": max(ages), "p50_unarchived_s": sorted(ages)[len(ages) // 2],
                  "max_ready_segments": max(int(r) for _, r, _ in samples),
                  "failed_count_delta": int(samples[-1][2]) - int(samples[0][2])}
    log(f"pitr: RPO {out['rpo']}")

    # Point-in-time recovery beside the cluster.
    target_host = next((h for h in reversed(dbs) if h != lead), lead)
    on(lead, f"{psql} -c 'DROP TABLE IF EXISTS bench_pitr, bench_pitr_victim' "
             "-c 'CREATE TABLE bench_pitr (id serial PRIMARY KEY, batch text, at timestamptz DEFAULT clock_timestamp())' "
             "-c 'CREATE TABLE bench_pitr_victim AS SELECT g AS x FROM generate_series(1, 1000) g' "
             "-c \"INSERT INTO bench_pitr (batch) SELECT 'A' FROM generate_series(1, 10000)\"")
    time.sleep(2)
    target = on(lead, f"{psql} -c \"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'\"").strip()
    time.sleep(2)
    on(lead, f"{psql} -c \"INSERT INTO bench_pitr (batch) SELECT 'B' FROM generate_series(1, 5000)\" "
             "-c 'DROP TABLE bench_pitr_victim' -c 'SELECT pg_switch_wal()'")
    took, _ = lab.playbook("playbooks/restore.yml", "-e", "pgbackrest_restore_target=time",
                           "-e", f"pgbackrest_restore_time='{target}'", "-e", f"pgbackrest_restore_host={target_host}")
    restored = "runuser -u postgres -- psql -XAtq -p 5439 -d aiplatform"
    q_a = "SELECT count(*) || ' ' || md5(string_agg(id || batch || at, ',' ORDER BY id)) FROM bench_pitr WHERE batch = 'A'"
    out["restore"] = {
        "host": target_host, "target": target, "playbook_s": took,
        "rows_a_identical": on(target_host, f"{restored} -c \"{q_a}\"").strip() == on(lead, f"{psql} -c \"{q_a}\"").strip(),
        "rows_a": int(on(target_host, f"{restored} -c \"SELECT count(*) FROM bench_pitr WHERE batch = 'A'\"")),
        "rows_b": int(on(target_host, f"{restored} -c \"SELECT count(*) FROM bench_pitr WHERE batch = 'B'\"")),
        "dropped_table_rows": int(on(target_host, f"{restored} -c 'SELECT count(*) FROM bench_pitr_victim'", check=False) or -1)}
    log(f"pitr: restore {out['restore']}")
    on(target_host, "systemctl stop ai-platform-pitr", check=False)
    on(lead, f"{psql} -c 'DROP TABLE IF EXISTS bench_pitr, pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history'",
       check=False)
    return out


def rows(res: dict) -> list[Row]:
    p = res.get(NAME)
    if not p:
        return []
    out = []
    r = p.get("rpo")
    if r:
        out.append(Row(f"RPO of the WAL archive: age of the newest archived segment, sampled every 2 s over {r['seconds']} s of "
                       f"writes (pgbench, 20 tps); archive_timeout {p['archive_timeout_s']} s",
                       f"max ≤ archive_timeout + 10 s = {p['archive_timeout_s'] + 10} s",
                       f"max {r['max_unarchived_s']} s, p50 {r['p50_unarchived_s']} s; at most {r['max_ready_segments']} "
                       f"segments waiting; {r['failed_count_delta']} failed pushes",
                       r["max_unarchived_s"] <= p["archive_timeout_s"] + 10 and r["failed_count_delta"] == 0))
    x = p.get("restore")
    if x:
        ok = x["rows_a_identical"] and x["rows_a"] == 10000 and x["rows_b"] == 0 and x["dropped_table_rows"] == 1000
        out.append(Row("point-in-time recovery (playbooks/restore.yml, beside the cluster on "
                       f"{x['host']}): rows A, the time, rows B and a dropped table; restored to that time",
                       "A present row for row, B absent, the table back",
                       f"{x['playbook_s']:.0f} s; A {x['rows_a']} rows {'identical' if x['rows_a_identical'] else 'DIFFERENT'}, "
                       f"B {x['rows_b']} rows, dropped table {x['dropped_table_rows']} rows", ok))
    return out
