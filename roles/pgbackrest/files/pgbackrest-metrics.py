#!/usr/bin/python3
"""ExecStopPost of the pgBackRest backup and verify units: node exporter textfile metrics.

    pgbackrest-metrics OUT.prom KIND      (KIND: full, diff, incr or verify)

Records the run that just ended (systemd passes SERVICE_RESULT and EXIT_STATUS),
keeps the other kinds' lines from the previous file, and adds what the
repository holds now (`pgbackrest info`, as postgres): the newest backup of
each type and the stanza's status. Written atomically (temporary file, rename).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

RUN = re.compile(r'^pgbackrest_run_last_(\w+)\{kind="(\w+)"\} (\S+)$')


def previous_runs(path):
    runs = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                m = RUN.match(line.strip())
                if m:
                    runs.setdefault(m.group(2), {})[m.group(1)] = m.group(3)
    except FileNotFoundError:
        pass
    return runs


def repository():
    """The stanzas as `pgbackrest info` sees them, or None when it failed."""
    try:
        out = subprocess.run(["pgbackrest", "--output=json", "info"], user="postgres", capture_output=True,
                             text=True, timeout=120, check=True).stdout
        return json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def main():
    out, kind = sys.argv[1], sys.argv[2]
    if not os.path.isdir(os.path.dirname(out)):
        return 0
    now = int(time.time())
    runs = previous_runs(out)
    run = runs.setdefault(kind, {})
    run["timestamp_seconds"] = str(now)
    if os.environ.get("SERVICE_RESULT") == "success":
        run["exit_status"] = "0"
        run["success_timestamp_seconds"] = str(now)
    else:
        status = os.environ.get("EXIT_STATUS", "1")
        run["exit_status"] = status if status.isdigit() and status != "0" else "1"

    lines = []

    def metric(name, help_text, samples):
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)

    for field, help_text in (("timestamp_seconds", "End of the last run, Unix time."),
                             ("success_timestamp_seconds", "End of the last successful run, Unix time."),
                             ("exit_status", "Exit status of the last run (0: success).")):
        samples = [(f'{{kind="{k}"}}', r[field]) for k, r in sorted(runs.items()) if field in r]
        metric(f"pgbackrest_run_last_{field}", help_text, samples)

    stanzas = repository()
    metric("pgbackrest_info_ok", "1 when `pgbackrest info` answered.", [("", 0 if stanzas is None else 1)])
    for stanza in stanzas or []:
        name = stanza.get("name", "")
        metric("pgbackrest_stanza_status", "Status code of the stanza (0: ok).",
               [(f'{{stanza="{name}"}}', stanza.get("status", {}).get("code", -1))])
        newest, count = {}, {}
        for b in stanza.get("backup", []):
            t = b.get("type", "")
            count[t] = count.get(t, 0) + 1
            stop = b.get("timestamp", {}).get("stop", 0)
            if stop >= newest.get(t, {}).get("timestamp", {}).get("stop", 0):
                newest[t] = b
        metric("pgbackrest_backup_count", "Backups in the repository, by type.",
               [(f'{{stanza="{name}",type="{t}"}}', n) for t, n in sorted(count.items())])
        metric("pgbackrest_backup_last_timestamp_seconds", "End of the newest backup of each type, Unix time.",
               [(f'{{stanza="{name}",type="{t}"}}', b["timestamp"]["stop"]) for t, b in sorted(newest.items())])
        metric("pgbackrest_backup_last_size_bytes", "Database size of the newest backup of each type.",
               [(f'{{stanza="{name}",type="{t}"}}', b.get("info", {}).get("size", 0)) for t, b in sorted(newest.items())])
        metric("pgbackrest_backup_last_repo_size_bytes", "Size in the repository of the newest backup of each type.",
               [(f'{{stanza="{name}",type="{t}"}}', b.get("info", {}).get("repository", {}).get("delta", 0))
                for t, b in sorted(newest.items())])

    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(out) + ".", dir=os.path.dirname(out))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
