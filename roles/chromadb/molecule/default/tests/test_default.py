"""What the chromadb role promises, checked on the converged lab hosts.

chromadb-d12 and chromadb-d13 run the role; chromadb-app (group app) is the client
that chromadb_allowed_clients lets in. Each server is an "outside" host for the other.
"""

import json
import re
import time

import pytest

SERVERS = {"chromadb-d12": "10.90.5.12", "chromadb-d13": "10.90.5.13"}
APP_HOST = "chromadb-app"
PORT = 8000
VERSION = "1.5.9"
API = "/api/v2/tenants/default_tenant/databases/default_database/collections"

# A tiny HTTP client for the hosts (they have python3, not curl): prints
# "STATUS BODY", or "ERROR <exception>" when no connection could be made.
HTTP = r"""
import json, sys, urllib.request, urllib.error
method, url, body = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None
req = urllib.request.Request(url, method=method, data=body.encode() if body else None,
                             headers={"content-type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except Exception as e:
    print("ERROR", type(e).__name__, e)
"""


def name_of(host):
    return host.backend.get_hostname()


@pytest.fixture
def server(host):
    if name_of(host) not in SERVERS:
        pytest.skip("ChromaDB server check")
    return host


@pytest.fixture
def client(host):
    if name_of(host) != APP_HOST:
        pytest.skip("app host check")
    return host


def http(host, method, url, body=None):
    args = [method, url] + ([json.dumps(body)] if body is not None else [])
    out = host.check_output("python3 -c %s " + " ".join(["%s"] * len(args)), HTTP, *args)
    status, _, rest = out.partition(" ")
    if status == "ERROR":
        return None, rest
    return int(status), (json.loads(rest) if rest.strip().startswith(("{", "[", '"')) else rest)


def wait_heartbeat(host, base, seconds=60):
    for _ in range(seconds):
        status, _ = http(host, "GET", base + "/api/v2/heartbeat")
        if status == 200:
            return
        time.sleep(1)
    pytest.fail(f"no heartbeat from {base}")


# --- the service ----------------------------------------------------------------------


def test_service_runs_as_its_own_user(server):
    svc = server.service("chromadb.service")
    assert svc.is_running and svc.is_enabled
    assert server.check_output("systemctl show -p User --value chromadb.service") == "chromadb"
    pid = server.check_output("systemctl show -p MainPID --value chromadb.service")
    assert server.check_output(f"ps -o user= -p {pid}") == "chromadb"
    assert server.user("chromadb").shell.endswith("nologin")


def test_pinned_version_in_its_own_venv(server):
    out = server.check_output("/opt/chromadb/venv/bin/python -c "
                              "'import importlib.metadata as m; print(m.version(\"chromadb\"))'")
    assert out == VERSION
    # The venv belongs to root: the service cannot change its own code.
    assert server.file("/opt/chromadb/venv").user == "root"


def test_data_and_config_are_private(server):
    data = server.file("/var/lib/chromadb")
    assert (data.user, data.group, data.mode) == ("chromadb", "chromadb", 0o750)
    assert server.file("/var/lib/chromadb/chroma.sqlite3").exists
    conf = server.file("/etc/chromadb/config.yaml")
    assert (conf.user, conf.group, conf.mode) == ("root", "chromadb", 0o640)
    content = conf.content_string
    assert f'listen_address: "{SERVERS[name_of(server)]}"' in content
    assert 'persist_path: "/var/lib/chromadb"' in content
    assert "allow_reset: false" in content


def test_listens_on_the_private_address_only(server):
    out = server.check_output(f"ss -Htln 'sport = :{PORT}'")
    assert [line.split()[3] for line in out.splitlines()] == [f"{SERVERS[name_of(server)]}:{PORT}"]


def test_unit_is_hardened(server):
    out = server.check_output("systemd-analyze security --no-pager chromadb.service | tail -1")
    exposure = float(re.search(r"exposure level for \S+: ([0-9.]+)", out).group(1))
    print(f"{name_of(server)} chromadb.service: exposure {exposure}")
    assert exposure <= 2.0, out


def test_unit_restarts_on_failure(server):
    before = server.check_output("systemctl show -p MainPID --value chromadb.service")
    server.run_expect([0], f"kill -9 {before}")
    for _ in range(30):
        time.sleep(1)
        pid = server.check_output("systemctl show -p MainPID --value chromadb.service")
        if pid not in ("0", before):
            break
    else:
        pytest.fail("chromadb.service was not restarted after SIGKILL")
    wait_heartbeat(server, f"http://{SERVERS[name_of(server)]}:{PORT}")


# --- who can reach it -----------------------------------------------------------------


def test_heartbeat_answers_the_app_host(client):
    for addr in SERVERS.values():
        status, body = http(client, "GET", f"http://{addr}:{PORT}/api/v2/heartbeat")
        assert status == 200 and "nanosecond heartbeat" in body, (addr, status, body)


def test_host_outside_allowed_clients_cannot_connect(server):
    """The other server is not in chromadb_allowed_clients: the unit's IPAddressDeny drops it."""
    me = name_of(server)
    other = next(a for n, a in SERVERS.items() if n != me)
    status, detail = http(server, "GET", f"http://{other}:{PORT}/api/v2/heartbeat")
    assert status is None, (status, detail)


def test_no_authentication_exists_in_this_server(client):
    """Chroma 1.x has no server-side auth: document it by test, so that a release that
    brings it back shows up here (then the role should set a token)."""
    addr = next(iter(SERVERS.values()))
    status, body = http(client, "GET", f"http://{addr}:{PORT}/api/v2/auth/identity")
    assert status == 200 and body["user_id"] == "", body


# --- data -----------------------------------------------------------------------------


def test_vectors_survive_a_restart(server):
    base = f"http://{SERVERS[name_of(server)]}:{PORT}"
    status, coll = http(server, "POST", base + API, {"name": "molecule_probe", "get_or_create": True})
    assert status == 200, coll
    cid = coll["id"]
    vectors = {"ids": ["a", "b"], "embeddings": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
               "documents": ["first", "second"], "metadatas": [{"n": 1}, {"n": 2}]}
    status, body = http(server, "POST", f"{base}{API}/{cid}/upsert", vectors)
    assert status == 200, body

    server.run_expect([0], "systemctl restart chromadb.service")
    wait_heartbeat(server, base)

    status, got = http(server, "POST", f"{base}{API}/{cid}/get",
                       {"ids": ["a", "b"], "include": ["embeddings", "documents", "metadatas"]})
    assert status == 200, got
    assert sorted(zip(got["ids"], got["documents"])) == [("a", "first"), ("b", "second")]
    assert dict(zip(got["ids"], got["embeddings"]))["b"] == [0.0, 1.0, 0.0]
    status, found = http(server, "POST", f"{base}{API}/{cid}/query",
                         {"query_embeddings": [[0.0, 0.9, 0.1]], "n_results": 1, "include": ["distances"]})
    assert status == 200 and found["ids"] == [["b"]], found


def test_stop_is_a_clean_exit(server):
    """systemctl stop leaves the unit inactive, not failed (the server returns after SIGTERM)."""
    base = f"http://{SERVERS[name_of(server)]}:{PORT}"
    server.run_expect([0], "systemctl stop chromadb.service")
    try:
        state = server.check_output("systemctl show -p ActiveState,Result,ExecMainStatus chromadb.service")
        assert sorted(state.split()) == ["ActiveState=inactive", "ExecMainStatus=0", "Result=success"], state
    finally:
        server.run_expect([0], "systemctl start chromadb.service")
    wait_heartbeat(server, base)


def test_snapshot_is_consistent_and_server_comes_back(server):
    base = f"http://{SERVERS[name_of(server)]}:{PORT}"
    assert server.service("chromadb-snapshot.timer").is_enabled
    for _ in range(3):  # keep = 2 in molecule.yml: the oldest archive goes
        server.run_expect([0], "systemctl start chromadb-snapshot.service")
        time.sleep(1.1)  # distinct time stamps
    archives = server.check_output("ls /var/backups/chromadb").split()
    assert len(archives) == 2 and all(re.fullmatch(r"chromadb-\d{8}T\d{6}Z\.tar\.gz", a) for a in archives)
    d = server.file("/var/backups/chromadb")
    assert (d.user, d.mode) == ("root", 0o700)
    listing = server.check_output(f"tar -tzf /var/backups/chromadb/{archives[-1]}")
    assert "./chroma.sqlite3" in listing.split()
    assert server.service("chromadb.service").is_running
    wait_heartbeat(server, base)


def test_restore_from_snapshot(server):
    """A snapshot is only a backup once it was restored: take one, lose the data, restore it."""
    base = f"http://{SERVERS[name_of(server)]}:{PORT}"
    status, coll = http(server, "POST", base + API, {"name": "restore_probe", "get_or_create": True})
    assert status == 200, coll
    status, _ = http(server, "POST", f"{base}{API}/{coll['id']}/upsert",
                     {"ids": ["r1"], "embeddings": [[0.5, 0.5, 0.0]], "documents": ["kept"]})
    assert status == 200
    server.run_expect([0], "systemctl start chromadb-snapshot.service")
    archive = server.check_output("ls -t /var/backups/chromadb/chromadb-*.tar.gz | head -1")
    wait_heartbeat(server, base)
    status, _ = http(server, "DELETE", f"{base}{API}/restore_probe")
    assert status == 200
    assert http(server, "GET", f"{base}{API}/restore_probe")[0] == 404

    server.run_expect([0], f"/usr/local/libexec/chromadb-restore {archive}")
    wait_heartbeat(server, base)
    status, coll = http(server, "GET", f"{base}{API}/restore_probe")
    assert status == 200, coll
    status, got = http(server, "POST", f"{base}{API}/{coll['id']}/get", {"ids": ["r1"], "include": ["documents"]})
    assert status == 200 and got["documents"] == ["kept"], got
    assert server.file("/var/lib/chromadb/chroma.sqlite3").user == "chromadb"


def test_no_failed_units(host):
    assert host.run("systemctl --failed --no-legend --plain").stdout.strip() == ""
