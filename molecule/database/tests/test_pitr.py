"""Continuous archiving and point-in-time recovery with pgBackRest: the repository on db-mon, the WAL of every
member archived there, backups on timers with retention, and the side effect's two restores beside the running
cluster - to a time (rows A, not B, the dropped table back) on db-3 and to a named restore point (A and B, not C)
on db-2."""
import json

from conftest import DB_HOSTS, MON, only, other, sql, writable_leader
from test_failover import facts

def test_archive_works_on_the_leader(host):
    only(host, *DB_HOSTS)
    p = other(host, writable_leader(host))
    assert sql(p, "SHOW archive_mode") == "on"
    assert sql(p, "SHOW archive_command") == "/usr/local/lib/ai-platform/pgbackrest-archive-push main %p"
    assert sql(p, "SELECT failed_count = 0 OR last_archived_time > last_failed_time FROM pg_stat_archiver") == "t"
    # Nothing waits for the archive on any member.
    waiting = host.check_output("ls /var/lib/postgresql/15/main/pg_wal/archive_status/ | grep -c '[.]ready$' || true")
    assert int(waiting or 0) <= 2, waiting


def test_repository_holds_a_valid_stanza_with_backups(host):
    only(host, MON)
    info = json.loads(host.check_output("runuser -u postgres -- pgbackrest --output=json info"))
    stanza = {s["name"]: s for s in info}["main"]
    assert stanza["status"]["code"] == 0, stanza["status"]
    assert [b["type"] for b in stanza["backup"]][0] == "full"
    repo = host.file("/var/lib/pgbackrest")
    assert (repo.user, repo.mode) == ("postgres", 0o750)
    conf = host.file("/etc/pgbackrest/pgbackrest.conf")
    assert (conf.user, conf.group, conf.mode) == ("root", "postgres", 0o640)


def test_backup_timers_and_metrics(host):
    only(host, MON)
    for unit in ("pgbackrest-backup@full", "pgbackrest-backup@diff", "pgbackrest-backup@incr", "pgbackrest-verify"):
        timer = host.service(f"{unit}.timer")
        assert timer.is_enabled and timer.is_running, unit
    prom = host.file("/var/lib/prometheus/node-exporter/pgbackrest.prom").content_string
    assert 'pgbackrest_run_last_exit_status{kind="full"} 0' in prom
    assert 'pgbackrest_stanza_status{stanza="main"} 0' in prom
    assert 'pgbackrest_backup_last_timestamp_seconds{stanza="main",type="full"}' in prom


def test_tls_servers_listen_on_private_addresses(host):
    listening = host.check_output("ss -Hltn 'sport = :8432' | awk '{print $4}'").split()
    assert len(listening) == 1 and not listening[0].startswith(("0.0.0.0", "*", "[::]")), listening
    assert host.service("pgbackrest").is_running


def test_restore_to_a_time_keeps_a_and_loses_b():
    r, t = facts("restored-time"), facts("pitr")["time"]
    print(r, t)
    assert r["in_recovery"] == "f"  # recovered to the target and promoted
    assert r["batches"] == "A100"
    assert r["victim_rows"] == "10"  # the dropped table is back
    assert r["rows_a_md5"] == r["source_rows_a_md5"]  # rows A row for row
    assert r["newest_row"] < t.removesuffix("+00")


def test_restore_to_a_named_point_keeps_a_and_b_and_loses_c():
    r = facts("restored-name")
    print(r)
    assert r["in_recovery"] == "f"
    assert r["batches"] == "A100,B50"
    assert r["victim_rows"] == "-1"  # dropped before the restore point
    assert r["rows_a_md5"] == r["source_rows_a_md5"]
    assert facts("pitr")["restore_point"]["name"] == "molecule-before-c"


def test_restore_points_are_recorded_beside_the_repository(host):
    """Each restore point the role made left its record on the repository host, and a backup was taken after
    each before it was restored: pgBackRest alone would have started from that one, which ended after the point
    (PostgreSQL then stops), so the restores above prove the choice of the backup before it."""
    only(host, MON)
    folder = host.file("/var/lib/pgbackrest-restore-points")
    assert (folder.user, folder.mode) == ("postgres", 0o750)
    info = json.loads(host.check_output("runuser -u postgres -- pgbackrest --output=json info"))
    backups = {s["name"]: s for s in info}["main"]["backup"]
    for name in ("molecule-before-c", "molecule-in-place"):
        f = host.file(f"/var/lib/pgbackrest-restore-points/{name}.json")
        assert (f.user, f.mode) == ("postgres", 0o640), name
        record = json.loads(f.content_string)
        assert record["name"] == name and "/" in record["lsn"], record
        assert any(b["timestamp"]["start"] > float(record["epoch"]) for b in backups), (name, backups)


def test_restored_clusters_listen_on_loopback_only_without_archiving():
    for kind in ("time", "name"):
        r = facts(f"restored-{kind}")
        assert [line.split()[3] for line in r["listening"]] == ["127.0.0.1:5439"], r
        assert r["archive_mode"] == "off", r
