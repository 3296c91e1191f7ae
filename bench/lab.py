"""The lab as the benchmark sections see it: paths, the inventory, commands on lab hosts
(tests/lab/lab.py exec), playbook runs with their CPU, and `Lab`, the context every
section gets (the inventory's hosts and addresses, the command-line options, an API
token, the client exempt from Nginx's rate limit).

The drills (bench/drills/) use the same helpers.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "inventories/lab/hosts.yml"
LAB = [sys.executable, str(REPO / "tests/lab/lab.py")]
OUT = REPO / "docs/bench"
LOGS = REPO / ".cache/bench-logs"  # whole output of the playbooks the benchmarks run
REMOTE = Path(__file__).resolve().parent / "remote"  # scripts that run on lab hosts


def log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def remote_script(name: str) -> str:
    """The text of bench/remote/NAME (a script run on a lab host)."""
    return (REMOTE / name).read_text()


def inventory(path: Path = INVENTORY) -> dict:
    out = subprocess.run(["ansible-inventory", "-i", str(path), "--list"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def lab(*args: str, timeout: int = 600, check: bool = True) -> str:
    """tests/lab/lab.py with these arguments (stop, start, cut, heal, ...); its stdout."""
    r = subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 and check:
        raise RuntimeError(f"lab.py {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


def run_playbook(inventory: Path, path: str, *extra: str, env: dict | None = None) -> tuple[float, str]:
    """ansible-playbook PATH (from the repository's root) with the project's ansible.cfg; the whole
    output is kept in LOGS. Returns its seconds and stdout; raises when the run fails."""
    t = time.monotonic()
    r = subprocess.run(["ansible-playbook", "-i", str(inventory), str(REPO / path), *extra],
                       env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), **(env or {})),
                       capture_output=True, text=True, cwd=REPO)
    secs = round(time.monotonic() - t, 1)
    LOGS.mkdir(parents=True, exist_ok=True)
    saved = LOGS / f"{time.strftime('%H%M%S')}-{Path(path).stem}.log"
    saved.write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"{path} {extra} failed (whole output: {saved}): {r.stdout[-3000:]}")
    return secs, r.stdout


def lab_cpu_s() -> float | None:
    """CPU seconds used so far by every lab host together (the cgroup that tests/lab/lab.py's
    Docker engine puts them under), or None where that cgroup is not found."""
    netns = os.environ.get("AIPL_LAB_NETNS", "aipl-lab")
    v1 = Path(f"/sys/fs/cgroup/cpuacct/{netns}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for v2 in (Path(f"/sys/fs/cgroup/{netns}/cpu.stat"), Path(f"/sys/fs/cgroup/unified/{netns}/cpu.stat")):
        if v2.exists():
            return int(re.search(r"^usage_usec (\d+)", v2.read_text(), re.M).group(1)) / 1e6
    return None


def recap(stdout: str) -> list[tuple[str, int, int]]:
    """The PLAY RECAP of an ansible-playbook output: (host, ok, changed) per host."""
    return [(h, int(ok), int(ch)) for h, ok, ch in re.findall(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)", stdout, re.M)]


def cpu_run(inventory: Path, path: str, *extra: str, env: dict | None = None) -> tuple[dict, str]:
    """run_playbook, plus where its CPU went: the control node (ansible-playbook and every process
    it waited for: its workers and their ssh clients) and the lab hosts; and the floor these set
    on this machine's cores when both ran perfectly in parallel. Returns that dict and stdout."""
    ru0, lab0 = resource.getrusage(resource.RUSAGE_CHILDREN), lab_cpu_s()
    secs, stdout = run_playbook(inventory, path, *extra, env=env)
    ru1, lab1 = resource.getrusage(resource.RUSAGE_CHILDREN), lab_cpu_s()
    out = {"seconds": secs, "control_cpu_s": round(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 1)}
    if lab0 is not None and lab1 is not None:
        out["hosts_cpu_s"] = round(lab1 - lab0, 1)
        out["cpu_floor_s"] = round((out["control_cpu_s"] + out["hosts_cpu_s"]) / (os.cpu_count() or 1), 1)
    # From the recap: changed tasks everywhere, and task results on hosts (ok + changed,
    # the control node's own play left out).
    rows = recap(stdout)
    out["changed"] = sum(ch for _, _, ch in rows)
    out["host_task_results"] = sum(ok + ch for h, ok, ch in rows if h != "localhost")
    out["slowest_tasks"] = slowest_tasks(stdout)
    return out, stdout


def slowest_tasks(stdout: str, n: int = 10) -> list[str]:
    """The n slowest tasks of a run, from profile_tasks's TASKS RECAP (ansible.cfg enables it):
    "role : task name 12.34s", the slowest first."""
    at = stdout.rfind("TASKS RECAP")
    if at < 0:
        return []
    recap = stdout[at:].splitlines()[3:3 + n]
    return [re.sub(r"\s*-{3,}\s*", " ", x).strip() for x in recap if x.strip()]


def drop_ssh_masters() -> None:
    """End Ansible's ControlPersist masters (their hosts are about to be replaced)."""
    for sock in (Path.home() / ".ansible/cp").glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "lab"], capture_output=True, timeout=30)


def on(host: str, cmd: str, timeout: int = 900, check: bool = True) -> str:
    """Run a shell command on a lab host; its stdout (stdout and stderr when check is off)."""
    r = subprocess.run([*LAB, "exec", host, "--", "bash", "-c", cmd],
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{host}: {cmd!r} exited {r.returncode}: {r.stdout[-1000:]} {r.stderr[-2000:]}")
    return r.stdout if check else r.stdout + r.stderr


def put_file(host: str, path: str, text: str) -> str:
    """Write text to path on a lab host; the path."""
    on(host, f"cat > {path} <<'BENCH-EOF'\n{text}\nBENCH-EOF")
    return path


def app_run(host: str, script: str, cfg: dict, work: str, env: str = "", timeout: int = 3600) -> dict:
    """A script with the app's venv, user and environment (as its units run), on an app host:
    it gets the path of `cfg` as JSON and prints one line "BENCH-RESULT <json>", returned."""
    name = f"{work}/{cfg.get('name', 'run')}"
    on(host, f"mkdir -p {work} && chmod 755 {work} && cat > {name}.py <<'PY'\n{script}\nPY\n"
             f"cat > {name}.json <<'EOF'\n{json.dumps(cfg)}\nEOF\nchmod 644 {name}.py {name}.json")
    res = on(host, "systemd-run --quiet --wait --pipe --collect -p User=aiplatform -p Group=aiplatform "
                   f"-p EnvironmentFile=/etc/ai-platform/app.env -p WorkingDirectory=/var/lib/ai-platform {env} "
                   f"/opt/ai-platform/current/venv/bin/python {name}.py {name}.json", timeout=timeout)
    line = [ln for ln in res.splitlines() if ln.startswith("BENCH-RESULT ")]
    if not line:
        raise RuntimeError(f"{host}: {script[:40]!r} gave no result: {res[-2000:]}")
    return json.loads(line[-1].removeprefix("BENCH-RESULT "))


class Partial(Exception):
    """A section that failed after it had measured something: `raise Partial(results) from
    error`; the runner keeps those results and lists the section as failed."""

    def __init__(self, results: dict) -> None:
        super().__init__("partial results")
        self.results = results


def keeps_partial(measure):
    """For a section's measure(lab, out) that fills out as it goes: returns measure(lab) ->
    out, raising Partial(out) when it fails, so that what it measured is still written."""
    @functools.wraps(measure)
    def run(lab: Lab) -> dict:
        out: dict = {}
        try:
            measure(lab, out)
        except Exception as exc:
            raise Partial(out) from exc
        return out
    return run


def pct(values: list, q: float) -> float:
    """The q-quantile of values (nearest rank), nan when there are none."""
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))] if v else float("nan")


class Lab:
    """What every section works with: the inventory's hosts and addresses and the options."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        inv = inventory(args.inventory)
        self.inv = inv
        self.hostvars = inv["_meta"]["hostvars"]
        self.groups = {g: v.get("hosts", []) for g, v in inv.items() if g != "_meta"}
        self.lb, self.client = self.first("lb"), self.first("lab_clients")
        self.app_hosts = self.groups.get("app", [])
        self.addr = {h: v["ansible_host"] for h, v in self.hostvars.items()}
        self.app_port = int(self.hostvars.get(self.app_hosts[0], {}).get("app_port", 8000)) if self.app_hosts else 8000

    def first(self, group: str) -> str | None:
        return (self.groups.get(group) or [None])[0]

    def playbook(self, path: str, *extra: str, env: dict | None = None) -> tuple[float, str]:
        """run_playbook with this run's inventory."""
        return run_playbook(self.args.inventory, path, *extra, env=env)

    def token(self) -> str:
        """A new user's API token, through Nginx from the client host."""
        lb = self.addr[self.lb]
        email = f"bench-{time.time_ns()}@example.com"
        body = json.dumps({"email": email, "password": "bench-password-0123456789"})
        curl = f"curl -ks -H 'Content-Type: application/json' -d '{body}' https://{lb}/api/v1/auth"
        on(self.client, f"{curl}/register >/dev/null")
        time.sleep(1.5)  # the /api/ limiter: stay well inside it
        return json.loads(on(self.client, f"{curl}/login"))["access_token"]

    def exempt(self) -> dict:
        """The nginx role's variable that exempts the client host from the rate limits."""
        return {"nginx_rate_limit_exempt": [f"{self.addr[self.client]}/32"]}

    @contextlib.contextmanager
    def lb_vars(self, **extra):
        """Nginx with these role variables while the block runs (the nginx role through
        playbooks/loadbalancer.yml with them as extra variables, as an operator would set
        them), then with the inventory's settings again."""
        self.playbook("playbooks/loadbalancer.yml", "-e", json.dumps(extra))
        try:
            yield
        finally:
            self.playbook("playbooks/loadbalancer.yml")

    def exempt_client(self):
        """The client host exempt from Nginx's rate limits while the block runs."""
        return self.lb_vars(**self.exempt())
