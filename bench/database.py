"""database: replica lag under pgbench; a pgBackRest full backup and a restore of it beside
the cluster (playbooks/restore.yml), and the logical backup service and
playbooks/restore_dump.yml, on a database of about 1 GB, the restored copies compared row
for row."""
from __future__ import annotations

import json
import re
import time

from bench import pg
from bench.lab import Lab, log, on, pct
from bench.report import Row

NAME = "database"


def options(ap) -> None:
    ap.add_argument("--scale", type=int, default=70, help="pgbench scale of the database benchmark (70: about 1 GB)")


def measure(lab: Lab) -> dict:
    """PostgreSQL: a pgbench database of --scale (70: about 1 GB) on the leader;
    replica replay lag sampled every 0.5 s during a 60 s pgbench write load; a full
    backup by pgBackRest's unit on the repository host and playbooks/restore.yml of it
    beside the cluster (the end of the archive, on the last replica); the logical
    backup service on its host and playbooks/restore_dump.yml into a new database; all
    timed, both restored copies compared with the leader table by table (row count and
    the sum of a 64-bit hash of every row). Cleans up afterwards."""
    scale = lab.args.scale
    dbs = lab.groups["db_primary"] + lab.groups.get("db_replicas", [])
    primary = pg.leader(dbs)
    replicas = [h for h in dbs if h != primary]
    backup_host = lab.groups.get("db_replicas", [primary])[0]  # postgresql_backup_host
    ver = on(primary, "ls /etc/postgresql").split()[-1]
    bindir = f"/usr/lib/postgresql/{ver}/bin"
    psql = "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d aiplatform"
    pgbench = f"runuser -u postgres -- {bindir}/pgbench"
    out: dict = {"primary": primary, "replicas": replicas, "postgresql": ver, "scale": scale,
                 "synchronous_standby_names": on(primary, f"{psql} -c 'SHOW synchronous_standby_names'").strip()}
    t0 = time.monotonic()
    on(primary, f"{pgbench} -i -q -s {scale} aiplatform 2>&1 | tail -2", timeout=3600)
    out["generate_s"] = round(time.monotonic() - t0, 1)
    # The app's role owns them, as it owns its own tables (restore.yml restores as that role).
    on(primary, f"{psql} " + " ".join(f"-c 'ALTER TABLE pgbench_{t} OWNER TO aiplatform'"
                                      for t in ("accounts", "branches", "tellers", "history")))
    out["database_bytes"] = int(on(primary, f"{psql} -c \"SELECT pg_database_size('aiplatform')\""))
    log(f"database: generated {out['database_bytes'] / 2**30:.2f} GiB in {out['generate_s']} s")

    # Lag: the primary's view of each replica, sampled while pgbench writes.
    sample = ("SELECT application_name, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
              "coalesce(extract(epoch FROM replay_lag), 0) FROM pg_stat_replication")
    secs = 60
    run = (f"(for i in $(seq {secs * 2}); do {psql} -F' ' -c \"{sample}\"; sleep 0.5; done > /tmp/bench-lag.txt) & "
           f"{pgbench} -c 8 -j 2 -T {secs} -P 10 aiplatform 2>&1 | grep -E '^(tps|latency average|number of transactions actually)'; wait")
    bench_out = on(primary, run, timeout=secs + 600)
    tps = re.search(r"tps = ([\d.]+)", bench_out)
    lag: dict = {}
    for line in on(primary, "cat /tmp/bench-lag.txt").splitlines():
        name, nbytes, seconds = line.split()
        lag.setdefault(name, {"bytes": [], "seconds": []})
        lag[name]["bytes"].append(int(nbytes))
        lag[name]["seconds"].append(float(seconds))
    out["pgbench"] = {"seconds": secs, "clients": 8, "tps": float(tps.group(1)) if tps else None,
                      "lag": {n: {"samples": len(v["bytes"]), "bytes_p50": pct(v["bytes"], .5), "bytes_p99": pct(v["bytes"], .99),
                                  "seconds_p50": pct(v["seconds"], .5), "seconds_p99": pct(v["seconds"], .99)}
                              for n, v in sorted(lag.items())}}
    for n, v in out["pgbench"]["lag"].items():
        log(f"database: lag of {n} under pgbench ({out['pgbench']['tps']} tps): p50 {v['bytes_p50']} B / {v['seconds_p50']:.3f} s, "
            f"p99 {v['bytes_p99']} B / {v['seconds_p99']:.3f} s")

    # Backup by its own service, on the backup host once it has replayed everything.
    lsn = on(primary, f"{psql} -c 'SELECT pg_current_wal_lsn()'").strip()
    for _ in range(120):
        if on(backup_host, f"{psql.replace('aiplatform', 'postgres')} -c \"SELECT pg_last_wal_replay_lsn() >= '{lsn}'\"").strip() in ("t", ""):
            break
        time.sleep(1)
    t0 = time.monotonic()
    on(backup_host, "systemctl start postgresql-backup.service", timeout=3600)
    out["backup_s"] = round(time.monotonic() - t0, 1)
    latest = on(backup_host, "ls -1 /var/backups/postgresql | tail -1").strip()
    out["dump_bytes"] = int(on(backup_host, f"stat -c %s /var/backups/postgresql/{latest}/aiplatform.dump"))
    log(f"database: backup {out['backup_s']} s, dump {out['dump_bytes'] / 2**20:.0f} MiB")

    # Restore with the playbook operators use, into a new database.
    out["restore_playbook_s"] = lab.playbook("playbooks/restore_dump.yml", "-e", "postgresql_restore_database=bench_restore")[0]
    log(f"database: restore_dump.yml {out['restore_playbook_s']} s")
    tables = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")

    def compare(host: str, other_psql: str) -> dict:
        same = {}
        for table in tables:
            q = f"SELECT count(*) || ' ' || coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM {table} t"
            src = on(primary, f"{psql} -c \"{q}\"").strip()
            dst = on(host, f"{other_psql} -c \"{q}\"").strip()
            same[table] = {"rows": int(src.split()[0]), "identical": src == dst}
        return same
    out["restored_identical"] = compare(primary, psql.replace("-d aiplatform", "-d bench_restore"))
    log(f"database: restored copy {out['restored_identical']}")

    # pgBackRest: a full backup by its unit, then the whole cluster restored beside.
    repo = lab.groups.get("backup", [None])[0]
    if repo:
        on(primary, f"{psql} -c 'CHECKPOINT' -c 'SELECT pg_switch_wal()'")
        t0 = time.monotonic()
        on(repo, "systemctl start pgbackrest-backup@full.service", timeout=7200)
        out["pgbackrest_backup_s"] = round(time.monotonic() - t0, 1)
        info = on(repo, "runuser -u postgres -- pgbackrest --output=json info")
        newest = json.loads(info)[0]["backup"][-1]
        out["pgbackrest_backup"] = {"label": newest["label"], "size": newest["info"]["size"],
                                    "repo_bytes": newest["info"]["repository"]["delta"]}
        restore_host = replicas[-1] if replicas else primary
        out["pgbackrest_restore_s"] = lab.playbook("playbooks/restore.yml", "-e", f"pgbackrest_restore_host={restore_host}")[0]
        out["pgbackrest_restored_identical"] = compare(restore_host, "runuser -u postgres -- psql -XAtq -p 5439 -d aiplatform")
        on(restore_host, "systemctl stop ai-platform-pitr", check=False)
        log(f"database: pgBackRest full backup {out['pgbackrest_backup_s']} s, restore {out['pgbackrest_restore_s']} s, "
            f"{out['pgbackrest_restored_identical']}")
    on(primary, f"{psql} -c 'DROP TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history' "
                f"-c 'DROP DATABASE bench_restore'")
    on(backup_host, f"rm -rf /var/backups/postgresql/{latest}")
    return out


def rows(res: dict) -> list[Row]:
    db = res.get(NAME)
    if not db:
        return []
    out = []
    where = (f"PostgreSQL {db['postgresql']}, primary {db['primary']} and replicas {', '.join(db['replicas'])}"
             f"{'; synchronous ' + db['synchronous_standby_names'] if db['synchronous_standby_names'] else ', asynchronous'}")
    for n, v in db["pgbench"]["lag"].items():
        out.append(Row(f"replay lag of {n} during {db['pgbench']['seconds']} s of pgbench ({db['pgbench']['clients']} clients, "
                       f"{db['pgbench']['tps']:.0f} tps; {where})", "p99 < 1 s",
                       f"p50 {v['seconds_p50']:.3f} s / {v['bytes_p50']} B, p99 {v['seconds_p99']:.3f} s / {v['bytes_p99']} B",
                       v["seconds_p99"] < 1))
    ok = all(t["identical"] for t in db["restored_identical"].values())
    if db.get("pgbackrest_backup_s") is not None:
        same = all(t["identical"] for t in db["pgbackrest_restored_identical"].values())
        b = db["pgbackrest_backup"]
        out.append(Row(f"pgBackRest full backup (its unit on the repository host) of a {db['database_bytes'] / 2**30:.2f} GiB "
                       "database", "a database ≥ 1 GB; duration reported",
                       f"{db['pgbackrest_backup_s']:.0f} s; {b['size'] / 2**30:.2f} GiB of data, {b['repo_bytes'] / 2**20:.0f} MiB "
                       "in the repository", db["database_bytes"] >= 1e9))
        out.append(Row("its restore beside the cluster (playbooks/restore.yml, the end of the archive) and row-for-row check",
                       "restored copy identical",
                       f"{db['pgbackrest_restore_s']:.0f} s; {'identical' if same else 'DIFFERENT'}: "
                       + ", ".join(f"{t} {v['rows']} rows" for t, v in db["pgbackrest_restored_identical"].items()), same))
    out.append(Row(f"logical backup (pg_dump by the backup service on {db['replicas'][0] if db['replicas'] else db['primary']}) of a "
                   f"{db['database_bytes'] / 2**30:.2f} GiB database (pgbench scale {db['scale']})", "a database ≥ 1 GB; duration reported",
                   f"{db['database_bytes'] / 1e9:.2f} GB; {db['backup_s']:.0f} s, dump {db['dump_bytes'] / 2**20:.0f} MiB",
                   db["database_bytes"] >= 1e9))
    out.append(Row("its restore (playbooks/restore_dump.yml into a new database) and row-for-row check", "restored copy identical",
                   f"{db['restore_playbook_s']:.0f} s; {'identical' if ok else 'DIFFERENT'}: "
                   + ", ".join(f"{t} {v['rows']} rows" for t, v in db["restored_identical"].items()), ok))
    return out
