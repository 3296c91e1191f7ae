"""What the redis role promises, checked on the converged lab hosts.

redis-a and redis-b hold the data (redis-a is the bootstrap primary) and run a
sentinel each; redis-app (group app) is the client that redis_allowed_clients
lets in and runs the third sentinel. The Molecule controller, at the lab
namespace's gateway, is the host outside every list. Cluster-wide checks run
once (from redis-app); the failover test powers a host off and comes last.
"""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import testinfra

SERVERS = {"redis-a": "10.90.4.12", "redis-b": "10.90.4.13"}
SENTINELS = {**SERVERS, "redis-app": "10.90.4.20"}
APP_HOST = "redis-app"
# Test-only secrets, the same as in molecule.yml.
ADMIN_PASSWORD = "molecule-admin-password-0123"
APP_PASSWORD = "molecule-app-password-0123456"
APP_PREVIOUS_PASSWORD = "molecule-app-previous-password-01"
REPLICATION_PASSWORD = "molecule-replication-password-01"
SENTINEL_PASSWORD = "molecule-sentinel-password-0123"
BROKER, CACHE, SENTINEL = 6379, 6380, 26379
PORTS = {"broker": BROKER, "cache": CACHE}
REPO = Path(os.environ.get("AIPL_REPO", Path(__file__).resolve().parents[5]))
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")


# A minimal Redis client for checks that must not depend on redis-cli: sends each
# argument as one command, prints one reply line per command, or "ERROR
# <exception>" when no connection could be made.
RESP = r"""
import socket, sys
addr, port, *commands = sys.argv[1:]
try:
    s = socket.create_connection((addr, int(port)), timeout=5)
except OSError as e:
    print("ERROR", type(e).__name__, e)
    sys.exit()
f = s.makefile("rb")
for command in commands:
    args = [a.encode() for a in command.split()]
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    line = f.readline().decode().rstrip("\r\n")
    if line.startswith("$") and line != "$-1":
        line = f.read(int(line[1:]) + 2)[:-2].decode()
    print(line)
"""


def resp(host, addr, port, *commands):
    out = host.check_output("python3 -c %s %s %s " + " ".join(["%s"] * len(commands)),
                            RESP, addr, str(port), *commands)
    return out.splitlines()


def name_of(host):
    return host.backend.get_hostname()


def get(name):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)


@pytest.fixture
def server(host):
    if name_of(host) not in SERVERS:
        pytest.skip("Redis server check")
    return host


@pytest.fixture
def client(host):
    if name_of(host) != APP_HOST:
        pytest.skip("app host check (runs once)")
    return host


def admin_cli(host, port, *args, db=0):
    """redis-cli as the default (admin) user over loopback; returns stdout."""
    cmd = "REDISCLI_AUTH={} redis-cli --no-auth-warning -p {} -n {} {}".format(
        ADMIN_PASSWORD, port, db, " ".join(args))
    return host.check_output(cmd)


def sentinel_cli(host, *args):
    return host.check_output("REDISCLI_AUTH={} redis-cli --no-auth-warning -p {} {}".format(
        ADMIN_PASSWORD, SENTINEL, " ".join(args)))


def config_get(host, port, key):
    out = admin_cli(host, port, "CONFIG GET", key).splitlines()
    assert out[0] == key, out
    return out[1] if len(out) > 1 else ""


def role(host, port):
    return admin_cli(host, port, "ROLE").splitlines()[0]


def primary_of(instance, via=APP_HOST):
    """(host name, address) of the instance's primary, as the sentinel on `via` says."""
    addr = sentinel_cli(get(via), "SENTINEL get-master-addr-by-name", instance).splitlines()[0]
    return next(n for n, a in SERVERS.items() if a == addr), addr


def is_primary(server, instance):
    return role(server, PORTS[instance]) == "master"


def wait_for(what, check, timeout, step=0.5):
    t0 = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - t0
        except AssertionError:
            pass
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout} s"
        time.sleep(step)


# --- the units -----------------------------------------------------------------------


def test_instances_run_and_packaged_service_is_masked(server):
    for unit in ("redis@broker.service", "redis@cache.service"):
        svc = server.service(unit)
        assert svc.is_running and svc.is_enabled, unit
    assert server.check_output("systemctl is-enabled redis-server.service || true") == "masked"


def test_sentinel_runs_from_our_unit(host):
    svc = host.service("redis-sentinel.service")
    assert svc.is_running and svc.is_enabled
    assert host.check_output("systemctl show -p FragmentPath --value redis-sentinel.service") \
        == "/etc/systemd/system/redis-sentinel.service"
    assert host.check_output("systemctl show -p User --value redis-sentinel.service") == "redis"


def test_listens_on_loopback_and_private_address_only(host):
    addr = SENTINELS[name_of(host)]
    ports = (BROKER, CACHE, SENTINEL) if name_of(host) in SERVERS else (SENTINEL,)
    for port in ports:
        out = host.check_output(f"ss -Htln 'sport = :{port}'")
        local = sorted(line.split()[3] for line in out.splitlines())
        assert local == sorted([f"127.0.0.1:{port}", f"{addr}:{port}"]), local


def test_units_restart_on_failure(server):
    unit = "redis@cache.service"
    before = server.check_output(f"systemctl show -p MainPID --value {unit}")
    assert server.check_output(f"systemctl show -p Restart --value {unit}") == "on-failure"
    server.run_expect([0], f"kill -9 {before}")
    for _ in range(30):
        time.sleep(1)
        pid = server.check_output(f"systemctl show -p MainPID --value {unit}")
        if pid not in ("0", before) and server.service(unit).is_running:
            break
    else:
        pytest.fail(f"{unit} was not restarted after SIGKILL")
    assert admin_cli(server, CACHE, "PING") == "PONG"


def test_units_are_hardened(host):
    units = ["redis-sentinel.service"]
    if name_of(host) in SERVERS:
        units += ["redis@broker.service", "redis@cache.service"]
    for unit in units:
        out = host.check_output(f"systemd-analyze security --no-pager {unit} | tail -1")
        exposure = float(re.search(r"exposure level for \S+: ([0-9.]+)", out).group(1))
        print(f"{name_of(host)} {unit}: exposure {exposure}")
        assert exposure <= 2.0, out


# --- authentication and reachability -------------------------------------------------


def test_auth_required_on_loopback(host):
    ports = (BROKER, CACHE, SENTINEL) if name_of(host) in SERVERS else (SENTINEL,)
    for port in ports:
        assert host.check_output(f"redis-cli -p {port} PING").startswith("NOAUTH")
        out = host.run(f"redis-cli --no-auth-warning -p {port} --user app --pass wrong-password-0000000 PING")
        assert "WRONGPASS" in out.stdout + out.stderr


def test_app_host_connects_with_its_password(client):
    for addr in SERVERS.values():
        for port in (BROKER, CACHE):
            out = resp(client, addr, port, f"AUTH app {APP_PASSWORD}", "PING")
            assert out == ["+OK", "+PONG"], (addr, port, out)


def test_previous_password_accepted_by_redis_and_sentinel_during_rotation(client):
    """A client that still has the previous password (rotate_secrets.yml is under way) keeps reaching
    the instances and keeps finding the primary through every sentinel."""
    for addr in SENTINELS.values():
        ports = (BROKER, CACHE, SENTINEL) if addr in SERVERS.values() else (SENTINEL,)
        for port in ports:
            out = resp(client, addr, port, f"AUTH app {APP_PREVIOUS_PASSWORD}", "PING")
            assert out == ["+OK", "+PONG"], (addr, port, out)


def test_app_host_without_password_is_refused(client):
    for addr in SENTINELS.values():
        for port in (BROKER, CACHE, SENTINEL) if addr in SERVERS.values() else (SENTINEL,):
            out = resp(client, addr, port, "PING", "AUTH app wrong-password-0000000")
            assert out[0].startswith("-NOAUTH"), (addr, port, out)
            assert out[1].startswith("-WRONGPASS"), (addr, port, out)


def test_host_outside_allowed_clients_cannot_connect(client):
    """The Molecule controller is in no client list: the units' IPAddressDeny drops it."""
    netns = os.environ.get("AIPL_LAB_NETNS", "aipl-lab")
    for addr in SENTINELS.values():
        for port in (BROKER, CACHE, SENTINEL) if addr in SERVERS.values() else (SENTINEL,):
            probe = subprocess.run(
                ["nsenter", f"--net=/run/netns/{netns}", "python3", "-c", RESP, addr, str(port),
                 f"AUTH {ADMIN_PASSWORD}"], capture_output=True, text=True, timeout=30)
            assert probe.stdout.startswith("ERROR"), (addr, port, probe.stdout)
    # The app host is let in, also to the sentinels.
    assert resp(client, SERVERS["redis-b"], SENTINEL, f"AUTH app {APP_PASSWORD}", "PING") \
        == ["+OK", "+PONG"]


def test_app_user_has_no_dangerous_commands(server):
    if not is_primary(server, "broker"):
        pytest.skip("writes go to the primary")
    base = f"redis-cli --no-auth-warning -p {BROKER} -n 13 --user app --pass {APP_PASSWORD}"
    assert server.check_output(f"{base} SET acl:probe 1") == "OK"
    assert server.check_output(f"{base} DEL acl:probe") == "1"
    for cmd in ("FLUSHALL", "CONFIG GET maxmemory", "ACL LIST", "KEYS '*'", "SHUTDOWN", "REPLICAOF NO ONE"):
        assert server.check_output(f"{base} {cmd}").startswith("NOPERM"), cmd


def test_app_user_may_only_ask_sentinel_where_the_primary_is(client):
    base = f"redis-cli --no-auth-warning -p {SENTINEL} --user app --pass {APP_PASSWORD}"
    assert client.check_output(f"{base} SENTINEL get-master-addr-by-name broker").splitlines()[0] \
        in SERVERS.values()
    assert "broker" in client.check_output(f"{base} SENTINEL masters")
    for cmd in ("SENTINEL FAILOVER broker", "SENTINEL SET broker quorum 1", "SENTINEL RESET '*'",
                "SENTINEL REMOVE broker", "ACL LIST", "SHUTDOWN"):
        assert client.check_output(f"{base} {cmd}").startswith("NOPERM"), cmd


def test_config_files_hold_no_cleartext_user_password(host):
    files = ["/etc/redis/redis-sentinel.conf", "/etc/redis/ha.json"]
    if name_of(host) in SERVERS:
        files += ["/etc/redis/redis-broker.conf", "/etc/redis/redis-cache.conf"]
    for path in files:
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "redis", 0o640), path
        content = f.content_string
        assert ADMIN_PASSWORD not in content and APP_PASSWORD not in content, path
        if path.endswith("-broker.conf"):
            assert re.search(r"^user default on .*#[0-9a-f]{64} ", content, re.M)
            assert "requirepass" not in content
            # What a replica must send to its primary, and nothing else in clear.
            assert f"masterauth {REPLICATION_PASSWORD}" in content
            assert SENTINEL_PASSWORD not in content
    runtime = host.file("/var/lib/redis/sentinel/sentinel.conf")
    assert (runtime.user, runtime.group) == ("redis", "redis") and runtime.mode & 0o007 == 0


# --- replication and Sentinel -------------------------------------------------------


def test_replica_streams_from_the_primary(client):
    for instance, port in PORTS.items():
        name, addr = primary_of(instance)
        primary = get(name)
        replica_name = next(n for n in SERVERS if n != name)
        replica = get(replica_name)
        assert role(primary, port) == "master", instance
        info = admin_cli(replica, port, "INFO replication")
        assert "role:slave" in info and f"master_host:{addr}" in info, info
        assert "master_link_status:up" in info, info
        token = f"probe-{time.time_ns()}"
        admin_cli(primary, port, "SET", "repl:probe", token, db=12)
        wait_for(f"{instance} write seen on the replica",
                 lambda: admin_cli(replica, port, "GET repl:probe", db=12) == token, 10)
        assert admin_cli(replica, port, "SET repl:probe x", db=12).startswith("READONLY")
        admin_cli(primary, port, "DEL repl:probe", db=12)


def test_sentinels_agree_and_have_a_quorum(client):
    for instance in PORTS:
        answers = {sentinel_cli(get(n), "SENTINEL get-master-addr-by-name", instance).splitlines()[0]
                   for n in SENTINELS}
        assert len(answers) == 1, (instance, answers)
        ck = sentinel_cli(client, "SENTINEL ckquorum", instance)
        assert ck.startswith("OK 3 usable Sentinels"), ck
        fields = sentinel_cli(client, "SENTINEL master", instance).splitlines()
        master = dict(zip(fields[::2], fields[1::2]))
        assert master["num-slaves"] == "1" and master["num-other-sentinels"] == "2", master
        assert master["quorum"] == "2" and master["flags"] == "master", master


# --- broker: never evicts, persists ---------------------------------------------------


def test_broker_policy_noeviction_and_aof(server):
    assert config_get(server, BROKER, "maxmemory-policy") == "noeviction"
    assert config_get(server, BROKER, "appendonly") == "yes"
    assert config_get(server, BROKER, "appendfsync") == "everysec"
    assert config_get(server, BROKER, "save") == "900 1 300 10 60 10000"
    assert config_get(server, BROKER, "tcp-keepalive") == "300"
    assert config_get(server, BROKER, "protected-mode") == "yes"
    assert int(config_get(server, BROKER, "maxmemory")) == 16 * 1024 * 1024
    assert server.file("/var/lib/redis/broker/appendonlydir").is_directory


def test_cache_policy_lru_without_persistence(server):
    assert config_get(server, CACHE, "maxmemory-policy") == "allkeys-lru"
    assert config_get(server, CACHE, "appendonly") == "no"
    assert config_get(server, CACHE, "save") == ""


FILL = """
set -u
export REDISCLI_AUTH={password}
head -c 262144 /dev/zero | tr '\\0' x > /tmp/fill.value
ok=0
for i in $(seq 1 200); do
  out=$(redis-cli --no-auth-warning -p {port} -n 15 -x {command} < /tmp/fill.value)
  case "$out" in OOM*) echo "refused $ok"; exit 0;; [0-9]*|OK) ok=$((ok+1));; *) echo "error $out"; exit 1;; esac
done
echo "accepted $ok"
"""


def test_broker_refuses_writes_when_full_and_keeps_every_message(server):
    if not is_primary(server, "broker"):
        pytest.skip("writes go to the primary")
    admin_cli(server, BROKER, "DEL fill:queue", db=15)
    evicted_before = int(admin_cli(server, BROKER, "INFO stats | grep ^evicted_keys:").split(":")[1])
    out = server.check_output(FILL.format(password=ADMIN_PASSWORD, port=BROKER, command="LPUSH fill:queue"))
    try:
        verdict, pushed = out.split()
        assert verdict == "refused", out  # the client got an OOM error instead of silent loss
        assert int(pushed) > 10
        assert admin_cli(server, BROKER, "LLEN fill:queue", db=15) == pushed
        evicted = int(admin_cli(server, BROKER, "INFO stats | grep ^evicted_keys:").split(":")[1])
        assert evicted == evicted_before == 0
    finally:
        admin_cli(server, BROKER, "DEL fill:queue", db=15)


def test_cache_evicts_when_full(server):
    if not is_primary(server, "cache"):
        pytest.skip("writes go to the primary")
    script = FILL.format(password=ADMIN_PASSWORD, port=CACHE, command="SET fill:$i")
    out = server.check_output(script)
    try:
        assert out == "accepted 200", out
        assert int(admin_cli(server, CACHE, "DBSIZE", db=15)) < 200
        assert int(admin_cli(server, CACHE, "INFO stats | grep ^evicted_keys:").split(":")[1]) > 0
    finally:
        admin_cli(server, CACHE, "FLUSHDB", db=15)


def _sentinels_set(instance, down_after_ms):
    for n in SENTINELS:
        assert sentinel_cli(get(n), "SENTINEL SET", instance, "down-after-milliseconds",
                            str(down_after_ms)) == "OK"


def test_primary_recovers_its_aof_after_sigkill(client):
    """SIGKILL (no clean shutdown, no final fsync) of the broker's primary: it comes back
    as primary with every write acknowledged more than a second before (appendfsync
    everysec) from its AOF; the cache, which keeps nothing on disk, comes back empty.
    The sentinels are told to wait meanwhile, so that no failover hands the data over
    from the replica instead."""
    name, _ = primary_of("broker")
    primary = get(name)
    for instance in PORTS:
        _sentinels_set(instance, 120000)
    try:
        for i in range(200):
            admin_cli(primary, BROKER, "RPUSH", "aof:probe", str(i), db=11)
        admin_cli(primary, CACHE, "SET", "aof:probe", "gone", db=11)
        time.sleep(2.5)  # everysec: the AOF was fsynced since the last write
        since = primary.check_output("date +%s")
        unit = "redis@broker.service"
        pid = primary.check_output(f"systemctl show -p MainPID --value {unit}")
        cache_pid = primary.check_output("systemctl show -p MainPID --value redis@cache.service")
        primary.run_expect([0], f"kill -9 {pid} {cache_pid}")

        def back(port, old):
            new = primary.check_output(f"systemctl show -p MainPID --value redis@{'broker' if port == BROKER else 'cache'}.service")
            return new not in ("0", old) and "loading:0" in admin_cli(primary, port, "INFO persistence")
        wait_for("broker back after SIGKILL", lambda: back(BROKER, pid), 60)
        wait_for("cache back after SIGKILL", lambda: back(CACHE, cache_pid), 60)
        assert role(primary, BROKER) == "master"
        assert admin_cli(primary, BROKER, "LLEN aof:probe", db=11) == "200"
        assert admin_cli(primary, BROKER, "LINDEX aof:probe -1", db=11) == "199"
        log = primary.check_output(f"journalctl -u {unit} --since @{since} --no-pager -o cat")
        assert "DB loaded from append only file" in log, log[-2000:]
        assert admin_cli(primary, CACHE, "GET aof:probe", db=11) == ""
    finally:
        admin_cli(primary, BROKER, "DEL aof:probe", db=11)
        for instance in PORTS:
            _sentinels_set(instance, 5000)


# --- restarts: one host at a time, replicas first ------------------------------------


def _playbook(*args):
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    run = subprocess.run(["ansible-playbook", "-i", INVENTORY, str(REPO / "playbooks" / "redis.yml"), *args],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:]
    return run


def _usec(host, unit, prop):
    """A unit's timestamp on the kernel's monotonic clock, which every lab host shares."""
    return int(host.check_output(f"systemctl show -p {prop}Monotonic --value {unit}"))


def test_a_changed_setting_restarts_replicas_first_one_host_at_a_time(client):
    """A setting that every instance and sentinel uses (the log level) changes: the
    replicas restart before the primaries, and each host is back before the next
    one begins to stop; so do the sentinels."""
    primaries = {instance: primary_of(instance)[0] for instance in PORTS}
    try:
        _playbook("-e", "redis_loglevel=verbose")
        for instance, name in primaries.items():
            unit = f"redis@{instance}.service"
            primary, replica = get(name), get(next(n for n in SERVERS if n != name))
            assert config_get(primary, PORTS[instance], "loglevel") == "verbose"
            replica_up = _usec(replica, unit, "ActiveEnterTimestamp")
            primary_stops = _usec(primary, unit, "ActiveExitTimestamp")
            assert replica_up < primary_stops, (instance, replica_up, primary_stops)
        times = sorted((_usec(get(n), "redis-sentinel.service", "ActiveExitTimestamp"),
                        _usec(get(n), "redis-sentinel.service", "ActiveEnterTimestamp"), n)
                       for n in SENTINELS)
        for (_, up, n), (stops, _, m) in zip(times, times[1:]):
            assert up < stops, f"sentinel {m} began to stop before {n} was back"
    finally:
        _playbook()
    for instance, port in PORTS.items():
        assert config_get(get(primary_of(instance)[0]), port, "loglevel") == "notice"


# --- failover -------------------------------------------------------------------------


def _lab(*args):
    subprocess.run(["python3", str(REPO / "tests" / "lab" / "lab.py"), *args], check=True, timeout=600)


def test_primary_powered_off_fails_over_and_rejoins_as_replica(client):
    """The primary's host (data and its sentinel) powered off: the other two sentinels
    promote the replica, which keeps every write; booted again, the old primary's
    instances ask the sentinels and come back as replicas of the new one."""
    name, addr = primary_of("broker")
    other = next(n for n in SERVERS if n != name)
    for instance, port in PORTS.items():
        admin_cli(get(name), port, "SET", "failover:probe", "before", db=10)
    wait_for("probe replicated", lambda: all(
        admin_cli(get(other), port, "GET failover:probe", db=10) == "before" for port in PORTS.values()), 10)
    _lab("stop", name)
    try:
        took = wait_for("the replica promoted", lambda: all(
            primary_of(i)[0] == other and role(get(other), p) == "master" for i, p in PORTS.items()), 60)
        print(f"failover after power-off: {took:.1f} s")
        for port in PORTS.values():
            assert admin_cli(get(other), port, "GET failover:probe", db=10) == "before"
            assert admin_cli(get(other), port, "SET failover:probe after", db=10) == "OK"
    finally:
        _lab("start", name)
    old = get(name)
    wait_for("the old primary back as a replica", lambda: all(
        "role:slave" in (info := admin_cli(old, p, "INFO replication"))
        and f"master_host:{SERVERS[other]}" in info and "master_link_status:up" in info
        for p in PORTS.values()), 120)
    assert admin_cli(old, BROKER, "GET failover:probe", db=10) == "after"
    log = old.check_output("journalctl -u redis@broker.service -b --no-pager -o cat")
    assert f"replica of {SERVERS[other]}:{BROKER} (said the sentinels)" in log, log[-2000:]
    wait_for("all three sentinels agree again", lambda: all(
        sentinel_cli(get(n), "SENTINEL ckquorum broker").startswith("OK 3") for n in SENTINELS), 60)
    # Back to the converged layout: the bootstrap primary leads again.
    for instance, port in PORTS.items():
        assert sentinel_cli(client, "SENTINEL FAILOVER", instance) == "OK"
    wait_for("switched back", lambda: all(
        primary_of(i)[0] == name and role(old, p) == "master" for i, p in PORTS.items()), 60)
    for port in PORTS.values():
        admin_cli(old, port, "DEL failover:probe", db=10)


# --- kernel settings ------------------------------------------------------------------


def test_kernel_settings_written_not_applied_in_container(server):
    conf = server.file("/etc/sysctl.d/60-redis.conf").content_string
    assert re.search(r"^vm.overcommit_memory\s*=\s*1$", conf, re.M)
    thp = server.service("redis-disable-thp.service")
    assert thp.is_enabled
    # Lab hosts are containers: the unit's ConditionVirtualization=!container skips it.
    assert server.check_output("systemctl show -p ConditionResult --value redis-disable-thp.service") == "no"


def test_no_failed_units(host):
    assert host.run("systemctl --failed --no-legend --plain").stdout.strip() == ""
