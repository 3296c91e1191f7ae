"""HTTP load from a lab host: wrk at saturation, hey at a fixed rate, and the median of runs."""
from __future__ import annotations

import json
import re
import statistics

from bench.lab import on


def post_script(host: str, body: str) -> str:
    """A wrk Lua script on host that sends a JSON POST with this body; its path."""
    on(host, "cat > /tmp/wrk-post.lua <<'EOF'\nwrk.method = 'POST'\nwrk.headers['Content-Type'] = 'application/json'\n"
             f"wrk.body = {json.dumps(body)}\nEOF")
    return "/tmp/wrk-post.lua"


def ms(value: str) -> float:
    """wrk's latency ('812.00us', '1.23ms', '2.01s') in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        raise ValueError(value)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def wrk(host: str, url: str, seconds: int, conns: int, header: str = "", script: str = "") -> dict:
    hdr = (f"-H '{header}'" if header else "") + (f" -s {script}" if script else "")
    out = on(host, f"wrk -t2 -c{conns} -d{seconds}s --latency {hdr} '{url}'", timeout=seconds + 120)
    return parse_wrk(out, host)


def hey(host: str, urls: list[str], rate: float, seconds: int, header: str = "", body: str = "") -> dict:
    """A fixed total rate (hey -q per worker), split over urls run at once; latency
    percentiles of the slowest. hey does not verify TLS certificates."""
    workers = 8
    per = max(1.0, rate / len(urls) / workers)
    opts = f"-z {seconds}s -c {workers} -q {per:.1f}" + (f" -H '{header}'" if header else "")
    if body:
        opts += f" -m POST -T application/json -d '{body}'"
    cmd = " & ".join(f"hey {opts} '{u}' > /tmp/hey-{i}.out 2>&1" for i, u in enumerate(urls)) + " & wait; " + \
        "; ".join(f"echo '=== {i}'; cat /tmp/hey-{i}.out" for i in range(len(urls)))
    out = on(host, cmd, timeout=seconds + 120)
    parts = [p for p in out.split("=== ") if p.strip()]
    res = []
    for part in parts:
        rps = re.search(r"Requests/sec:\s+([\d.]+)", part)
        pct = dict(re.findall(r"^\s+(50|99)% in ([\d.]+) secs", part, re.M))
        codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", part))
        if not rps or set(pct) != {"50", "99"}:
            raise RuntimeError(f"hey on {host} gave no statistics: {part[-1500:]}")
        res.append({"rps": float(rps.group(1)), "p50_ms": float(pct["50"]) * 1000, "p99_ms": float(pct["99"]) * 1000,
                    "non_2xx": sum(int(n) for c, n in codes.items() if not c.startswith("2"))})
    return {"rps": sum(r["rps"] for r in res), "rate_asked": round(rate, 1), "p50_ms": max(r["p50_ms"] for r in res),
            "p99_ms": max(r["p99_ms"] for r in res), "non_2xx": sum(r["non_2xx"] for r in res)}


def parse_wrk(out: str, host: str) -> dict:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    if not rps or set(lat) != {"50", "99"}:
        raise RuntimeError(f"wrk on {host} gave no statistics: {out[-1500:]}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": float(rps.group(1)), "p50_ms": ms(lat["50"]), "p99_ms": ms(lat["99"]),
            "non_2xx": int(bad.group(1)) if bad else 0, "socket_errors": errors.group(0) if errors else ""}


def median_of(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": runs}
