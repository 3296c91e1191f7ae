"""memory: PSS and RSS per service after the other sections warmed the lab up."""
from __future__ import annotations

import json
import re
import time

from bench.lab import Lab, log, on, remote_script
from bench.report import Row

NAME = "memory"


def measure(lab: Lab) -> dict:
    """Memory per service after the other benchmarks warmed it up: PSS (proportional
    set size: pages shared between processes, such as PostgreSQL's shared buffers or
    the forked gunicorn workers' code, are divided among them, so the sum over a
    unit's processes is its real share) and RSS, summed over the unit's processes."""
    wanted = re.compile(r"^(ai-platform-.*|postgresql@.*|patroni@.*|etcd|pgbackrest|redis@.*|chromadb|nginx|prometheus"
                        r"|prometheus-alertmanager)[.]service$")
    groups = ["app", "db_primary", "db_replicas", "etcd", "backup", "redis", "vector", "lb", "monitoring"]
    hosts = sorted({h for g in groups for h in lab.groups.get(g, [])})
    out = {}
    for host in hosts:
        units = json.loads(on(host, f"python3 - <<'PY'\n{remote_script('memory.py')}\nPY"))
        for unit, v in units.items():
            if wanted.match(unit):
                out[f"{host}:{unit.removesuffix('.service')}"] = {
                    "pss_mib": round(v["pss_kib"] / 1024, 1), "rss_mib": round(v["rss_kib"] / 1024, 1), "processes": v["processes"]}
    out = dict(sorted(out.items()))
    for k, v in out.items():
        log(f"memory {k}: PSS {v['pss_mib']:.0f} MiB, RSS {v['rss_mib']:.0f} MiB, {v['processes']} processes")
    out["idle_cpu"] = _idle_cpu(sorted(set(lab.groups.get("etcd", []) + lab.groups.get("db_primary", [])
                                           + lab.groups.get("db_replicas", []))))
    return out


def _idle_cpu(hosts: list[str], secs: int = 60) -> dict:
    """CPU of the high-availability daemons (etcd, Patroni) on an idle cluster: the user and
    system time of each unit's main process (/proc/PID/stat) over secs seconds, as a share
    of one core. Not systemd's CPUUsageNSec: the lab's hosts have no CPU accounting (their
    systemd gets no cpu controller), and it would count Patroni's PostgreSQL too."""
    read = ("for u in etcd.service $(systemctl list-units --plain --no-legend 'patroni@*.service' | awk '{print $1}'); do "
            "p=$(systemctl show -p MainPID --value \"$u\"); [ \"${p:-0}\" -gt 0 ] || continue; "
            "awk -v u=\"${u%.service}\" -v hz=\"$(getconf CLK_TCK)\" '{sub(/.*[)] /, \"\"); print u, hz, $12 + $13}' /proc/$p/stat; done")

    def sample() -> dict:
        got = {}
        for h in hosts:
            for line in on(h, read).splitlines():
                unit, hz, ticks = line.split()
                got[f"{h}:{unit}"] = int(ticks) / int(hz)
        return got
    before = sample()
    time.sleep(secs)
    after = sample()
    out = {k: round((after[k] - v) / secs * 100, 2) for k, v in before.items() if k in after}
    log(f"memory: idle CPU over {secs} s (% of one core): {out}")
    if hosts and not out:
        raise RuntimeError(f"memory: no etcd or Patroni process found on {', '.join(hosts)}")
    return out


def rows(res: dict) -> list[Row]:
    m = res.get(NAME)
    if not m:
        return []
    out = [Row("memory per service after warm-up (host:unit PSS / RSS in MiB, summed over the unit's processes; PSS "
               "divides shared pages such as PostgreSQL's shared buffers among the processes)", "reported",
               ", ".join(f"{k} {v['pss_mib']:.0f} / {v['rss_mib']:.0f}" for k, v in m.items() if k != "idle_cpu"))]
    if m.get("idle_cpu"):
        out.append(Row("CPU of etcd and Patroni on an idle cluster (user + system time of each main process over 60 s, "
                       "% of one core)",
                       "reported", ", ".join(f"{k} {v} %" for k, v in m["idle_cpu"].items())))
    return out
