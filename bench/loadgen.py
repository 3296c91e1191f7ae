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


THREADS = 2  # wrk threads of every saturation run (the client host's share of the cores)


def wrk_cmd(url: str, seconds: int, conns: int, threads: int = THREADS, header: str = "", script: str = "") -> str:
    hdr = (f" -H '{header}'" if header else "") + (f" -s {script}" if script else "")
    return f"wrk -t{threads} -c{conns} -d{seconds}s --latency{hdr} '{url}'"


def wrk(host: str, url: str, seconds: int, conns: int, header: str = "", script: str = "") -> dict:
    """wrk from host against url at saturation: THREADS threads, conns connections."""
    return parse_wrk(on(host, wrk_cmd(url, seconds, conns, header=header, script=script), timeout=seconds + 120), host)


def wrk_many(host: str, urls: list[str], seconds: int, conns: int, header: str = "", script: str = "") -> dict:
    """wrk from host against several urls at once, THREADS threads and conns connections split
    evenly among them (so the same load as one wrk run), summed (sum_of)."""
    threads, per = max(1, THREADS // len(urls)), max(1, conns // len(urls))
    cmd = " & ".join(f"{wrk_cmd(u, seconds, per, threads, header, script)} > /tmp/wrk-{i}.out 2>&1" for i, u in enumerate(urls))
    out = on(host, cmd + " & wait; " + "; ".join(f"echo '=== {i}'; cat /tmp/wrk-{i}.out" for i in range(len(urls))),
             timeout=seconds + 120)
    return sum_of([parse_wrk(part, host) for part in out.split("=== ") if part.strip()])


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
        # Requests that got no answer: "Error distribution:" lines, "  [count]\tGet ...: error".
        errors = part.split("Error distribution:", 1)[1] if "Error distribution:" in part else ""
        res.append({"rps": float(rps.group(1)), "p50_ms": float(pct["50"]) * 1000, "p99_ms": float(pct["99"]) * 1000,
                    "non_2xx": sum(int(n) for c, n in codes.items() if not c.startswith("2")),
                    "socket_errors": sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", errors, re.M))})
    return {"rps": sum(r["rps"] for r in res), "rate_asked": round(rate, 1), "p50_ms": max(r["p50_ms"] for r in res),
            "p99_ms": max(r["p99_ms"] for r in res), "non_2xx": sum(r["non_2xx"] for r in res),
            "socket_errors": sum(r["socket_errors"] for r in res)}


def parse_wrk(out: str, host: str) -> dict:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    if not rps or set(lat) != {"50", "99"}:
        raise RuntimeError(f"wrk on {host} gave no statistics: {out[-1500:]}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    # "Socket errors: connect 0, read 3, write 0, timeout 12" (only printed when there were some)
    errors = {k: int(v) for k, v in re.findall(r"(connect|read|write|timeout) (\d+)", (re.findall(r"Socket errors:.*", out) or [""])[0])}
    return {"rps": float(rps.group(1)), "p50_ms": ms(lat["50"]), "p99_ms": ms(lat["99"]),
            "non_2xx": int(bad.group(1)) if bad else 0, "socket_errors": sum(errors.values()), "socket_error_kinds": errors}


def failures(r: dict) -> tuple[int, int]:
    """(non-2xx answers, socket errors) of a load result, summed over its runs (and its
    half-rate runs' own entry is left out); older results kept socket errors as wrk's text."""
    runs = r.get("runs") or [r]

    def errors(x: dict) -> int:
        e = x.get("socket_errors", 0)
        return e if isinstance(e, int) else sum(int(n) for n in re.findall(r"\d+", e or ""))
    return sum(int(x.get("non_2xx", 0)) for x in runs), sum(errors(x) for x in runs)


def sum_of(parts: list[dict]) -> dict:
    """Load results of several wrk processes run at once: req/s and failures summed, the
    slowest one's latency."""
    return {"rps": sum(p["rps"] for p in parts), "p50_ms": max(p["p50_ms"] for p in parts),
            "p99_ms": max(p["p99_ms"] for p in parts), "non_2xx": sum(p["non_2xx"] for p in parts),
            "socket_errors": sum(p["socket_errors"] for p in parts)}


def median_of(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": runs}
