"""memory: PSS and RSS per service after the other sections warmed the lab up."""
from __future__ import annotations

import json
import re

from bench.lab import Lab, log, on, remote_script
from bench.report import Row

NAME = "memory"


def measure(lab: Lab) -> dict:
    """Memory per service after the other benchmarks warmed it up: PSS (proportional
    set size: pages shared between processes, such as PostgreSQL's shared buffers or
    the forked gunicorn workers' code, are divided among them, so the sum over a
    unit's processes is its real share) and RSS, summed over the unit's processes."""
    wanted = re.compile(r"^(ai-platform-.*|postgresql@.*|redis@.*|chromadb|nginx|prometheus|prometheus-alertmanager)[.]service$")
    groups = ["app", "db_primary", "db_replicas", "redis", "vector", "lb", "monitoring"]
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
    return out


def rows(res: dict) -> list[Row]:
    m = res.get(NAME)
    if not m:
        return []
    return [Row("memory per service after warm-up (host:unit PSS / RSS in MiB, summed over the unit's processes; PSS "
             "divides shared pages such as PostgreSQL's shared buffers among the processes)", "reported",
             ", ".join(f"{k} {v['pss_mib']:.0f} / {v['rss_mib']:.0f}" for k, v in m.items()))]
