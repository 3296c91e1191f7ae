"""After switchover, failover and rejoin: one primary, two replicas streaming from it, no committed marker lost."""
import time

import pytest

HOSTS = {"pg-fo-1": "10.90.3.11", "pg-fo-2": "10.90.3.12", "pg-fo-3": "10.90.3.13"}
DATA_DIR = "/var/lib/postgresql/17/main"
KEPT = ["after-failover", "after-rejoin", "after-switchover", "before-switchover"]


def name(host):
    return host.backend.get_hostname()


def sql(host, query, db="postgres"):
    return host.check_output("runuser -u postgres -- psql -XAt -d %s -c %s", db, query)


def other(host, hostname):
    b = host.backend
    return host.get_host(f"ansible://{hostname}", ansible_inventory=b.ansible_inventory, force_ansible=b.force_ansible)


@pytest.fixture
def primary(host):
    """The one host that is not in recovery."""
    primaries = [h for h in HOSTS if sql(other(host, h), "SELECT pg_is_in_recovery()") == "f"]
    assert len(primaries) == 1, primaries
    return primaries[0]


def test_failed_primary_is_not_the_primary(primary):
    # pg-fo-2 became primary by the switchover and lost it by the failover.
    assert primary in ("pg-fo-1", "pg-fo-3")


def test_new_primary_streams_to_both_others_over_tls(host, primary):
    if name(host) != primary:
        pytest.skip("primary only")
    rows = sql(host, "SELECT r.application_name, r.state, s.ssl FROM pg_stat_replication r "
                     "JOIN pg_stat_ssl s USING (pid) ORDER BY 1")
    assert rows.splitlines() == [f"{h}|streaming|t" for h in sorted(HOSTS) if h != primary]
    slots = sql(host, "SELECT slot_name || ' ' || active FROM pg_replication_slots ORDER BY 1")
    assert slots.splitlines() == [f"{h.replace('-', '_')} true" for h in sorted(HOSTS) if h != primary]
    # Two promotions: timeline 3.
    assert sql(host, "SELECT timeline_id FROM pg_control_checkpoint()") == "3"


def test_replicas_follow_the_new_primary(host, primary):
    if name(host) == primary:
        pytest.skip("replicas only")
    assert sql(host, "SELECT pg_is_in_recovery()") == "t"
    assert sql(host, "SELECT status, sender_host FROM pg_stat_wal_receiver") == f"streaming|{HOSTS[primary]}"
    conf = host.file("/etc/postgresql/17/main/conf.d/60-ai-platform.conf").content_string
    assert f"host={HOSTS[primary]} " in conf
    assert sql(host, "SELECT count(*) FROM pg_replication_slots") == "0"


def test_writes_succeed_on_the_new_primary_and_reach_every_replica(host, primary):
    p = other(host, primary)
    token = f"verify-{name(host)}-{time.time_ns()}"
    sql(p, f"INSERT INTO failover_marker (step, primary_host) VALUES ('{token}', '{primary}')", db="aiplatform")
    for _ in range(40):
        if sql(host, f"SELECT count(*) FROM failover_marker WHERE step = '{token}'", db="aiplatform") == "1":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{token} did not reach {name(host)}")


def test_every_committed_marker_is_everywhere_and_the_partitioned_write_is_gone(host, primary):
    steps = sql(host, "SELECT step FROM failover_marker WHERE step NOT LIKE 'verify-%' ORDER BY 1", db="aiplatform")
    assert steps.splitlines() == KEPT


def test_old_primary_was_rewound_not_cloned(host):
    if name(host) != "pg-fo-2":
        pytest.skip("the old primary only")
    recorded = host.file("/root/molecule-datadir-identity").content_string.strip()
    assert host.check_output(f"stat -c '%i %W' {DATA_DIR}/PG_VERSION") == recorded
    assert host.file(f"{DATA_DIR}/standby.signal").exists


def test_no_failed_units(host):
    assert host.run("systemctl --failed --no-legend --plain").stdout.strip() == ""
