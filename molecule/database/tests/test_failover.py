"""What the side effect did to the cluster under Patroni: switchover, a partition of the leader (fencing and
an automatic failover), the leader powered off, the next leader's PostgreSQL killed, a replica cloned again and a
restart-needing setting rolled out. No committed marker lost, the fenced writes gone, every member back by itself."""
import json
import os
import time
from pathlib import Path

import pytest
from conftest import DATA_DIR, DB_HOSTS, cluster, leader, name, only, other, sql, writable_leader

# Committed on the leader of the moment, so on every member at the end; "after-in-place-point" was
# written after the restore point that the last step restored the cluster to, in place.
KEPT = ["after-converge", "after-failover", "after-poweroff", "after-sigkill", "after-switchover"]
TTL = 15  # postgresql_patroni_ttl (the role's default)


def facts(kind):
    d = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not d:
        pytest.skip("needs Molecule's ephemeral directory")
    return json.loads(Path(d, f"database-{kind}.json").read_text())


def test_patroni_runs_every_member_and_one_leads(host):
    only(host, *DB_HOSTS)
    assert host.service("patroni@15-main").is_running
    assert host.service("patroni@15-main").is_enabled
    members = cluster(host)
    assert sorted(members) == list(DB_HOSTS)
    assert [m for m, r in members.items() if r["Role"] == "Leader"] == [leader(host)]
    for m, r in members.items():
        assert r["State"] in ("running", "streaming"), members
    # The distribution's unit does not run the cluster (Patroni does) and does not start it at boot.
    assert not host.service("postgresql@15-main").is_running
    assert host.file("/etc/postgresql/15/main/start.conf").content_string.strip() == "manual"


def test_etcd_members_run_with_pre_vote(host):
    """A member back from a partition must not depose the store's leader (the partition test's heal)."""
    only(host, *DB_HOSTS)
    pid = host.check_output("systemctl show -p MainPID --value etcd")
    env = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert "ETCD_PRE_VOTE=true" in env.splitlines(), env


def test_every_committed_marker_is_everywhere_and_the_fenced_writes_are_gone(host):
    only(host, *DB_HOSTS)
    steps = sql(host, "SELECT step FROM failover_marker WHERE step NOT LIKE 'verify-%' ORDER BY 1", db="aiplatform")
    assert steps.splitlines() == KEPT
    assert sql(host, "SELECT to_regclass('fence_probe') IS NULL", db="aiplatform") == "t"


def test_the_isolated_leader_stopped_taking_writes_within_the_ttl():
    f = facts("partition")
    print(f)
    assert f["first_write_rc"] == 0, f  # before Patroni noticed, the isolated leader still wrote (locally)
    assert f["probe_rc"] != 0, f         # then it refused
    assert f["refused_after_s"] <= TTL, f
    assert f["after_ttl_rc"] != 0, f     # and after the TTL, a write on it fails
    # Refused as a read-only server, or while it restarts as one (shutting down, starting up).
    assert any(why in f["after_ttl_stderr"] for why in (
        "read-only", "could not connect", "terminat", "recovery", "shutting down", "starting up")), f
    assert f["new_leader"] in ("db-1", "db-3"), f


def test_members_came_back_by_themselves():
    p, f = facts("partition"), facts("faults")
    print(p, f)
    # The new leader sat idle past a WAL segment switch before db-2 came back (the side effect):
    # the rewound db-2 finishes its recovery only after the leader's next write, which only its
    # rejoin nudge makes (nudge_log: what the nudge wrote, for the record).
    assert p["rejoined_after_s"] <= 60, p
    assert f["writes_resumed_after_s"] <= 60, f
    assert f["writes_resumed_after_kill_s"] <= 60, f


def test_the_partitioned_leader_was_rewound_not_cloned(host):
    only(host, "db-2")
    if facts("reclone")["host"] == "db-2":
        pytest.skip("db-2 was cloned on purpose later")
    recorded = host.file("/root/molecule-datadir-identity").content_string.strip()
    assert facts("identity")["db-2"] == recorded  # read before the in-place restore cloned the replicas


def test_a_replica_stuck_past_the_fork_was_stopped_by_the_nudge_and_rewound():
    """side_effect_stuck.yml: B replayed past the point where A's timeline forked off, patroni-rejoin-nudge on
    B stopped its PostgreSQL, Patroni rewound it, and it streams from A again (the side effect waited for that)."""
    f = facts("stuck")
    print(f)
    # The set-up worked: pg_rewind found B's WAL diverged from A's (B held WAL past the fork).
    assert any("servers diverged at WAL location" in line for line in f["rewound"]), f
    assert any("replayed past the fork" in line for line in f["nudge"]), f
    assert any("pg_rewind exit code=0" in line for line in f["rewound"]), f


def test_pg_rejoin_cloned_the_member_again():
    f = facts("reclone")
    assert facts("identity")[f["host"]] != f["before"]


def test_the_in_place_restore_took_the_cluster_back_to_the_restore_point(host):
    only(host, *DB_HOSTS)
    assert sql(host, "SELECT count(*) FROM failover_marker WHERE step = 'after-in-place-point'", db="aiplatform") == "0"
    # The inventory's primary leads the restored cluster; the others were cloned from it.
    assert leader(host) == "db-1"
    if name(host) != "db-1":
        assert host.check_output(f"stat -c '%i %W' {DATA_DIR}/PG_VERSION") != facts("identity")[name(host)]
        assert sql(host, "SELECT pg_is_in_recovery()") == "t"


def test_a_restart_setting_rolled_out_replicas_first_then_a_switchover():
    f = facts("restart")
    print(f)
    assert set(f["max_wal_senders_after"].values()) == {str(f["max_wal_senders"])}, f
    assert f["pending_after"] == [], f
    before, after = f["started_before"], f["started_after"]
    assert all(float(after[h]) > float(before[h]) for h in DB_HOSTS), f
    old = f["leader_before"]
    assert f["leader_after"] != old, f  # the leader handed over instead of restarting under the writers
    replicas = [h for h in DB_HOSTS if h != old]
    # One member at a time: the replicas, then the former leader (restarted by the switchover).
    assert max(float(after[h]) for h in replicas) < float(after[old]), f
    assert abs(float(after[replicas[0]]) - float(after[replicas[1]])) > 1, f


def test_writes_on_the_leader_reach_every_replica(host):
    only(host, *DB_HOSTS)
    p = other(host, writable_leader(host))
    token = f"verify-{name(host)}-{time.time_ns()}"
    sql(p, f"INSERT INTO failover_marker (step, primary_host) VALUES ('{token}', '{name(p)}')", db="aiplatform")
    for _ in range(40):
        if sql(host, f"SELECT count(*) FROM failover_marker WHERE step = '{token}'", db="aiplatform") == "1":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{token} did not reach {name(host)}")
