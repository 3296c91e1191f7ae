"""What the monitoring and exporters roles promise, checked on the database scenario's hosts.

db-mon runs Prometheus, Alertmanager, Redis, Debian's nginx and the pgBackRest
repository; db-1, db-2 and db-3 run PostgreSQL under Patroni and etcd (after the
side effect any of them may lead), db-2 is the logical backup host. The alert
checks run from db-mon and act on the database hosts (windows are short in
molecule.yml).
"""

import json
import re
import time
import urllib.parse

import pytest
from conftest import ADDRESSES, DB_HOSTS, MON, leader, name, other, wait_for

PROM = LB = MON
DB_REPLICA = "db-2"  # the logical backup host
# GET a URL on the host itself (no curl in the lab images) and print the body.
GET = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"


def get(host, url):
    return host.check_output("python3 -c %s %s", GET, url)


def api(host, path):
    return json.loads(get(host, "http://127.0.0.1:9090/api/v1/" + path))["data"]


def firing(host, alertname):
    return [a for a in api(host, "alerts")["alerts"] if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


@pytest.fixture
def prom(host):
    if name(host) != PROM:
        pytest.skip("checked from the monitoring host")
    return host


# --- every host --------------------------------------------------------------------

def test_node_exporter_listens_on_the_private_address_only(host):
    sockets = [str(s) for s in host.socket.get_listening_sockets()]
    assert f"tcp://{ADDRESSES[name(host)]}:9100" in sockets
    assert "tcp://0.0.0.0:9100" not in sockets and "tcp://:::9100" not in sockets


# Measured on the Debian 12 lab hosts: node exporter 1.9, the others 1.2 (9.2 each
# without the drop-in); a little room for Debian 13's systemd.
MAX_EXPORTER_EXPOSURE = 2.2


def test_exporters_run_in_their_sandbox(host, exposure):
    units = host.check_output("systemctl list-units --type=service --state=active --no-legend --plain"
                              " 'prometheus-*-exporter.service' | awk '{print $1}'").split()
    expected = {"prometheus-node-exporter.service"} | (
        {"prometheus-postgres-exporter.service"} if name(host) in DB_HOSTS else
        {"prometheus-redis-exporter.service", "prometheus-nginx-exporter.service"})
    assert set(units) == expected
    for unit in units:
        assert_sandboxed(host, exposure, unit, MAX_EXPORTER_EXPOSURE)


def assert_sandboxed(host, exposure, unit, max_exposure):
    """The unit has the role's drop-in, an exposure within the bound, and its main
    process no capability and no_new_privs. Returns the main PID."""
    assert host.file(f"/etc/systemd/system/{unit.removesuffix('.service')}.service.d/hardening.conf").exists, unit
    assert exposure(unit) <= max_exposure, unit
    pid = host.check_output(f"systemctl show -p MainPID --value {unit}")
    status = host.file(f"/proc/{pid}/status").content_string
    assert int(re.search(r"^CapBnd:\s+([0-9a-f]+)", status, re.M).group(1), 16) == 0, unit
    assert re.search(r"^NoNewPrivs:\s+1", status, re.M), unit
    return pid


def test_certificate_metrics_are_written(host):
    f = host.file("/var/lib/prometheus/node-exporter/tls_certificates.prom")
    assert f.exists and f.mode == 0o644
    assert "tls_certificate_check_timestamp_seconds " in f.content_string
    if name(host) in DB_HOSTS:
        assert 'path="/etc/ai-platform/tls/ca.crt"' in f.content_string


def test_stub_status_is_served_on_loopback_only(host):
    if name(host) != LB:
        pytest.skip("load balancer check")
    assert "Active connections:" in get(host, "http://127.0.0.1:8081/stub_status")
    sockets = [str(s) for s in host.socket.get_listening_sockets()]
    assert "tcp://127.0.0.1:8081" in sockets
    assert not [s for s in sockets if s.endswith(":8081") and "127.0.0.1" not in s]


# --- Prometheus and Alertmanager -------------------------------------------------------

def test_prometheus_and_alertmanager_listen_on_loopback_only(prom):
    sockets = [str(s) for s in prom.socket.get_listening_sockets()]
    assert "tcp://127.0.0.1:9090" in sockets and "tcp://127.0.0.1:9093" in sockets
    assert not [s for s in sockets if s.endswith((":9090", ":9093", ":9094")) and "127.0.0.1" not in s]


# Measured on the Debian 13 lab host: 1.2 each (Prometheus's packaged unit 3.9,
# Alertmanager's 9.2, without the drop-ins).
MAX_MONITORING_EXPOSURE = 1.5


def test_prometheus_and_alertmanager_run_in_their_sandbox(prom, exposure):
    for unit, data in (("prometheus", "metrics2"), ("prometheus-alertmanager", "alertmanager")):
        pid = assert_sandboxed(prom, exposure, unit, MAX_MONITORING_EXPOSURE)
        # Only the data folder is writable: /etc/prometheus is not, even for root's files.
        mounts = prom.file(f"/proc/{pid}/mountinfo").content_string
        assert re.search(rf" /var/lib/prometheus/{data} \S+ rw,", mounts), unit
        assert re.search(r" / \S+ ro,", mounts), unit


def test_every_target_is_up(prom):
    expected = {("prometheus", PROM), ("alertmanager", PROM), ("node", PROM), ("redis", f"{PROM}:broker"),
                ("redis", f"{PROM}:cache"), ("nginx", LB)}
    expected |= {(job, h) for h in DB_HOSTS for job in ("node", "postgres", "patroni", "etcd")}

    def all_up():
        targets = api(prom, "targets")["activeTargets"]
        seen = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
        assert set(seen) == expected, seen
        return all(h == "up" for h in seen.values()) and seen

    wait_for("every target up", all_up, timeout=90)


def test_rules_are_loaded_with_annotations(prom):
    rules = [r for g in api(prom, "rules")["groups"] for r in g["rules"]]
    written = int(prom.check_output("cat /etc/prometheus/rules/*.yml | grep -c '^ *- alert:'"))
    assert len(rules) == written and written >= 28
    for r in rules:
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["name"]


def test_exporters_report_replication_redis_and_certificates(prom):
    def query(q):
        return api(prom, "query?query=" + urllib.parse.quote(q))["result"]

    wait_for("first scrapes", lambda: query("aiplatform_pg_replication_slot_active"), timeout=60)
    lead = leader(other(prom, "db-1"))
    replicas = [h for h in DB_HOSTS if h != lead]
    slots = query(f'aiplatform_pg_replication_slot_active{{instance="{lead}"}}')
    assert sorted((s["metric"]["slot_name"], s["value"][1]) for s in slots) == [(h.replace("-", "_"), "1") for h in replicas]
    for replica in replicas:
        assert query(f'aiplatform_pg_recovery_wal_receiver_streaming{{instance="{replica}"}}')[0]["value"][1] == "1"
    # Patroni: one primary, every member runs its PostgreSQL; etcd: every member sees a leader; the archive works.
    assert [r["metric"]["instance"] for r in query("patroni_primary == 1")] == [lead]
    assert {r["metric"]["instance"] for r in query("patroni_postgres_running == 1")} == set(DB_HOSTS)
    assert {r["metric"]["instance"] for r in query("etcd_server_has_leader == 1")} == set(DB_HOSTS)
    assert [r["metric"]["instance"] for r in query("aiplatform_pg_archiver_failing == 0")] == [lead]
    assert {r["metric"]["instance"] for r in query("redis_up == 1")} == {f"{PROM}:broker", f"{PROM}:cache"}
    assert [r["metric"]["instance"] for r in query("nginx_up == 1")] == [LB]
    assert query("nginx_connections_accepted > 0")
    units = query('node_systemd_unit_state{name="patroni@15-main.service", state="active"} == 1')
    assert {r["metric"]["instance"] for r in units} == set(DB_HOSTS)
    certs = query("tls_certificate_not_after_timestamp_seconds - time() > 300 * 86400")
    assert {r["metric"]["instance"] for r in certs} >= set(DB_HOSTS)


def test_alertmanager_runs_without_receivers(prom):
    prom.run_test("amtool check-config /etc/prometheus/alertmanager.yml")
    status = json.loads(get(prom, "http://127.0.0.1:9093/api/v2/status"))
    assert status["cluster"]["status"] == "disabled"


def test_a_failed_backup_fires_the_backup_alert(prom):
    db = other(prom, DB_REPLICA)
    metrics = "/var/lib/prometheus/node-exporter/postgresql_backup.prom"
    db.run_test("systemctl start postgresql-backup.service")
    assert "postgresql_backup_last_exit_status 0" in db.file(metrics).content_string
    # The same service, made to fail.
    dropin = "/run/systemd/system/postgresql-backup.service.d"
    db.run_test(f"mkdir -p {dropin} && printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\n' >{dropin}/fail.conf"
                " && systemctl daemon-reload")
    try:
        assert db.run("systemctl start postgresql-backup.service").rc != 0
        content = db.file(metrics).content_string
        assert "postgresql_backup_last_exit_status 1" in content
        assert "postgresql_backup_last_success_timestamp_seconds" in content  # kept from the good run
        alert = wait_for("BackupFailed firing", lambda: firing(prom, "BackupFailed"), timeout=60)
        assert alert[0]["labels"]["instance"] == DB_REPLICA
        # ... and Alertmanager shows it, with no receiver configured.
        wait_for("BackupFailed in Alertmanager", lambda: [
            a for a in json.loads(get(prom, "http://127.0.0.1:9093/api/v2/alerts"))
            if a["labels"]["alertname"] == "BackupFailed"], timeout=60)
    finally:
        db.run(f"rm -rf {dropin} && systemctl daemon-reload && systemctl reset-failed postgresql-backup.service")
    db.run_test("systemctl start postgresql-backup.service")
    assert "postgresql_backup_last_exit_status 0" in db.file(metrics).content_string


def test_a_failed_pgbackrest_run_fires_its_alert(prom):
    metrics = "/var/lib/prometheus/node-exporter/pgbackrest.prom"
    assert 'pgbackrest_run_last_exit_status{kind="full"} 0' in prom.file(metrics).content_string
    dropin = "/run/systemd/system/pgbackrest-backup@incr.service.d"
    prom.run_test(f"mkdir -p {dropin} && printf '[Service]\\nExecStartPre=\\nExecStart=\\nExecStart=/bin/false\\n' "
                  f">{dropin}/fail.conf && systemctl daemon-reload")
    try:
        assert prom.run("systemctl start pgbackrest-backup@incr.service").rc != 0
        content = prom.file(metrics).content_string
        assert 'pgbackrest_run_last_exit_status{kind="incr"} 1' in content
        assert 'pgbackrest_run_last_exit_status{kind="full"} 0' in content  # the other kinds kept
        alert = wait_for("PgbackrestBackupFailed firing", lambda: firing(prom, "PgbackrestBackupFailed"), timeout=90)
        assert alert[0]["labels"]["kind"] == "incr"
    finally:
        prom.run(f"rm -rf {dropin} && systemctl daemon-reload && systemctl reset-failed pgbackrest-backup@incr.service")
    prom.run_test("systemctl start pgbackrest-backup@incr.service")
    assert 'pgbackrest_run_last_exit_status{kind="incr"} 0' in prom.file(metrics).content_string
    wait_for("PgbackrestBackupFailed resolved", lambda: not firing(prom, "PgbackrestBackupFailed"), timeout=120)


def test_stopping_a_replica_fires_its_alerts(prom):
    lead = leader(other(prom, "db-1"))
    replica = next(h for h in DB_HOSTS if h != lead)
    db = other(prom, replica)
    started = time.monotonic()
    db.run_test("systemctl stop patroni@15-main.service")  # Patroni stops its PostgreSQL
    try:
        alert = wait_for("PostgresqlDown firing", lambda: [
            a for a in firing(prom, "PostgresqlDown") if a["labels"]["instance"] == replica], timeout=120)
        print(f"PostgresqlDown fired {time.monotonic() - started:.0f} s after the stop")
        assert alert
        wait_for("TargetDown of Patroni firing", lambda: [
            a for a in firing(prom, "TargetDown") if a["labels"]["job"] == "patroni" and a["labels"]["instance"] == replica],
            timeout=120)
    finally:
        db.run_test("systemctl start patroni@15-main.service")
    wait_for("alerts resolved", lambda: not [a for a in firing(prom, "PostgresqlDown") if a["labels"]["instance"] == replica],
             timeout=180)


def test_database_hosts_send_their_journals_to_the_collector(prom):
    def senders():
        out = prom.check_output("journalctl -D /var/log/journal/remote --field _HOSTNAME 2>/dev/null || true")
        return set(DB_HOSTS) <= set(out.split()) and out

    wait_for("journals of every database host on the collector", senders, timeout=60)
