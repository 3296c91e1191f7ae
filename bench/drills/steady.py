"""A steady mixed load through Nginx from the client host while an operation runs
(bench/remote/mixload.py), and what it saw: every request, failures, requests per second.

    load = SteadyLoad(the_lab, "deploy", token, project)
    load.start(); ...the operation...; summary = load.stop()
"""
from __future__ import annotations

import json
import statistics
import time

from conftest import CA, on

from bench.lab import remote_script

# Requests per second of each kind: within what the client may send once exempt from
# Nginx's rate limits, and what the two shared cores serve beside the operation.
RATES = "live=6,list=4,search=3,upload=1"


class SteadyLoad:
    def __init__(self, the_lab, name: str, token: str, project: str, rates: str = RATES) -> None:
        self.lab, self.name, self.token, self.project, self.rates = the_lab, name, token, project, rates

    def start(self, max_seconds: int = 3600) -> None:
        c = self.lab.client
        on(c, f"cat > /tmp/mixload.py <<'PY'\n{remote_script('mixload.py')}\nPY")
        on(c, f"rm -f /tmp/mixload-{self.name}.*; (python3 /tmp/mixload.py {self.name} {self.lab.base} {CA} "
              f"{self.token} {self.project} {self.rates} {max_seconds} > /tmp/mixload-{self.name}.log 2>&1 &)")
        time.sleep(2)

    def stop(self, timeout: float = 120) -> dict:
        """Stop the load, wait for the requests in flight, and sum it up."""
        c = self.lab.client
        on(c, f"touch /tmp/mixload-{self.name}.stop")
        deadline = time.monotonic() + timeout
        while on(c, f"test -f /tmp/mixload-{self.name}.done && echo yes || true").strip() != "yes":
            assert time.monotonic() < deadline, on(c, f"tail -5 /tmp/mixload-{self.name}.log", check=False)
            time.sleep(1)
        rows = [json.loads(ln) for ln in on(c, f"cat /tmp/mixload-{self.name}.jsonl").splitlines() if ln.strip()]
        return summarize(rows)


OK = {"live": {200}, "list": {200}, "search": {200}, "upload": {200, 201}}


def summarize(rows: list[list]) -> dict:
    """rows of [kind, sent, answered, status, error] -> counts, failures, requests per second."""
    assert rows, "the load sent nothing"
    t0 = min(r[1] for r in rows)
    seconds = int(max(r[2] for r in rows) - t0) + 1
    ok_per_s, failed_per_s = [0] * seconds, [0] * seconds
    kinds: dict[str, dict[str, int]] = {}
    failures = []
    for kind, sent, answered, status, error in rows:
        good = status in OK[kind]
        k = kinds.setdefault(kind, {"requests": 0, "failed": 0})
        k["requests"] += 1
        s = int(answered - t0)
        if good:
            ok_per_s[s] += 1
        else:
            k["failed"] += 1
            failed_per_s[s] += 1
            failures.append({"kind": kind, "at_s": round(sent - t0, 1), "status": status, "error": error})
    steady = ok_per_s[1:-1] or ok_per_s  # the first and last seconds are partial
    return {
        "requests": len(rows), "failed": len(failures), "seconds": seconds, "by_kind": kinds,
        "per_second": {"min": min(steady), "median": statistics.median(steady), "max": max(steady)},
        "ok_per_second": ok_per_s, "failed_per_second": failed_per_s, "failures": failures[:20],
    }
