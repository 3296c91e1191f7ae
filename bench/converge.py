"""converge: the first converge of site.yml on freshly booted hosts against its floor,
the same package work alone (apt-get update, the same `apt-get install` commands, the first
security upgrade) on the same fresh hosts."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import threading
import time

from bench.lab import REPO, Lab, cpu_run, drop_ssh_masters, lab_cpu_s, log, on, remote_script
from bench.lab import lab as lab_tool
from bench.report import Row

NAME = "converge"


# The hardening role's first security upgrade, as it runs it: one dpkg run. history.log records
# `/usr/bin/unattended-upgrade` with or without the option, and the daily timer's later runs
# the same way; only the first is the converge's.
FIRST_SECURITY_UPGRADE = "unattended-upgrade --no-minimal-upgrade-steps"


def package_work(history: str) -> list[str]:
    """The package transactions site.yml ran on a host, from its /var/log/apt/history.log, in
    order: `apt-get update` (site.yml refreshes the lists first), every `apt-get install`
    command line as it ran, and the first security upgrade (FIRST_SECURITY_UPGRADE)."""
    work = ["apt-get update"]
    for m in re.findall(r"^Commandline: (\S*(?:apt-get (?:.* )?install .*|unattended-upgrade\b.*))$", history, re.M):
        if "unattended-upgrade" not in m.split()[0]:
            work.append(re.sub(r"^/usr/bin/", "", m))
        elif FIRST_SECURITY_UPGRADE not in work:
            work.append(FIRST_SECURITY_UPGRADE)
    return work if len(work) > 1 else []


def measure(lab: Lab) -> dict:
    """#1 of issue 8: the first converge of site.yml on freshly booted hosts (apt cache
    warm: the lab's relay) against its floor, the bare `apt-get install` of the same
    packages on the same fresh hosts. The packages: the lists' update, every
    `apt-get install` command line that site.yml ran and its first security upgrade,
    read from /var/log/apt/history.log of the converged lab (package_work), replayed
    in order with the same options and versions. All hosts at once, as
    Ansible runs them, so the floor is the slowest host. The lab is booted fresh twice
    (lab.py rm + up): for the floor, then for the converge, which leaves it deployed
    for the other sections. Facts cache and SSH connections start empty."""
    hosts = sorted(lab.addr)
    installs = {h: package_work(on(h, "cat /var/log/apt/history.log 2>/dev/null", check=False)) for h in hosts}
    out: dict = {"transactions": {h: len(v) for h, v in installs.items()}, "floor_work": "update, installs, first security upgrade"}

    def fresh() -> float:
        drop_ssh_masters()
        t = time.monotonic()
        lab_tool("rm", *hosts)
        lab_tool("up", "-i", str(lab.args.inventory), timeout=1800)
        return round(time.monotonic() - t, 1)

    out["boot_s"] = fresh()
    floor = {}
    script = remote_script("apt_floor.py")

    def replay(h: str) -> None:
        floor[h] = json.loads(on(h, f"python3 -c {shlex.quote(script)} {shlex.quote(json.dumps(installs[h]))}",
                                 timeout=3600).strip().splitlines()[-1])
    t, cpu0 = time.monotonic(), lab_cpu_s()
    threads = [threading.Thread(target=replay, args=(h,)) for h in hosts if installs[h]]
    for x in threads:
        x.start()
    for x in threads:
        x.join()
    out["floor_wall_s"], cpu1 = round(time.monotonic() - t, 1), lab_cpu_s()
    if cpu0 is not None and cpu1 is not None:
        # The hosts' CPU for the package work alone: what of the converge's is not Ansible's.
        out["floor_hosts_cpu_s"] = round(cpu1 - cpu0, 1)
    out["floor_per_host"] = floor
    out["floor_s"] = max(f["seconds"] for f in floor.values())
    failed = {h: f["failed"] for h, f in floor.items() if f["failed"]}
    log(f"converge: apt floor {out['floor_s']} s (slowest host; wall {out['floor_wall_s']} s)"
        + (f", failed: {failed}" if failed else ""))
    out["boot_again_s"] = fresh()
    shutil.rmtree(REPO / ".cache/ansible-facts", ignore_errors=True)
    cpu, _ = cpu_run(lab.args.inventory, "site.yml")
    # Its slowest tasks are in first_converge_cpu (cpu_run's slowest_tasks).
    out["first_converge_s"], out["first_converge_cpu"] = cpu["seconds"], cpu
    out["ratio_vs_floor"] = out["first_converge_s"] / out["floor_s"]
    log(f"converge: first converge {out['first_converge_s']} s = {out['ratio_vs_floor']:.2f}x the apt floor")
    return out


def rows(res: dict) -> list[Row]:
    c = res.get(NAME)
    if not c:
        return []
    out = [Row(f"first converge of site.yml on the {len(c['transactions'])} freshly booted lab hosts (warm apt cache) vs the floor: "
               + ("the same package work alone (apt-get update, the `apt-get install` commands, the first security upgrade)"
                  if c.get("floor_work") else "the same `apt-get install` commands alone")
               + " on the same fresh hosts (slowest host)", "≤ 1.5×",
               f"{c['first_converge_s']:.0f} s vs {c['floor_s']:.0f} s = {c['ratio_vs_floor']:.2f}×", c["ratio_vs_floor"] <= 1.5)]
    cc = c.get("first_converge_cpu", {})
    if "cpu_floor_s" in cc:
        out.append(Row("where the first converge's time goes (as for the re-run below)", "reported",
                    f"control node {cc['control_cpu_s']:.0f} CPU-s + hosts {cc['hosts_cpu_s']:.0f} CPU-s for "
                    f"{cc['host_task_results']} task results; floor {cc['cpu_floor_s']:.0f} s vs {cc['seconds']:.0f} s measured"
                    + (f"; the package work alone took the hosts {c['floor_hosts_cpu_s']:.0f} CPU-s" if "floor_hosts_cpu_s" in c else "")))
    return out
