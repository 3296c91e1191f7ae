"""Runs on a freshly booted lab host (stdlib only): replays every `apt-get install` command
line that site.yml ran on this host (JSON list in argv[1], from its history.log), in order;
prints the seconds, the count and the failures as JSON."""
import json
import subprocess
import sys
import time

lines = json.loads(sys.argv[1])
t0, failed = time.monotonic(), []
for line in lines:
    r = subprocess.run(line.split(), env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                       capture_output=True, text=True)
    if r.returncode:
        failed.append([line[-200:], r.stderr[-300:]])
print(json.dumps({"seconds": round(time.monotonic() - t0, 1), "transactions": len(lines), "failed": failed}))
