"""deploy: the idempotent re-run of site.yml on the converged lab, with and without the
project's SSH and fact settings, where its time goes, and what one unchanged task costs."""
from __future__ import annotations

import configparser
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.lab import REPO, Lab, cpu_run, log, on
from bench.report import Row

NAME = "deploy"


def options(ap) -> None:
    ap.add_argument("--deploy-runs", type=int, default=2, help="idempotent site.yml re-runs (median reported)")


# The connection strategies compared: Ansible's own (linear, over SSH with pipelining and
# ControlPersist) and Mitogen for Ansible (plugins/strategy/mitogen_linear.py), each set for
# the run by environment, whatever ansible.cfg says.
STRATEGIES = {
    "ssh": {"ANSIBLE_STRATEGY": "linear"},
    "mitogen": {"ANSIBLE_STRATEGY": "mitogen_linear", "ANSIBLE_STRATEGY_PLUGINS": str(REPO / "plugins/strategy")},
}


def configured_strategy() -> str:
    """Which of STRATEGIES ansible.cfg makes the default."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "ansible.cfg")
    return "mitogen" if cfg.get("defaults", "strategy", fallback="linear").startswith("mitogen") else "ssh"


def measure(lab: Lab) -> dict:
    """The idempotent re-run of site.yml on the converged lab with each connection strategy
    (STRATEGIES), alternately, --deploy-runs times each; once more over SSH without
    pipelining and the fact cache; and what one unchanged task costs with each strategy."""
    def run(env: dict) -> dict:
        return cpu_run(lab.args.inventory, "site.yml", env=env)[0]
    runs: dict[str, list[dict]] = {name: [] for name in STRATEGIES}
    for i in range(lab.args.deploy_runs):
        for name, env in STRATEGIES.items():
            runs[name].append(run(env))
            log(f"deploy idempotent re-run {i + 1} ({name}): {runs[name][-1]['seconds']} s, changed={runs[name][-1]['changed']}")
    # ControlPersist stays on: without it every task opens a new SSH connection,
    # and the firewall's `ufw limit` on port 22 (6 new connections in 30 s per
    # source) refuses them. Measured: the run fails with "Connection refused".
    plain = run({**STRATEGIES["ssh"], "ANSIBLE_PIPELINING": "False", "ANSIBLE_CACHE_PLUGIN": "memory", "ANSIBLE_GATHERING": "implicit"})
    log(f"deploy without pipelining and fact cache: {plain['seconds']} s")
    per = {name: {"median_s": statistics.median(r["seconds"] for r in rs), "runs": rs, "changed": max(r["changed"] for r in rs),
                  "module_cost": module_cost(lab, STRATEGIES[name])} for name, rs in runs.items()}
    default = configured_strategy()
    return {"hosts": len(lab.addr), "default_strategy": default, "strategies": per,
            "idempotent_rerun_s": per[default]["median_s"], "idempotent_runs": runs[default],
            "changed": max(p["changed"] for p in per.values()),
            "mitogen_speedup": per["ssh"]["median_s"] / per["mitogen"]["median_s"],
            "without_tuning_s": plain["seconds"], "speedup_from_tuning": plain["seconds"] / per["ssh"]["median_s"],
            "module_cost": per[default]["module_cost"]}


MODULE_TASKS = {
    "stat": "ansible.builtin.stat: {path: /etc/hostname}",
    "template": "ansible.builtin.template: {src: /etc/hostname, dest: /tmp/bench-module-cost, mode: '0644'}",
    "systemd_service": "ansible.builtin.systemd_service: {name: ssh.service, state: started}",
    "apt": "ansible.builtin.apt: {name: openssl, state: present}",
    "debug": "ansible.builtin.debug: {msg: control node only}",
}


def module_cost(lab: Lab, env: dict, n: int = 20) -> dict:
    """What one task costs on one host when nothing changes: a playbook with the task n + 1
    times minus the same with it once, divided by n (so ansible-playbook's start is left
    out): wall seconds, control-node CPU and host CPU per task. The template task's source
    is the control node's /etc/hostname (any small file)."""
    host, out = lab.lb, {}
    tmp = Path(tempfile.mkdtemp(prefix="bench-module-cost-"))
    try:
        for name, task in MODULE_TASKS.items():
            runs = {}
            # The one-task playbook twice: its first run may change something (the template's
            # file), and only unchanged tasks are compared.
            for count in (1, 1, n + 1):
                book = tmp / f"{name}-{count}.yml"
                # become, as every play of site.yml: the lab logs in as deploy, a sudo user.
                book.write_text(f"- hosts: {host}\n  become: true\n  gather_facts: false\n  tasks:\n"
                                + "".join(f"    - name: {name} {i}\n      {task}\n" for i in range(count)))
                runs[count], _ = cpu_run(lab.args.inventory, str(book), env=env)
                if env["ANSIBLE_STRATEGY"].startswith("mitogen"):
                    # Mitogen opens a new SSH connection per run (no ControlPersist to reuse):
                    # the firewall's `ufw limit` on 22 refuses the 6th within 30 s from one
                    # address (seen: the bench's 6th short run refused, 5 Dec).
                    time.sleep(6)
            out[name] = {k: round((runs[n + 1][k] - runs[1][k]) / n, 3)
                         for k in ("seconds", "control_cpu_s", "hosts_cpu_s") if k in runs[1]}
            log(f"deploy: one {name} task on {host} ({env['ANSIBLE_STRATEGY']}): {out[name]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        on(host, "rm -f /tmp/bench-module-cost", check=False)
    return out


LABEL = {"ssh": "plain SSH (strategy linear, pipelining, ControlPersist)", "mitogen": "Mitogen (strategy mitogen_linear)"}


def _cpu(runs: list[dict], median: float) -> str:
    """Where the run nearest the median spent its time: CPU of the control node and of the lab hosts."""
    r = min(runs, key=lambda x: abs(x["seconds"] - median))
    if "cpu_floor_s" not in r:
        return ""
    slowest = "; slowest tasks: " + ", ".join(r["slowest_tasks"][:3]) if r.get("slowest_tasks") else ""
    return (f"; control node {r['control_cpu_s']:.0f} CPU-s + hosts {r['hosts_cpu_s']:.0f} CPU-s for {r['host_task_results']} "
            f"task results, floor {r['cpu_floor_s']:.0f} s" + slowest)


def _module_cost(mc: dict) -> str:
    return "; ".join(f"{k} {v['seconds'] * 1000:.0f} / {v['control_cpu_s'] * 1000:.0f} / {v.get('hosts_cpu_s', 0) * 1000:.0f} ms"
                     for k, v in mc.items())


def rows(res: dict) -> list[Row]:
    d, c = res.get(NAME), res.get("converge")
    if not d:
        return []
    default = d.get("default_strategy", "ssh")
    # Results from before both strategies were measured hold the default's runs only.
    per = d.get("strategies") or {default: {"median_s": d["idempotent_rerun_s"], "runs": d["idempotent_runs"],
                                            "changed": d["changed"], "module_cost": d.get("module_cost")}}
    out = []
    for name, s in per.items():
        mark = " (the default: ansible.cfg)" if name == default else ""
        each = ", ".join(f"{r['seconds']:.0f}" for r in s["runs"])
        out.append(Row(f"site.yml idempotent re-run (lab, {d.get('hosts', 8)} hosts), {LABEL[name]}{mark}: median of {len(s['runs'])} runs, "
                       "changed tasks; where its CPU went and the floor that sets on the machine's cores", "≤ 45 s; changed=0",
                       f"{s['median_s']:.0f} s (runs {each}), changed={s['changed']}"
                       + _cpu(s["runs"], s["median_s"]), s["median_s"] <= 45 and s["changed"] == 0))
    if "mitogen_speedup" in d:
        out.append(Row("Mitogen vs plain SSH, the same idempotent re-runs alternated in one run", "faster (ratio > 1)",
                       f"{per['ssh']['median_s']:.0f} s vs {per['mitogen']['median_s']:.0f} s = {d['mitogen_speedup']:.2f}×",
                       d["mitogen_speedup"] > 1))
    if c:
        r = d["idempotent_rerun_s"] / c["first_converge_s"]
        out.append(Row(f"idempotent re-run ({LABEL[default]}) vs first converge", "≤ 0.25×", f"{r:.2f}×", r <= 0.25))
    out.append(Row("plain SSH without pipelining and fact cache (ControlPersist stays: `ufw limit` on 22 refuses new connections)",
                   "slower than with them (ratio > 1)",
                   f"{d['without_tuning_s']:.0f} s = {d['speedup_from_tuning']:.2f}× the plain SSH re-run", d["speedup_from_tuning"] > 1))
    for name, s in per.items():
        if s.get("module_cost"):
            out.append(Row(f"one unchanged task on one host (the lb), {LABEL[name]}: wall / control-node CPU / host CPU, each a "
                           "playbook with the task 21 times minus once, over 20", "reported", _module_cost(s["module_cost"])))
    return out
