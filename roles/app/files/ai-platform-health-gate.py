#!/usr/bin/python3
"""The app role's health gate (installed as /usr/local/sbin/ai-platform-health-gate).

Polls the API's /health on this host until it answers 200, and fails as soon as
it is clear that it will not:

* a real deadline (--timeout), each request with its own --request-timeout;
* the API unit restarted by systemd while the gate waits (its NRestarts grew):
  a release whose workers cannot boot makes gunicorn exit and systemd restart
  it in a loop. Waiting out the deadline would add minutes to a failed deploy.
  NRestarts is compared with its value when the gate started: an explicit
  restart does not always set it back to 0 (seen: 2 after a rollback restart).

On failure it prints why and the unit's last journal lines (what the operator
needs to see). Standard library only: it runs with the system's python3.
"""
import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request


def restarts(unit: str) -> int:
    out = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", unit],
                         capture_output=True, text=True, check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def journal(unit: str, lines: int = 25) -> str:
    return subprocess.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-iso"],
                          capture_output=True, text=True, check=False).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--timeout", type=float, required=True, help="seconds until the gate fails")
    ap.add_argument("--request-timeout", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--unit", required=True, help="the API's systemd unit")
    args = ap.parse_args()

    deadline = time.monotonic() + args.timeout
    before = restarts(args.unit)
    last = "no answer yet"
    while True:
        try:
            with urllib.request.urlopen(args.url, timeout=args.request_timeout) as resp:
                body = resp.read().decode(errors="replace")
                if resp.status == 200:
                    print(body)
                    return 0
                last = f"HTTP {resp.status}: {body[:500]}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}"
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        n = restarts(args.unit) - before
        if n > 0:
            why = f"{args.unit} crashed and was restarted by systemd {n} time(s) while the gate waited"
            break
        if time.monotonic() >= deadline:
            why = f"{args.url} did not answer 200 within {args.timeout:.0f} s"
            break
        time.sleep(args.interval)
    print(json.dumps({"health_gate": "failed", "why": why, "last_answer": last}))
    print(f"--- last lines of the journal of {args.unit}:\n{journal(args.unit)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
