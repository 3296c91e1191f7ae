"""The whole platform, deployed by site.yml, used as a client would use it.

Every request goes from e2e-client (a host in no deployment group) over HTTPS
to the load balancers' virtual IP (keepalived on e2e-lb and e2e-lb2), trusting
only the project CA. The last tests power off the load balancer that holds the
virtual IP, and then the Redis primary's host, and use the platform meanwhile.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import testinfra

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
REPO = Path(os.environ.get("AIPL_REPO", Path(__file__).resolve().parents[3]))
VIP = "10.90.20.100"  # keepalived_virtual_ipaddress: .100 of the lb hosts' /24 (inventories/lab)
BASE = f"https://{VIP}"
CA = "/tmp/e2e-ca.crt"
APP_HOSTS = ("e2e-app1", "e2e-app2")
LB_HOSTS = ("e2e-lb", "e2e-lb2")
# Private addresses: Redis and the sentinels live on the private network.
REDIS_HOSTS = {"e2e-svc": "10.90.21.41", "e2e-svc2": "10.90.21.42"}


def host(name: str):
    """A scenario host, its commands run with sudo: the scenario logs in as deploy
    (molecule.yml), and the tests read and change root's files and services."""
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY, sudo=True)


@pytest.fixture(scope="module")
def client():
    c = host("e2e-client")
    ca = host("e2e-lb").file("/etc/ai-platform/tls/ca.crt").content_string
    c.run(f"cat > {CA} <<'EOF'\n{ca}EOF")
    return c


def curl(client, method: str, path: str, token: str | None = None, body=None,
         form_file: str | None = None, expect: int | None = None) -> tuple[int, dict | str]:
    args = ["curl", "-sS", "--cacert", CA, "-X", method, "-o", "/tmp/e2e-body", "-w", "%{http_code}"]
    if token:
        args += ["-H", f"'Authorization: Bearer {token}'"]
    if body is not None:
        args += ["-H", "'Content-Type: application/json'", "--data-binary", "'" + json.dumps(body) + "'"]
    if form_file:
        args += ["-F", f"file=@{form_file}"]
    out = client.run(" ".join(args) + f" {BASE}{path}")
    assert out.rc == 0, out.stderr
    status = int(out.stdout.strip())
    text = client.run("cat /tmp/e2e-body").stdout
    try:
        data = json.loads(text)
    except ValueError:
        data = text
    if expect is not None:
        assert status == expect, (method, path, status, data)
    return status, data


def test_health_green_with_every_component(client):
    """The public /health says only ok; the details are on the app port (here asked
    from the load balancer, which the firewall lets in) and refused through Nginx."""
    status, data = curl(client, "GET", "/health", expect=200)
    assert data == {"status": "ok"}, data
    curl(client, "GET", "/health/details", expect=404)
    details = json.loads(host("e2e-lb").check_output("curl -s http://10.90.21.21:8000/health/details"))
    for part in ("api", "database", "redis", "celery", "chroma"):
        assert details[part]["status"] == "ok", (part, details)
    assert "timestamp" in details


def _account_with_document(client, name: str, text: str) -> tuple[str, dict]:
    """A new account with one project holding one indexed document: (token, project)."""
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.org"
    curl(client, "POST", "/api/v1/auth/register", body={"email": email, "password": "correct horse battery"},
         expect=201)
    _, tok = curl(client, "POST", "/api/v1/auth/login", body={"email": email, "password": "correct horse battery"},
                  expect=200)
    token = tok["access_token"]
    _, project = curl(client, "POST", "/api/v1/projects", token, body={"name": name}, expect=201)
    client.run(f"printf '{text}' > /tmp/{name}.md")
    _, doc = curl(client, "POST", f"/api/v1/projects/{project['id']}/documents", token,
                  form_file=f"/tmp/{name}.md", expect=201)
    deadline = time.time() + 240
    while True:
        _, d = curl(client, "GET", f"/api/v1/projects/{project['id']}/documents/{doc['id']}", token, expect=200)
        if d["status"] in ("ready", "failed") or time.time() > deadline:
            break
        time.sleep(2)
    assert d["status"] == "ready", d
    return token, project


def test_register_upload_index_search_ask(client):
    token, project = _account_with_document(
        client, "e2e", "# Reactor notes\\n\\nThe cooling loop of the prototype reactor uses heavy water "
        "circulated by two redundant pumps.\\n\\nThe control rods are made of boron carbide.\\n")
    _, found = curl(client, "POST", f"/api/v1/projects/{project['id']}/search", token,
                    body={"query": "what are the control rods made of", "top_k": 3}, expect=200)
    assert found["results"], found
    assert "boron" in json.dumps(found["results"][0]).lower()
    _, answer = curl(client, "POST", f"/api/v1/projects/{project['id']}/ask", token,
                     body={"question": "Which material are the control rods made of?"}, expect=200)
    assert answer["mode"] == "extractive" and answer["sources"], answer
    assert "boron" in answer["answer"].lower()


def test_units_on_the_right_hosts():
    for name in APP_HOSTS:
        h = host(name)
        for unit in ("ai-platform-api", "ai-platform-worker", "ai-platform.target"):
            assert h.service(unit).is_running or unit.endswith(".target"), (name, unit)
            assert h.service(unit).is_enabled, (name, unit)
        env = h.file("/etc/ai-platform/app.env")
        assert env.user == "root" and env.group == "aiplatform" and env.mode == 0o640
    # Celery beat runs on both scheduler hosts; exactly one holds the lock and sends.
    holders = [n for n in APP_HOSTS if host(n).service("ai-platform-beat").is_running
               and "beat: Acquired lock" in host(n).check_output(
                   "journalctl -u ai-platform-beat -b --no-pager -o cat")]
    assert all(host(n).service("ai-platform-beat").is_running for n in APP_HOSTS)
    assert len(holders) == 1, holders
    # keepalived on both load balancers, the virtual IP on exactly one.
    assert all(host(n).service("keepalived").is_running for n in LB_HOSTS)
    assert len(_vip_holders()) == 1, _vip_holders()


def test_api_killed_comes_back_and_lb_keeps_serving(client):
    app1 = host("e2e-app1")
    pid = app1.check_output("systemctl show -p MainPID --value ai-platform-api")
    assert int(pid) > 0
    app1.run(f"kill -9 {pid}")
    # Meanwhile every request through the load balancer succeeds (the other app host answers).
    codes = client.check_output(
        f"for i in $(seq 60); do curl -s -o /dev/null -w '%{{http_code}}\\n' --cacert {CA} {BASE}/health/live;"
        " sleep 0.1; done")
    assert set(codes.split()) == {"200"}, codes
    deadline = time.time() + 30
    while time.time() < deadline:
        new = app1.check_output("systemctl show -p MainPID --value ai-platform-api")
        if app1.service("ai-platform-api").is_running and new not in ("0", pid):
            break
        time.sleep(0.5)
    assert app1.service("ai-platform-api").is_running and new != pid


def test_one_tier_by_tag_changes_nothing():
    """`site.yml --tags app` runs the app tier alone: plays of other tiers gather no
    facts then, yet their roles' argument checks still run and must not need facts."""
    run = _playbook("site.yml", "--tags", "app")
    assert run.returncode == 0, run.stdout[-3000:]
    recap = [ln for ln in run.stdout.splitlines() if " ok=" in ln and "changed=" in ln]
    assert recap and all(" changed=0 " in ln for ln in recap), recap


def _playbook(playbook: str, *args: str) -> subprocess.CompletedProcess:
    """ansible-playbook with the repo's settings against the scenario's hosts."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    return subprocess.run(["ansible-playbook", "-i", INVENTORY, str(REPO / playbook), *args],
                          env=env, capture_output=True, text=True, timeout=1200)


def _deploy(source: Path) -> subprocess.CompletedProcess:
    return _playbook("playbooks/deploy.yml", "-e", f"app_source_dir={source}")


def _source_copy(version: str, break_it: bool = False) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="e2e-app-"))
    dst = tmp / "app"
    shutil.copytree(REPO / "app", dst, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    init = dst / "app" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
    if break_it:
        # It loads (check-config passes, the switch happens) but cannot start:
        # the API's startup raises, so only the health gate can catch it.
        main = dst / "app" / "main.py"
        text = main.read_text()
        anchor = 'log.info("startup", version=__version__, environment=settings.environment)\n'
        assert anchor in text
        main.write_text(text.replace(
            anchor, anchor + '        raise RuntimeError("deliberately broken release")\n'))
    return dst


def _current_release(name: str) -> str:
    return host(name).check_output("readlink /opt/ai-platform/current")


def test_rolling_deploy_broken_release_rolled_back_then_rollback_playbook(client):
    good = _deploy(_source_copy("1.0.1"))
    assert good.returncode == 0, good.stdout[-3000:]
    venv = "/opt/ai-platform/current/venv"
    for name in APP_HOSTS:
        assert "/releases/1.0.1-" in _current_release(name)
        # The lock did not change: 1.0.1's venv started as a hard-linked copy of
        # 1.0.0's (wheelhouse_seed_venv), and got its own app wheel, not 1.0.0's.
        links = host(name).check_output(f"stat -c %h {venv}/lib/python3*/site-packages/fastapi/__init__.py")
        assert int(links) >= 2, (name, links)
        own = host(name).check_output(f"{venv}/bin/python -c 'import app; print(app.__version__)'")
        assert own == "1.0.1", (name, own)
        assert host(name).check_output(f"stat -c %h {venv}/lib/python3*/site-packages/app/__init__.py") == "1", name
    curl(client, "GET", "/health", expect=200)

    bad = _deploy(_source_copy("1.0.2", break_it=True))
    assert bad.returncode != 0, "a release that cannot start must fail the deploy"
    # Caught by the gate as a crash loop, in seconds, not at the gate's deadline.
    # (The YAML callback wraps long lines: compare with the whitespace folded.)
    said = " ".join(bad.stdout.split())
    assert "crashed and was restarted by systemd" in said, [ln for ln in bad.stdout.splitlines() if "health" in ln][-20:]
    # The first host was rolled back, the second never touched: both on 1.0.1, site up,
    # each with the settings 1.0.1 ran with (the first host's were put back), none kept.
    for name in APP_HOSTS:
        assert "/releases/1.0.1-" in _current_release(name), name
        assert host(name).service("ai-platform-api").is_running
        assert host(name).run("grep -c 'app (1.0.1-' /etc/ai-platform/app.env").stdout.strip() == "1", name
        assert host(name).run("ls /etc/ai-platform/ | grep -c '^app.env.'").stdout.strip() == "0", name
    curl(client, "GET", "/health", expect=200)

    # On demand, one release back: 1.0.1 -> 1.0.0 on every host (the broken 1.0.2
    # on the first host is newer than `current`, so it is not a candidate).
    back = _playbook("playbooks/rollback.yml")
    assert back.returncode == 0, back.stdout[-3000:]
    for name in APP_HOSTS:
        assert "/releases/1.0.0-" in _current_release(name), name
    curl(client, "GET", "/health", expect=200)


FAKE_LLM = r'''
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
WORDS = "The control rods are made of boron carbide [1].".split()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert req.get("stream") is True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        def chunk(data):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data)); self.wfile.flush()
        for w in WORDS:
            chunk(("data: " + json.dumps({"choices": [{"delta": {"content": w + " "}}]}) + "\n\n").encode())
            time.sleep(0.4)
        chunk(b"data: [DONE]\n\n"); chunk(b"")
    def log_message(self, *a): pass
ThreadingHTTPServer(("0.0.0.0", 8089), H).serve_forever()
'''

READ_SSE = r'''
import json, ssl, sys, time, urllib.request
url, token, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
req = urllib.request.Request(url, data=body, method="POST", headers={
    "Authorization": "Bearer " + token, "Content-Type": "application/json"})
ctx = ssl.create_default_context(cafile="/tmp/e2e-ca.crt")
start, events = time.monotonic(), []
with urllib.request.urlopen(req, context=ctx, timeout=120) as resp:
    kind = None
    for raw in resp:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            events.append([round(time.monotonic() - start, 3), kind, json.loads(line[6:])])
print(json.dumps({"type": resp.headers.get("Content-Type"), "events": events}))
'''


def test_ask_streams_through_nginx_unbuffered(client):
    """/ask with stream=true through Nginx: the fake OpenAI-compatible provider on
    e2e-client (on app_provider_http_allowlist) sends a word every 0.4 s; the client
    receives them as they come (spread over seconds), not in one buffered lump."""
    client.run("cat > /tmp/fake-llm.py <<'EOF'\n" + FAKE_LLM + "EOF")
    client.run("cat > /tmp/read-sse.py <<'EOF'\n" + READ_SSE + "EOF")
    client.run("setsid python3 /tmp/fake-llm.py >/tmp/fake-llm.log 2>&1 < /dev/null & echo $! > /tmp/fake-llm.pid")
    try:
        token, project = _account_with_document(
            client, "sse", "The control rods of the prototype reactor are made of boron carbide.\\n")
        curl(client, "POST", "/api/v1/providers", token, expect=201, body={
            "name": "fake", "base_url": "http://10.90.20.99:8089/v1", "model": "m", "api_key": "sk-e2e-fake-key"})
        body = json.dumps({"question": "What are the control rods made of?", "stream": True})
        out = client.run(f"python3 /tmp/read-sse.py {BASE}/api/v1/projects/{project['id']}/ask {token} '{body}'")
        assert out.rc == 0, out.stderr
        got = json.loads(out.stdout)
    finally:
        client.run("kill $(cat /tmp/fake-llm.pid) || true")
    assert got["type"].startswith("text/event-stream"), got
    events = got["events"]
    assert events[0][1] == "sources" and events[-1][1] == "done", events
    assert events[-1][2]["mode"] == "generative", events[-1]
    tokens = [e for e in events if e[1] == "token"]
    assert "".join(e[2]["text"] for e in tokens).strip() == "The control rods are made of boron carbide [1]."
    # Ten words 0.4 s apart: unbuffered, the first arrives seconds before the last.
    assert tokens[-1][0] - tokens[0][0] > 1.5, tokens


# --- no single point of failure --------------------------------------------------------


def _vip_holders(among: tuple[str, ...] = LB_HOSTS) -> list[str]:
    """The load balancers (of those that are up) that hold the virtual IP."""
    return [n for n in among if f" {VIP}/" in host(n).check_output("ip -o -4 addr show")]


def _lab(*args: str) -> None:
    subprocess.run(["python3", str(REPO / "tests" / "lab" / "lab.py"), *args], check=True, timeout=600)


def _wait(what: str, check, timeout: float, step: float = 1.0) -> float:
    t0 = time.time()
    while True:
        try:
            if check():
                return time.time() - t0
        except (AssertionError, RuntimeError):
            pass
        assert time.time() - t0 < timeout, f"{what}: not within {timeout} s"
        time.sleep(step)


def _upload_until_ready(client) -> None:
    """A new account and an upload through the VIP that ends ready and is found by search."""
    token, project = _account_with_document(
        client, "e2e-ha", "Geysers erupt when groundwater meets magma-heated rock.\\n")
    _, found = curl(client, "POST", f"/api/v1/projects/{project['id']}/search", token,
                    body={"query": "what makes a geyser erupt", "top_k": 1}, expect=200)
    assert found["results"] and "geyser" in json.dumps(found["results"][0]).lower(), found


def _sentinel(*args: str) -> list[str]:
    """redis-cli to the sentinel on e2e-app2 (which no test powers off), as the app's user."""
    return host("e2e-app2").check_output(
        "redis-cli --no-auth-warning -p 26379 --user app --pass "
        "\"$(sed -n 's/^REDIS_SENTINEL_PASSWORD=//p' /etc/ai-platform/app.env)\" " + " ".join(args)).splitlines()


def _replica_ok(addr: str) -> bool:
    """The sentinel sees ``addr`` as a replica of broker that is up (flags exactly 'slave')."""
    lines = _sentinel("SENTINEL replicas broker")
    entries, cur = [], {}
    for key, value in zip(lines[::2], lines[1::2]):
        if key == "name" and cur:
            entries.append(cur)
            cur = {}
        cur[key] = value
    entries.append(cur)
    return any(e.get("ip") == addr and e.get("flags") == "slave"
               and e.get("master-link-status") == "ok" for e in entries)


def test_the_vip_holder_powered_off_the_api_still_answers_and_an_upload_ends_ready(client):
    holder = _vip_holders()[0]
    other = next(n for n in LB_HOSTS if n != holder)
    _lab("stop", holder)
    try:
        took = _wait("the virtual IP on the other load balancer", lambda: _vip_holders((other,)) == [other], 60)
        print(f"the VIP moved to {other} {took:.1f} s after {holder} was powered off")
        _wait("the API answers through the VIP",
              lambda: curl(client, "GET", "/health/live")[0] == 200, 60)
        _upload_until_ready(client)
    finally:
        _lab("start", holder)
    _wait("keepalived back on the rebooted load balancer",
          lambda: host(holder).service("keepalived").is_running, 180)
    assert _vip_holders() == [other]  # no preemption: it rejoined as backup


def test_the_redis_primary_powered_off_the_api_still_answers_and_an_upload_ends_ready(client):
    addr = _sentinel("SENTINEL get-master-addr-by-name broker")[0]
    primary = next(n for n, a in REDIS_HOSTS.items() if a == addr)
    other = next(n for n in REDIS_HOSTS if n != primary)
    _lab("stop", primary)
    try:
        took = _wait("the sentinels promote the replica", lambda: all(
            _sentinel("SENTINEL get-master-addr-by-name", i)[0] == REDIS_HOSTS[other]
            for i in ("broker", "cache")), 90)
        print(f"Redis failed over to {other} {took:.1f} s after {primary} was powered off")
        _wait("/health green through the VIP", lambda: curl(client, "GET", "/health")[0] == 200, 120)
        _upload_until_ready(client)
    finally:
        _lab("start", primary)
    # The old primary's instances come back as replicas of the new one by themselves.
    _wait("the old primary back as a replica", lambda: _replica_ok(REDIS_HOSTS[primary]), 180)
