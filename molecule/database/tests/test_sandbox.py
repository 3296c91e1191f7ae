"""The sandbox drop-in of patroni@.service (Debian 12, PostgreSQL 15): Patroni and the PostgreSQL it starts,
after the side effect's switchover, failovers and restarts: exposure, confinement, and the server features it
must leave alone (JIT, parallel query)."""
import re

from conftest import DATA_DIR, DB_HOSTS, UNIT, only

# Measured on a Debian 12 lab host on 4 Dec 2026: 1.3 with the drop-in, 9.2 for the packaged unit alone.
MAX_EXPOSURE = 1.3


def sql(host, *queries):
    cmd = " ".join(f"-c {q!r}" for q in queries)
    return host.check_output(f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d postgres {cmd}")


def test_exposure(host, exposure):
    only(host, *DB_HOSTS)
    assert exposure(UNIT) <= MAX_EXPOSURE


def test_every_process_runs_as_postgres_without_capabilities(host):
    only(host, *DB_HOSTS)
    pids = [p for p, unit in (line.split() for line in host.check_output("ps -eo pid=,unit=").splitlines())
            if unit == UNIT]
    postmaster = host.file(f"{DATA_DIR}/postmaster.pid").content_string.split()[0]
    assert postmaster in pids  # PostgreSQL runs inside Patroni's unit
    assert len(pids) >= 5  # Patroni, the postmaster, checkpointer, ...
    for pid in pids:
        status = host.file(f"/proc/{pid}/status").content_string
        assert re.search(r"^Uid:\s+(\d+)", status, re.M).group(1) == str(host.user("postgres").uid)
        assert int(re.search(r"^CapBnd:\s+([0-9a-f]+)", status, re.M).group(1), 16) == 0
        assert re.search(r"^NoNewPrivs:\s+1", status, re.M)


def test_system_read_only_data_writable(host):
    only(host, *DB_HOSTS)
    # The server itself writes (COPY TO a file): a folder that belongs to postgres outside the unit's
    # writable paths is refused by the sandbox alone; its data directory stays writable.
    host.run_expect([0], "install -d -o postgres -g postgres -m 0700 /srv/sandbox-probe")
    conf_probe, data_probe = "/srv/sandbox-probe/file", f"{DATA_DIR}/sandbox-probe"
    refused = host.run(f"runuser -u postgres -- psql -XAtq -d postgres -c \"COPY (SELECT 1) TO '{conf_probe}'\"")
    assert refused.rc != 0 and "Read-only file system" in refused.stderr, refused.stderr
    assert not host.file(conf_probe).exists
    host.run_expect([0], "rm -r /srv/sandbox-probe")
    sql(host, f"COPY (SELECT 1) TO '{data_probe}'")
    host.run_expect([0], f"rm {data_probe}")


def test_jit_works(host):
    only(host, *DB_HOSTS)
    # LLVM's JIT needs memory it writes and then executes: why MemoryDenyWriteExecute stays off.
    assert sql(host, "SELECT pg_jit_available()") == "t"
    out = sql(host, "SET jit_above_cost = 0", "SET jit_optimize_above_cost = 0", "SET jit_inline_above_cost = 0",
              "EXPLAIN (ANALYZE, FORMAT TEXT) SELECT sum(g * 2) FROM generate_series(1, 10000) g")
    assert re.search(r"^JIT:", out, re.M), out
    assert "Functions:" in out


def test_parallel_query_works(host):
    only(host, *DB_HOSTS)
    # Parallel workers share memory through /dev/shm (dynamic_shared_memory_type posix).
    out = sql(host, "SET force_parallel_mode = on", "SET parallel_setup_cost = 0",
              "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) SELECT count(*) FROM pg_class")
    assert re.search(r"Workers Launched: [1-9]", out), out


def test_rejoin_nudge_runs_everywhere_and_writes_nothing_while_every_member_streams(host):
    """patroni-rejoin-nudge (roles/postgresql/README.md): its timer on every member, sandboxed; a run on a
    cluster whose members all stream exits cleanly and logs no write (only a member stuck starting, a rewound
    former leader on an idle cluster, makes the leader commit its one record; only a replica stuck past the fork
    makes that replica stop its PostgreSQL)."""
    only(host, *DB_HOSTS)
    assert host.service("patroni-rejoin-nudge.timer").is_enabled
    assert host.service("patroni-rejoin-nudge.timer").is_running
    since = host.check_output("date -u '+%Y-%m-%d %H:%M:%S'")
    host.run_expect([0], "systemctl start patroni-rejoin-nudge.service")
    assert host.check_output("systemctl show -p Result --value patroni-rejoin-nudge.service") == "success"
    log = host.check_output(f"journalctl -t patroni-rejoin-nudge --since '{since}' --no-pager -o cat")
    assert "committed one WAL record" not in log and "did not answer" not in log, log
    assert "Stopping its PostgreSQL" not in log and "pg_ctl stop failed" not in log, log
