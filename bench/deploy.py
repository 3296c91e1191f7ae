"""deploy: the idempotent re-run of site.yml on the converged lab, with and without the
project's SSH and fact settings, where its time goes, and what one unchanged task costs."""
from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

from bench.lab import Lab, cpu_run, log, on

NAME = "deploy"


def options(ap) -> None:
    ap.add_argument("--deploy-runs", type=int, default=2, help="idempotent site.yml re-runs (median reported)")


def measure(lab: Lab) -> dict:
    """The idempotent re-run of site.yml on the converged lab, with the project's
    SSH/fact settings and without pipelining and the fact cache."""
    def run(extra_env: dict) -> dict:
        return cpu_run(lab.args.inventory, "site.yml", env=extra_env)[0]
    tuned = [run({}) for _ in range(lab.args.deploy_runs)]
    for i, t in enumerate(tuned):
        log(f"deploy idempotent re-run {i + 1}: {t['seconds']} s, changed={t['changed']}")
    # ControlPersist stays on: without it every task opens a new SSH connection,
    # and the firewall's `ufw limit` on port 22 (6 new connections in 30 s per
    # source) refuses them. Measured: the run fails with "Connection refused".
    plain = run({"ANSIBLE_PIPELINING": "False", "ANSIBLE_CACHE_PLUGIN": "memory", "ANSIBLE_GATHERING": "implicit"})
    log(f"deploy without pipelining and fact cache: {plain['seconds']} s")
    med = statistics.median(t["seconds"] for t in tuned)
    return {"idempotent_rerun_s": med, "idempotent_runs": tuned, "changed": max(t["changed"] for t in tuned),
            "without_tuning_s": plain["seconds"], "speedup_from_tuning": plain["seconds"] / med,
            "module_cost": module_cost(lab)}


MODULE_TASKS = {
    "stat": "ansible.builtin.stat: {path: /etc/hostname}",
    "template": "ansible.builtin.template: {src: /etc/hostname, dest: /tmp/bench-module-cost, mode: '0644'}",
    "systemd_service": "ansible.builtin.systemd_service: {name: ssh.service, state: started}",
    "apt": "ansible.builtin.apt: {name: openssl, state: present}",
    "debug": "ansible.builtin.debug: {msg: control node only}",
}


def module_cost(lab: Lab, n: int = 20) -> dict:
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
                book.write_text(f"- hosts: {host}\n  gather_facts: false\n  tasks:\n"
                                + "".join(f"    - name: {name} {i}\n      {task}\n" for i in range(count)))
                runs[count], _ = cpu_run(lab.args.inventory, str(book))
            out[name] = {k: round((runs[n + 1][k] - runs[1][k]) / n, 3)
                         for k in ("seconds", "control_cpu_s", "hosts_cpu_s") if k in runs[1]}
            log(f"deploy: one {name} task on {host}: {out[name]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        on(host, "rm -f /tmp/bench-module-cost", check=False)
    return out


def rows(res: dict) -> list[tuple[str, str, str]]:
    d, c = res.get(NAME), res.get("converge")
    if not d:
        return []
    out = [("site.yml idempotent re-run (lab, 8 hosts)", "≤ 45 s", f"{d['idempotent_rerun_s']:.0f} s, changed={d['changed']}"
            + (" (miss)" if d["idempotent_rerun_s"] > 45 else ""))]
    if c:
        r = d["idempotent_rerun_s"] / c["first_converge_s"]
        out.append(("idempotent re-run vs first converge", "≤ 0.25×", f"{r:.2f}×" + (" (miss)" if r > 0.25 else "")))
    out.append(("same without pipelining and fact cache (ControlPersist stays: `ufw limit` on 22 refuses new connections)",
                "slower (ratio)", f"{d['without_tuning_s']:.0f} s = {d['speedup_from_tuning']:.2f}× the tuned run"))
    runs = [r for r in d["idempotent_runs"] if "cpu_floor_s" in r]
    if runs:
        r = min(runs, key=lambda x: abs(x["seconds"] - d["idempotent_rerun_s"]))
        out.append(("where the idempotent re-run's time goes: CPU of the control node and of the lab hosts, task results "
                    "on hosts (ok + changed), and the floor they set if all of it ran in parallel on the machine's cores",
                    "reported", f"control node {r['control_cpu_s']:.0f} CPU-s + hosts {r['hosts_cpu_s']:.0f} CPU-s for "
                    f"{r['host_task_results']} task results; floor {r['cpu_floor_s']:.0f} s vs {r['seconds']:.0f} s measured"))
    mc = d.get("module_cost")
    if mc:
        out.append(("one unchanged task on one host (the lb): wall / control-node CPU / host CPU, each a playbook with the "
                    "task 21 times minus once, over 20", "reported",
                    "; ".join(f"{k} {v['seconds'] * 1000:.0f} / {v['control_cpu_s'] * 1000:.0f} / "
                              f"{v.get('hosts_cpu_s', 0) * 1000:.0f} ms" for k, v in mc.items())))
    return out
