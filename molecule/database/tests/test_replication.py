"""Streaming replication, TLS, access rules and logical backups, after the side effect's switchover,
failovers, re-clone and rolling restart: any member may lead now, so the tests ask Patroni which one does."""
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import (ADDRESSES, APP_HOST, BACKUP_HOST, CONF_DIR, DATA_DIR, DB_HOSTS, PG_VERSION, leader, name, only,
                      other, sql)

CA = "/etc/ai-platform/tls/ca.crt"
APP_PASSWORD = "app-secret-for-molecule-only"


def test_listens_on_loopback_and_private_address_only(host):
    only(host, *DB_HOSTS)
    listening = host.check_output("ss -Hltn 'sport = :5432' | awk '{print $4}'").split()
    own = ADDRESSES[name(host)]
    assert sorted(listening) == sorted(["127.0.0.1:5432", f"{own}:5432"] + (["[::1]:5432"] if "[::1]:5432" in listening else []))
    # Patroni's REST API: the private address only, TLS.
    api = host.check_output("ss -Hltn 'sport = :8008' | awk '{print $4}'").split()
    assert api == [f"{own}:8008"], api


def test_data_checksums_and_scram(host):
    only(host, *DB_HOSTS)
    assert sql(host, "SHOW data_checksums") == "on"
    assert sql(host, "SHOW password_encryption") == "scram-sha-256"
    hashes = sql(host, "SELECT rolname || ' ' || left(rolpassword, 14) FROM pg_authid WHERE rolpassword IS NOT NULL")
    roles = dict(line.split(" ", 1) for line in hashes.splitlines())
    assert set(roles) == {"postgres", "replicator", "aiplatform", "prometheus_exporter"}  # the last: exporters role
    assert set(roles.values()) == {"SCRAM-SHA-256$"}


def test_pg_hba_generated_tls_and_scram_only(host):
    only(host, *DB_HOSTS)
    f = host.file(f"{CONF_DIR}/pg_hba.conf")
    assert (f.user, f.group, f.mode) == ("postgres", "postgres", 0o640)
    rules = [line.split() for line in f.content_string.splitlines() if line.strip() and not line.startswith("#")]
    for rule in rules:
        if rule[0] == "local":
            assert rule[-1] in ("peer", "scram-sha-256")
        elif rule[0] == "host":
            assert rule[3] in ("127.0.0.1/32", "::1/128") and rule[4] == "scram-sha-256"
        else:
            assert rule[0] == "hostssl" and rule[4] == "scram-sha-256", rule
    # The server parsed every line.
    assert sql(host, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
    app_rules = [r for r in rules if r[1] == "aiplatform"]
    assert app_rules == [["hostssl", "aiplatform", "aiplatform", f"{ADDRESSES[APP_HOST]}/32", "scram-sha-256", "#", APP_HOST]]


def test_tls_key_private(host):
    only(host, *DB_HOSTS)
    key = host.file("/etc/ai-platform/tls/postgresql.key")
    assert (key.user, key.mode) == ("postgres", 0o600)
    pgpass = host.file("/var/lib/postgresql/.pgpass")
    assert (pgpass.user, pgpass.mode) == ("postgres", 0o600)


def test_leader_streams_to_every_replica_over_tls(host):
    only(host, *DB_HOSTS)
    if name(host) != leader(host):
        pytest.skip("checked on the leader")
    replicas = {h: ADDRESSES[h] for h in DB_HOSTS if h != name(host)}
    assert sql(host, "SELECT pg_is_in_recovery()") == "f"
    rows = sql(host, "SELECT r.application_name, r.state, s.ssl, r.client_addr "
                     "FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) ORDER BY 1")
    assert rows.splitlines() == [f"{h}|streaming|t|{a}" for h, a in sorted(replicas.items())]
    # Patroni's synchronous mode: one of them confirms every commit.
    sync = sql(host, "SELECT application_name FROM pg_stat_replication WHERE sync_state = 'sync'").split()
    assert len(sync) == 1 and sync[0] in replicas, sync
    assert sql(host, "SHOW synchronous_standby_names") == f'"{sync[0]}"'


def test_one_active_slot_per_replica(host):
    only(host, *DB_HOSTS)
    if name(host) != leader(host):
        pytest.skip("checked on the leader")
    slots = sql(host, "SELECT slot_name, slot_type, active FROM pg_replication_slots ORDER BY 1")
    assert slots.splitlines() == [f"{h.replace('-', '_')}|physical|t" for h in DB_HOSTS if h != name(host)]
    assert sql(host, "SHOW max_slot_wal_keep_size") == "4GB"


def test_replica_in_recovery_streaming_from_the_leader(host):
    only(host, *DB_HOSTS)
    lead = leader(host)
    if name(host) == lead:
        pytest.skip("a replica's check")
    assert sql(host, "SELECT pg_is_in_recovery()") == "t"
    assert sql(host, "SELECT status, sender_host FROM pg_stat_wal_receiver") == f"streaming|{ADDRESSES[lead]}"
    assert host.file(f"{DATA_DIR}/standby.signal").exists
    # Nothing left over that would hold back WAL here.
    assert sql(host, "SELECT count(*) FROM pg_replication_slots") == "0"


def test_same_system_identifier_everywhere(host):
    only(host, *DB_HOSTS)
    sysid = sql(host, "SELECT system_identifier FROM pg_control_system()")
    assert sysid == sql(other(host, leader(host)), "SELECT system_identifier FROM pg_control_system()")


def test_row_written_on_the_leader_is_visible_on_replica(host):
    only(host, *DB_HOSTS)
    if name(host) == leader(host):
        pytest.skip("a replica's check")
    primary = other(host, leader(host))
    token = str(uuid.uuid4())
    sql(primary, "CREATE TABLE IF NOT EXISTS molecule_probe (token text PRIMARY KEY, at timestamptz DEFAULT now())")
    sql(primary, f"INSERT INTO molecule_probe (token) VALUES ('{token}')")
    for _ in range(30):
        if sql(host, f"SELECT count(*) FROM molecule_probe WHERE token = '{token}'") == "1":
            return
        time.sleep(0.5)
    pytest.fail(f"row {token} did not reach {name(host)}")


def test_writes_refused_on_replica(host):
    only(host, *DB_HOSTS)
    if name(host) == leader(host):
        pytest.skip("a replica's check")
    result = host.run("runuser -u postgres -- psql -XAt -c 'CREATE TABLE refused (id int)'")
    assert result.rc != 0
    assert "read-only transaction" in result.stderr


def test_app_host_connects_over_verified_tls(host):
    only(host, APP_HOST)
    conn = f"host={ADDRESSES[leader(host)]} dbname=aiplatform user=aiplatform sslmode=verify-full sslrootcert={CA}"
    out = host.check_output(f"PGPASSWORD={APP_PASSWORD} psql -XAt '{conn}' "
                            "-c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'")
    assert out == "t"
    plain = host.run(f"PGPASSWORD={APP_PASSWORD} psql -XAt "
                     f"'host={ADDRESSES[leader(host)]} dbname=aiplatform user=aiplatform sslmode=disable' -c 'SELECT 1'")
    assert plain.rc != 0 and "no encryption" in plain.stderr


def test_other_hosts_cannot_reach_the_app_database(host):
    only(host, BACKUP_HOST)
    conn = f"host={ADDRESSES[leader(host)]} dbname=aiplatform user=aiplatform sslmode=verify-full sslrootcert={CA}"
    result = host.run(f"PGPASSWORD={APP_PASSWORD} psql -XAt '{conn}' -c 'SELECT 1'")
    assert result.rc != 0 and "no pg_hba.conf entry" in result.stderr


def test_backup_timer_only_on_backup_host(host):
    only(host, *DB_HOSTS)
    timer = host.service("postgresql-backup.timer")
    if name(host) == BACKUP_HOST:
        assert timer.is_enabled and timer.is_running
        unit = host.file("/etc/systemd/system/postgresql-backup.timer").content_string
        assert "Persistent=true" in unit and "RandomizedDelaySec=1h" in unit and "OnCalendar=daily" in unit
    else:
        assert not host.file("/etc/systemd/system/postgresql-backup.timer").exists


def test_backup_set_complete_and_private(host):
    only(host, BACKUP_HOST)
    root = host.file("/var/backups/postgresql")
    assert (root.user, root.mode) == ("postgres", 0o700)
    sets = host.check_output("ls /var/backups/postgresql").split()
    assert sets, "no backup set"
    latest = f"/var/backups/postgresql/{sorted(sets)[-1]}"
    host.check_output(f"cd {latest} && sha256sum --check --quiet SHA256SUMS")
    dump = host.file(f"{latest}/aiplatform.dump")
    assert (dump.user, dump.mode) == ("postgres", 0o600)
    assert "pgbench_accounts" in host.check_output(f"/usr/lib/postgresql/{PG_VERSION}/bin/pg_restore --list {latest}/aiplatform.dump")
    assert "CREATE ROLE aiplatform" in host.check_output(f"zcat {latest}/globals.sql.gz")
    assert "backup set" in host.check_output("journalctl -u postgresql-backup.service --no-pager -q")


def test_restored_database_matches_source(host):
    only(host, *DB_HOSTS)
    if name(host) != leader(host):
        pytest.skip("checked on the leader")
    for table, key in (("pgbench_accounts", "aid"), ("pgbench_branches", "bid"), ("pgbench_tellers", "tid"), ("marker", "id")):
        q = f"SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY {key})) FROM {table} t"
        source = sql(host, q, db="aiplatform")
        assert source.startswith(("100000 ", "1 ", "10 ", "2 ")), source
        assert sql(host, q, db="restore_check") == source, table
    assert sql(host, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'restore_check'") == "aiplatform"
    # The second restore replaced restore_check and kept the first one aside, still complete.
    aside = sql(host, "SELECT datname FROM pg_database WHERE datname LIKE 'restore_check_pre_%'").split()
    assert len(aside) == 1, aside
    assert sql(host, "SELECT count(*) FROM pgbench_accounts", db=aside[0]) == "100000"


def test_restore_refuses_to_replace_the_live_database():
    """playbooks/restore_dump.yml into the live database without both guard variables fails, changing nothing."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        pytest.skip("needs Molecule's inventory")
    repo = Path(os.environ.get("AIPL_REPO", Path(__file__).resolve().parents[3]))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(repo / "roles"), ANSIBLE_NOCOLOR="1")
    run = subprocess.run(
        ["ansible-playbook", "-i", inventory, str(repo / "playbooks/restore_dump.yml"),
         "-e", "postgresql_restore_database=aiplatform", "-e", "postgresql_restore_replace=true"],
        capture_output=True, text=True, env=env, cwd=repo, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "database aiplatform exists on db-" in out and "(a live database of the application)" in out, out
    assert "-e postgresql_restore_confirm=aiplatform" in out, out
    assert "changed=0" in out and "changed=1" not in out, out


def test_failed_backup_leaves_the_unit_failed(host):
    only(host, BACKUP_HOST)
    dropin = "/run/systemd/system/postgresql-backup.service.d"
    host.check_output(f"mkdir -p {dropin} && printf 'BACKUP_DATABASES=no_such_db\\n' > /run/molecule-bad-backup.env")
    host.check_output(f"printf '[Service]\\nEnvironmentFile=/run/molecule-bad-backup.env\\n' > {dropin}/bad.conf")
    try:
        host.check_output("systemctl daemon-reload")
        assert host.run("systemctl start postgresql-backup.service").rc != 0
        assert "postgresql-backup.service" in host.check_output("systemctl --failed --no-legend --plain")
        assert not host.run("ls -d /var/backups/postgresql/.partial-* 2>/dev/null").stdout
    finally:
        host.run(f"rm -rf {dropin} /run/molecule-bad-backup.env && systemctl daemon-reload "
                 "&& systemctl reset-failed postgresql-backup.service")


def test_no_failed_units(host):
    assert host.run("systemctl --failed --no-legend --plain").stdout.strip() == ""
