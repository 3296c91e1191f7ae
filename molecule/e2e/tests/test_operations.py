"""Operator safety on the whole site: every role on the private network, preflight
checks that neither --limit nor --tags skip, check mode with a pending change, and
an app host added by editing the inventory (the others not restarted).

Runs after test_e2e.py (pytest takes the files in order); the scale-out test is
the last one: it leaves an extra host in the site's configuration.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import testinfra
import yaml
from test_e2e import BASE, CA, INVENTORY, LB_HOSTS, REPO, client, host  # noqa: F401  (client: a fixture)

APPS = {"e2e-app1": "21", "e2e-app2": "22"}
PRIVATE, MGMT = "10.90.21.", "10.90.20."
NEW_APP = {"name": "e2e-app3", "address": MGMT + "23", "private_address": PRIVATE + "23", "image": "debian12"}


def playbook(*args: str, inventory: str = INVENTORY, timeout: int = 2400) -> tuple[int, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    r = subprocess.run(["ansible-playbook", "-i", inventory, *args], env=env, cwd=REPO, check=False,
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def recap(out: str) -> dict[str, dict[str, int]]:
    """host -> {ok, changed, failed, ...} from the PLAY RECAP."""
    rows = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", out, re.MULTILINE):
        rows[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return rows


def changed_tasks(out: str) -> dict[str, list[str]]:
    """host -> the names of the tasks that reported changed, from the default callback's output."""
    tasks: dict[str, list[str]] = {}
    task = ""
    for line in out.splitlines():
        if m := re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\]", line):
            task = m.group(1)
        elif m := re.match(r"^changed: \[([^\]]+)\]", line):
            tasks.setdefault(m.group(1).split(" ")[0], []).append(task)
    return tasks


def folded(out: str) -> str:
    """The output with whitespace folded (the YAML callback wraps long messages)."""
    return " ".join(out.split())


def test_every_role_uses_the_private_network():
    """The default route is the management network; nothing listens or connects there."""
    app1 = host("e2e-app1")
    route = app1.check_output("ip -4 route show default")
    assert "10.90.20.1" in route, route  # so a role that used the default IPv4 would show it
    listening = {name: host(name).check_output("ss -Hltn | awk '{print $4}'")
                 for name in ("e2e-app1", "e2e-app2", "e2e-db1", "e2e-db2", "e2e-svc")}
    for name, last in APPS.items():
        assert f"{PRIVATE}{last}:8000" in listening[name], listening[name]
    assert f"{PRIVATE}31:5432" in listening["e2e-db1"], listening["e2e-db1"]
    for port in (6379, 6380, 8000):
        assert f"{PRIVATE}41:{port}" in listening["e2e-svc"], listening["e2e-svc"]
    assert not [ln for h in listening.values() for ln in h.split() if ln.startswith(MGMT)], listening
    env = app1.check_output("cat /etc/ai-platform/app.env")
    urls = re.findall(r"^(?:DATABASE_URL|DATABASE_READ_URL|REDIS_URL|CELERY_BROKER_URL|CHROMA_URL)=.*$", env, re.MULTILINE)
    assert len(urls) == 5 and all(PRIVATE in u and MGMT not in u for u in urls), [u.split("@")[-1] for u in urls]
    upstream = host("e2e-lb").check_output("grep -E '^\\s+server ' /etc/nginx/conf.d/ai-platform.conf")
    assert sorted(re.findall(r"server (\S+) ", upstream)) == [f"{PRIVATE}21:8000", f"{PRIVATE}22:8000"], upstream
    # The firewall admits the app hosts' private addresses, not their management ones.
    rules = host("e2e-db1").check_output("ufw status")
    assert re.search(rf"5432/tcp\s+ALLOW\s+{re.escape(PRIVATE)}21\b", rules), rules
    assert f"{MGMT}21" not in rules, rules
    # And it works: the app reaches everything through the private network.
    status = host("e2e-client").check_output(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {CA} {BASE}/health")
    assert status == "200"


def _bad_scheduler_inventory() -> str:
    """The scenario's inventory with Celery beat on a host that is not an app host (refused by the preflight)."""
    inv = yaml.safe_load(Path(INVENTORY).read_text())
    inv["scheduler"]["hosts"]["e2e-lb"] = inv["lb"]["hosts"]["e2e-lb"]
    path = Path(INVENTORY).with_name("beat-on-lb.yml")
    path.write_text(yaml.safe_dump(inv))
    return str(path)


def test_preflight_runs_whatever_limit_and_tags_say():
    """Cross-host checks see the whole inventory under --limit; host checks stop bad hosts before any change."""
    bad = _bad_scheduler_inventory()
    try:
        rc, out = playbook(str(REPO / "site.yml"), "--limit", "e2e-app2", "--tags", "app", inventory=bad)
    finally:
        Path(bad).unlink()
    assert rc != 0 and "The scheduler group runs Celery beat" in folded(out), out[-2000:]
    assert all(r["changed"] == 0 for r in recap(out).values()), recap(out)

    # A previous Fernet key that is not one (a rotation's typo): refused before any change.
    rc, out = playbook(str(REPO / "site.yml"), "--limit", "e2e-app2", "--tags", "app",
                       "-e", json.dumps({"app_encryption_previous_keys": ["not-a-fernet-key"]}))
    assert rc != 0 and "each of app_encryption_previous_keys must be a Fernet key" in folded(out), out[-2000:]
    assert all(r["changed"] == 0 for r in recap(out).values()), recap(out)

    # --tags that match nothing: only the preflight (tagged always) runs.
    only = ["--tags", "preflight-only"]
    rc, out = playbook(str(REPO / "site.yml"), *only, "--limit", "e2e-app2", "-e", "preflight_python_min=3.99")
    assert rc != 0 and "the app needs Python >= 3.99, and python3 is 3.11" in folded(out), out[-2000:]

    rc, out = playbook(str(REPO / "site.yml"), *only, "--limit", "e2e-db2", "-e", "postgresql_version=17")
    said = folded(out)
    assert rc != 0 and "e2e-db2 holds PostgreSQL 15 (/var/lib/postgresql/15/main)" in said, out[-2000:]
    assert "pin postgresql_version: 15" in said, said[-1500:]

    untested = json.dumps({"preflight_platforms_tested": {}, "preflight_platforms_untested": {"Debian": ["12"]}})
    rc, out = playbook(str(REPO / "site.yml"), *only, "--limit", "e2e-lb", "-e", untested)
    assert rc == 0 and "WARNING: e2e-lb runs Debian 12" in folded(out), out[-2000:]
    rc, out = playbook(str(REPO / "site.yml"), *only, "--limit", "e2e-lb", "-e", json.dumps({"preflight_platforms_tested": {}}))
    assert rc != 0 and "which the roles do not support" in folded(out), out[-2000:]


def test_check_mode_shows_a_pending_change_and_changes_nothing():
    """site.yml --check --diff on the load balancers: the pending change's diff on its host,
    changed=0 on the other, nothing applied. (The scenario's check step ran the whole site
    in check mode right after idempotence: changed=0 on every host.)"""
    lb = host("e2e-lb")
    conf = "/etc/nginx/conf.d/ai-platform.conf"
    lb.check_output(f"sed -i '1a # e2e: a pending change' {conf}")
    try:
        rc, out = playbook(str(REPO / "site.yml"), "--check", "--diff", "--limit", "lb")
        assert rc == 0, out[-3000:]
        rows = recap(out)
        assert {"e2e-lb", "e2e-lb2"} <= set(rows), rows
        assert rows["e2e-lb"]["changed"] >= 1 and rows["e2e-lb"]["failed"] == 0, rows
        others = {h: r["changed"] for h, r in rows.items() if h != "e2e-lb"}
        assert set(others.values()) == {0}, (others, changed_tasks(out))
        assert "-# e2e: a pending change" in out, "the diff of the pending change is not shown"
        assert "# e2e: a pending change" in lb.file(conf).content_string, "check mode changed the file"
    finally:
        lb.run(f"sed -i '/^# e2e: a pending change$/d' {conf}")


def test_a_control_node_without_the_ca_refuses_to_make_one(tmp_path):
    """A second control node (an empty CA folder) or another CA than the pinned one: the pki role stops, nothing changes."""
    empty = tmp_path / "pki"
    empty.mkdir(mode=0o700)  # the mode the pki role gives its CA folder: an empty one, not a changed one
    rc, out = playbook(str(REPO / "site.yml"), "--tags", "database", "--limit", "e2e-db1", "-e", f"pki_ca_dir={empty}")
    assert rc != 0 and "the hosts e2e-db1 already trust one" in folded(out), out[-2000:]
    assert not (empty / "ca.key").exists() and recap(out)["e2e-db1"]["changed"] == 0, recap(out)
    rc, out = playbook(str(REPO / "site.yml"), "--tags", "database", "--limit", "e2e-db1",
                       "-e", "pki_ca_fingerprint=00:11:22:33")
    assert rc != 0 and "the inventory pins 00:11:22:33" in folded(out), out[-2000:]
    assert recap(out)["e2e-db1"]["changed"] == 0, recap(out)


def _unit_invocations(names) -> dict[str, str]:
    out = {}
    for name in names:
        for unit in ("ai-platform-api", "ai-platform-worker", "ai-platform-beat"):
            inv = host(name).check_output(f"systemctl show -p InvocationID --value {unit}")
            if inv:
                out[f"{name}:{unit}"] = inv
    return out


def test_scale_out_adds_an_app_host_without_restarting_the_others(client):
    """Edit the inventory, run site.yml: the new app host serves through Nginx, the others keep their units."""
    lab = ["python3", str(REPO / "tests/lab/lab.py")]
    subprocess.run([*lab, "up", "--spec", json.dumps([NEW_APP])], check=True, timeout=900)
    inv = yaml.safe_load(Path(INVENTORY).read_text())
    new = dict(inv["all"]["hosts"]["e2e-app2"], ansible_host=NEW_APP["address"],
               private_address=NEW_APP["private_address"])
    inv["all"]["hosts"][NEW_APP["name"]] = new
    inv["app"]["hosts"][NEW_APP["name"]] = new
    scaled = Path(INVENTORY).with_name("scale-out.yml")  # beside it: same group_vars, host_vars and CA
    scaled.write_text(yaml.safe_dump(inv))
    # A converged app tier first: the deploy and rollback tests left the app hosts on
    # another release than site.yml deploys.
    rc, out = playbook(str(REPO / "site.yml"), "--tags", "app")
    assert rc == 0, out[-3000:]
    before = _unit_invocations(APPS)
    # API and worker on each app host, and beat on each scheduler host (every app host here).
    assert len(before) == 3 * len(APPS), before
    try:
        rc, out = playbook(str(REPO / "site.yml"), inventory=str(scaled))
        assert rc == 0, out[-4000:]
        app3 = testinfra.get_host(f"ansible://{NEW_APP['name']}", ansible_inventory=str(scaled), sudo=True)
        for unit in ("ai-platform-api", "ai-platform-worker"):
            assert app3.service(unit).is_running, unit
        assert not app3.service("ai-platform-beat").is_running
        after = _unit_invocations(APPS)
        assert after == before, {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
        # Through Nginx: the new host takes its share of requests. Either lb may hold the VIP
        # (the power-off tests move it), so both access logs are read.
        log = "/var/log/nginx/ai-platform.access.log"
        lbs = {name: host(name) for name in LB_HOSTS}
        marks = {name: int(lb.check_output(f"wc -l < {log}")) for name, lb in lbs.items()}
        for _ in range(30):
            client.run(f"curl -s -o /dev/null --cacert {CA} {BASE}/api/v1/auth/me")  # 401, from an app host
            time.sleep(0.05)
        upstreams = []
        for name, lb in lbs.items():
            served = lb.check_output(f"tail -n +{marks[name] + 1} {log}")
            lines = [json.loads(ln) for ln in served.splitlines() if ln.strip()]
            # keepalived's check of Nginx (plain HTTP on 127.0.0.1) is in this log too; the
            # health checks are not logged at all.
            upstreams += [e["upstream_addr"] for e in lines if e["uri"] == "/api/v1/auth/me"]
        assert f"{NEW_APP['private_address']}:8000" in upstreams, upstreams
    finally:
        scaled.unlink(missing_ok=True)
        subprocess.run([*lab, "rm", NEW_APP["name"]], check=False, timeout=300)
