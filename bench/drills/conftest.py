"""Fault drills and security checks against the lab that `make lab` deployed.

They act on real lab hosts (power off, SIGKILL, network cut) through tests/lab/lab.py,
so they run on demand (`make drills`), not in `make test`. Each drill asserts; each
also records what it measured, written to docs/bench/drills.{json,md} at the end.
"""
from __future__ import annotations

import datetime
import json
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import lab as benchlab  # bench/lab.py: the lab helpers the benchmarks use
from bench import pg  # the database cluster as Patroni sees it

REPO, INVENTORY, LAB, OUT = benchlab.REPO, benchlab.INVENTORY, benchlab.LAB, benchlab.OUT
CA = "/tmp/drill-ca.crt"
RESULTS: dict[str, dict] = {}


lab = benchlab.lab


def on(host: str, cmd: str, timeout: int = 600, check: bool = True) -> str:
    """bench.lab.on with the drills' default timeout."""
    return benchlab.on(host, cmd, timeout, check)


class Lab:
    def __init__(self) -> None:
        inv = benchlab.inventory(INVENTORY)
        self.inv = inv
        self.groups = {g: v.get("hosts", []) for g, v in inv.items() if g != "_meta"}
        self.addr = {h: v["ansible_host"] for h, v in inv["_meta"]["hostvars"].items()}
        self.lb, self.client = self.groups["lb"][0], self.groups["lab_clients"][0]
        self.apps = self.groups["app"]
        self.dbs = self.groups["db_primary"] + self.groups.get("db_replicas", [])
        self.redis = self.groups["redis"][0]
        self.base = f"https://{self.addr[self.lb]}:443"
        self.vip = ""  # the load balancers' virtual IP, when keepalived runs (the_lab sets it)

    @property
    def primary(self) -> str:
        """The database member that leads now (Patroni decides, not the inventory)."""
        return pg.leader(self.dbs)

    @property
    def replicas(self) -> list[str]:
        lead = self.primary
        return [h for h in self.dbs if h != lead]

    def hosts(self) -> list[str]:
        return sorted(self.addr)

    def curl(self, method: str, path: str, token: str | None = None, body: dict | None = None,
             form_file: str | None = None) -> tuple[int, object]:
        args = ["curl", "-sS", "--cacert", CA, "-X", method, "-o", "/tmp/drill-body", "-w", "%{http_code}"]
        if token:
            args += ["-H", f"'Authorization: Bearer {token}'"]
        if body is not None:
            args += ["-H", "'Content-Type: application/json'", "--data-binary", "'" + json.dumps(body) + "'"]
        if form_file:
            args += ["-F", f"file=@{form_file}"]
        # Not checked: curl exits non-zero when the server answers (413) before the whole body was sent.
        out = on(self.client, " ".join(args) + f" {self.base}{path}", check=False)
        status = int(re.findall(r"\b(\d{3})\b", out)[-1])
        text = on(self.client, "cat /tmp/drill-body")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def account(self) -> tuple[str, str]:
        """A new user with a project: (token, project id). Paced for the /api/ rate limit."""
        email = f"drill-{time.time_ns()}@example.org"
        cred = {"email": email, "password": "drill password 0123456789"}
        assert self.curl("POST", "/api/v1/auth/register", body=cred)[0] == 201
        time.sleep(0.5)
        status, tok = self.curl("POST", "/api/v1/auth/login", body=cred)
        assert status == 200, tok
        status, project = self.curl("POST", "/api/v1/projects", tok["access_token"], body={"name": "drill"})
        assert status == 201, project
        return tok["access_token"], project["id"]

    def start_load(self, name: str, seconds: int, path: str = "/health/live", pause: float = 0.05) -> None:
        """GETs from the client, one after another, for `seconds`; status codes to /tmp/load-NAME."""
        on(self.client, f"rm -f /tmp/load-{name}; (end=$((SECONDS + {seconds})); while [ $SECONDS -lt $end ]; do "
                        f"curl -s -o /dev/null -m 10 -w '%{{http_code}}\\n' --cacert {CA} {self.base}{path} >> /tmp/load-{name}; "
                        f"sleep {pause}; done; echo done >> /tmp/load-{name}) >/dev/null 2>&1 &")

    def load_result(self, name: str, timeout: int = 600) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while "done" not in on(self.client, f"tail -1 /tmp/load-{name}"):
            assert time.monotonic() < deadline, f"load {name} did not end"
            time.sleep(2)
        codes: dict[str, int] = {}
        for line in on(self.client, f"cat /tmp/load-{name}").split():
            if line != "done":
                codes[line] = codes.get(line, 0) + 1
        return codes


@pytest.fixture(scope="session")
def the_lab() -> Lab:
    lab_ = Lab()
    # Clients use the virtual IP of the load balancers when there is one (keepalived).
    vip = on(lab_.lb, "sed -n '/virtual_ipaddress/{n;p}' /etc/keepalived/keepalived.conf", check=False).split()
    if vip and "/" in vip[0]:
        lab_.vip = vip[0].split("/")[0]
        lab_.base = f"https://{lab_.vip}:443"
    ca = on(lab_.lb, "cat /etc/ai-platform/tls/ca.crt")
    on(lab_.client, f"cat > {CA} <<'EOF'\n{ca}EOF")
    on(lab_.client, "command -v curl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null")
    return lab_


@pytest.fixture
def record(request):
    """record(key=value, ...): measurements of this drill, kept in docs/bench/drills.json."""
    entry = RESULTS.setdefault(request.node.name, {"doc": (request.node.function.__doc__ or "").strip().split("\n")[0]})

    def add(**values) -> None:
        entry.update(values)
    return add


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" or (rep.when == "setup" and rep.outcome != "passed"):
        entry = RESULTS.setdefault(item.name, {"doc": (item.function.__doc__ or "").strip().split("\n")[0]})
        entry["outcome"] = rep.outcome
        entry["seconds"] = round(rep.duration, 1)
        if rep.outcome == "failed":
            entry["why"] = str(rep.longrepr).strip().splitlines()[-1][:400]


def pytest_sessionfinish(session, exitstatus):
    if not RESULTS:
        return
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    path = OUT / "drills.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    drills = {**old.get("drills", {}), **RESULTS}
    for name in RESULTS:
        drills[name]["when"] = when
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"drills": drills}, indent=2) + "\n")
    render(drills)


def render(drills: dict) -> None:
    """docs/bench/drills.md from the results (python3 bench/drills/conftest.py writes it again from drills.json)."""
    rows = []
    for name, d in drills.items():
        measured = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("doc", "outcome", "seconds", "why", "when"))
        rows.append(f"| `{name}` | {d['doc']} | **{d.get('outcome', '?')}** ({d.get('seconds', '?')} s, {d['when'][:16]}) | "
                    f"{measured}{' — ' + d['why'] if d.get('why') else ''} |")
    hosts = host_table(drills)
    (OUT / "drills.md").write_text(
        "# Fault drills and security checks\n\nRun by `make drills` (bench/drills/) against the lab that `make lab` "
        "deployed; each is a test that asserts. Raw results in [drills.json](drills.json).\n\n"
        + (f"## Lose any host\n\n{hosts}\n" if hosts else "")
        + "## Every drill\n\n"
        "| drill | what it asserts | result | measured |\n| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = "<!-- lose-any-host:start -->", "<!-- lose-any-host:end -->"
    if hosts and start in text and end in text:
        head, rest = text.split(start, 1)
        readme.write_text(head + start + "\n<!-- written by bench/drills/conftest.py from docs/bench/drills.json -->\n"
                          + hosts + end + rest.split(end, 1)[1])


def host_table(drills: dict) -> str:
    """The "lose any host" drill (test_lose_any_host.py) as one row per host."""
    rows = [d for name, d in drills.items() if name.startswith("test_lose_any_host[")]
    if not rows:
        return ""
    out = ["Each server host powered off for 60 s (`lab.py stop`, then `start`) under reads, searches and "
           "uploads through the virtual IP. Targets: 0 documents and 0 writes lost, failures over within 30 s "
           "of the power-off, back in its place without anyone acting.", "",
           "| host | groups | result | requests | failed (read/search/upload) | failures until (s after power-off) "
           "| uploads 201 | documents lost | writes lost | rejoined by itself (s after boot) | when |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d in rows:
        kinds = d.get("failed_by_kind", {})
        out.append(f"| {d['host']} | {', '.join(d.get('groups', []))} | {d.get('outcome', '?')}"
                   f"{' — ' + d['why'] if d.get('why') else ''} | {d.get('requests', '')} | {d.get('failed', '')} "
                   f"({kinds.get('read', 0)}/{kinds.get('search', 0)}/{kinds.get('upload', 0)}) | "
                   f"{d.get('recovered_after_s', '')} | {d.get('uploads_201', '')} | {d.get('documents_lost', '')} | "
                   f"{d.get('writes_lost', '')} | {'yes' if d.get('rejoined') else 'no: ' + d.get('not_rejoined', '')}"
                   f"{' (' + str(d['rejoined_after_boot_s']) + ')' if d.get('rejoined') else ''} | "
                   f"{d.get('when', '')[:16]} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    render(json.loads((OUT / "drills.json").read_text())["drills"])
