"""What the redis role promises, checked on the converged lab hosts.

redis-d12 and redis-d13 run the role; redis-app (group app) is the client that
redis_allowed_clients lets in. Each Redis host is an "outside" host for the other.
"""

import re
import time

import pytest

SERVERS = {"redis-d12": "10.90.4.12", "redis-d13": "10.90.4.13"}
APP_HOST = "redis-app"
# Test-only secrets, the same as in molecule.yml.
ADMIN_PASSWORD = "molecule-admin-password-0123"
APP_PASSWORD = "molecule-app-password-0123456"
BROKER, CACHE = 6379, 6380


# A minimal Redis client for hosts without redis-cli (the app host has python3):
# sends each argument as one command, prints one reply line per command, or
# "ERROR <exception>" when no connection could be made.
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


@pytest.fixture
def server(host):
    if name_of(host) not in SERVERS:
        pytest.skip("Redis server check")
    return host


@pytest.fixture
def client(host):
    if name_of(host) != APP_HOST:
        pytest.skip("app host check")
    return host


def admin_cli(host, port, *args, db=0):
    """redis-cli as the default (admin) user over loopback; returns stdout."""
    cmd = "REDISCLI_AUTH={} redis-cli --no-auth-warning -p {} -n {} {}".format(
        ADMIN_PASSWORD, port, db, " ".join(args))
    return host.check_output(cmd)


def config_get(host, port, key):
    out = admin_cli(host, port, "CONFIG GET", key).splitlines()
    assert out[0] == key, out
    return out[1] if len(out) > 1 else ""


# --- the units -----------------------------------------------------------------------


def test_instances_run_and_packaged_service_is_masked(server):
    for unit in ("redis@broker.service", "redis@cache.service"):
        svc = server.service(unit)
        assert svc.is_running and svc.is_enabled, unit
    assert server.check_output("systemctl is-enabled redis-server.service || true") == "masked"


def test_listens_on_loopback_and_private_address_only(server):
    addr = SERVERS[name_of(server)]
    for port in (BROKER, CACHE):
        out = server.check_output(f"ss -Htln 'sport = :{port}'")
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


def test_units_are_hardened(server):
    for unit in ("redis@broker.service", "redis@cache.service"):
        out = server.check_output(f"systemd-analyze security --no-pager {unit} | tail -1")
        exposure = float(re.search(r"exposure level for \S+: ([0-9.]+)", out).group(1))
        print(f"{name_of(server)} {unit}: exposure {exposure}")
        assert exposure <= 2.0, out


# --- authentication and reachability -------------------------------------------------


def test_auth_required_on_loopback(server):
    for port in (BROKER, CACHE):
        assert server.check_output(f"redis-cli -p {port} PING").startswith("NOAUTH")
        out = server.run(f"redis-cli --no-auth-warning -p {port} --user app --pass wrong-password-0000000 PING")
        assert "WRONGPASS" in out.stdout + out.stderr


def test_app_host_connects_with_its_password(client):
    for addr in SERVERS.values():
        for port in (BROKER, CACHE):
            out = resp(client, addr, port, f"AUTH app {APP_PASSWORD}", "PING")
            assert out == ["+OK", "+PONG"], (addr, port, out)


def test_app_host_without_password_is_refused(client):
    for addr in SERVERS.values():
        for port in (BROKER, CACHE):
            out = resp(client, addr, port, "SET stolen 1", "AUTH app wrong-password-0000000")
            assert out[0].startswith("-NOAUTH"), (addr, port, out)
            assert out[1].startswith("-WRONGPASS"), (addr, port, out)


def test_host_outside_allowed_clients_cannot_connect(server):
    """The other Redis host is not in redis_allowed_clients: the unit's IPAddressDeny drops it."""
    me = name_of(server)
    other = next(a for n, a in SERVERS.items() if n != me)
    for port in (BROKER, CACHE):
        out = resp(server, other, port, f"AUTH {ADMIN_PASSWORD}", "PING")
        assert out[0].startswith("ERROR"), (other, port, out)


def test_app_user_has_no_dangerous_commands(server):
    base = f"redis-cli --no-auth-warning -p {BROKER} -n 13 --user app --pass {APP_PASSWORD}"
    assert server.check_output(f"{base} SET acl:probe 1") == "OK"
    assert server.check_output(f"{base} DEL acl:probe") == "1"
    for cmd in ("FLUSHALL", "CONFIG GET maxmemory", "ACL LIST", "KEYS '*'", "SHUTDOWN"):
        assert server.check_output(f"{base} {cmd}").startswith("NOPERM"), cmd


def test_config_files_hold_no_cleartext_password(server):
    for name in ("broker", "cache"):
        f = server.file(f"/etc/redis/redis-{name}.conf")
        assert (f.user, f.group, f.mode) == ("root", "redis", 0o640)
        content = f.content_string
        assert ADMIN_PASSWORD not in content and APP_PASSWORD not in content
        assert re.search(r"^user default on .*#[0-9a-f]{64} ", content, re.M)
        assert "requirepass" not in content


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
    script = FILL.format(password=ADMIN_PASSWORD, port=CACHE, command="SET fill:$i")
    out = server.check_output(script)
    try:
        assert out == "accepted 200", out
        assert int(admin_cli(server, CACHE, "DBSIZE", db=15)) < 200
        assert int(admin_cli(server, CACHE, "INFO stats | grep ^evicted_keys:").split(":")[1]) > 0
    finally:
        admin_cli(server, CACHE, "FLUSHDB", db=15)


def test_broker_data_survives_restart_cache_data_does_not(server):
    admin_cli(server, BROKER, "SET persist:probe kept", db=14)
    admin_cli(server, CACHE, "SET persist:probe gone", db=14)
    server.run_expect([0], "systemctl restart redis@broker.service redis@cache.service")
    assert admin_cli(server, BROKER, "GET persist:probe", db=14) == "kept"
    assert admin_cli(server, CACHE, "GET persist:probe", db=14) == ""
    admin_cli(server, BROKER, "DEL persist:probe", db=14)


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
