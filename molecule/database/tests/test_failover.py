"""After switchover, partition and failover, rejoin and the switch back: no committed marker lost, the write
made on the partitioned old primary gone, and the rejoined host rewound rather than cloned."""
import time

import pytest
from conftest import DATA_DIR, DB_HOSTS, PRIMARY, name, only, other, sql

KEPT = ["after-failover", "after-rejoin", "after-switchover", "before-switchover"]
PARTITIONED = "db-2"  # primary after the switchover, then cut off


def test_cluster_went_through_the_promotions(host):
    only(host, PRIMARY)
    # Switchover, failover and, when the failover chose db-3, the switch back.
    assert int(sql(host, "SELECT timeline_id FROM pg_control_checkpoint()")) >= 3
    hosts = sql(host, "SELECT step || ' ' || primary_host FROM failover_marker WHERE step NOT LIKE 'verify-%' ORDER BY at",
                db="aiplatform").splitlines()
    assert hosts[:2] == ["before-switchover db-1", "after-switchover db-2"], hosts
    # The failover promoted a host other than the partitioned one.
    assert hosts[2].split()[1] in ("db-1", "db-3"), hosts


def test_writes_succeed_on_the_primary_and_reach_every_replica(host):
    only(host, *DB_HOSTS)
    p = other(host, PRIMARY)
    token = f"verify-{name(host)}-{time.time_ns()}"
    sql(p, f"INSERT INTO failover_marker (step, primary_host) VALUES ('{token}', '{PRIMARY}')", db="aiplatform")
    for _ in range(40):
        if sql(host, f"SELECT count(*) FROM failover_marker WHERE step = '{token}'", db="aiplatform") == "1":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{token} did not reach {name(host)}")


def test_every_committed_marker_is_everywhere_and_the_partitioned_write_is_gone(host):
    only(host, *DB_HOSTS)
    steps = sql(host, "SELECT step FROM failover_marker WHERE step NOT LIKE 'verify-%' ORDER BY 1", db="aiplatform")
    assert steps.splitlines() == KEPT


def test_old_primary_was_rewound_not_cloned(host):
    only(host, PARTITIONED)
    recorded = host.file("/root/molecule-datadir-identity").content_string.strip()
    assert host.check_output(f"stat -c '%i %W' {DATA_DIR}/PG_VERSION") == recorded
    assert host.file(f"{DATA_DIR}/standby.signal").exists
