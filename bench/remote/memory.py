"""Runs on a lab host (stdlib only): PSS and RSS of every process, summed per systemd
service (from /proc/PID/cgroup and /proc/PID/smaps_rollup), as JSON."""
import json
import os
import re

out = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            unit = re.search(r"/([^/]+\.service)", f.read())
        with open(f"/proc/{pid}/smaps_rollup") as f:
            roll = f.read()
    except OSError:
        continue
    if not unit:
        continue
    kb = {k: int(v) for k, v in re.findall(r"^(Rss|Pss):\s+(\d+) kB", roll, re.M)}
    u = out.setdefault(unit.group(1), {"rss_kib": 0, "pss_kib": 0, "processes": 0})
    u["rss_kib"] += kb.get("Rss", 0)
    u["pss_kib"] += kb.get("Pss", 0)
    u["processes"] += 1
print(json.dumps(out))
