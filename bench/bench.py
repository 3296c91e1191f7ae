#!/usr/bin/env python3
"""Benchmarks on the lab that `make lab` deployed (`make bench` runs this after
deploying it). Writes docs/bench/results.json and docs/bench/results.md.

Every lab host shares this machine's cores, so absolute numbers say little:
each benchmark reports the median of several runs and the ratios it was built
for, measured in the same run.

    bench/bench.py [--runs 3] [--seconds 10] [--only serving,ratelimits,memory,deploy]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "inventories/lab/hosts.yml"
LAB = [sys.executable, str(REPO / "tests/lab/lab.py")]
OUT = REPO / "docs/bench"


def log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def inventory() -> dict:
    out = subprocess.run(["ansible-inventory", "-i", str(INVENTORY), "--list"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def on(host: str, cmd: str, timeout: int = 900) -> str:
    """Run a shell command on a lab host; its stdout."""
    r = subprocess.run(LAB + ["exec", host, "--", "bash", "-c", cmd],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{host}: {cmd!r} exited {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


def ms(value: str) -> float:
    """wrk's latency ('812.00us', '1.23ms', '2.01s') in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        raise ValueError(value)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def wrk(host: str, url: str, seconds: int, conns: int, header: str = "") -> dict:
    hdr = f"-H '{header}'" if header else ""
    out = on(host, f"wrk -t2 -c{conns} -d{seconds}s --latency {hdr} '{url}'", timeout=seconds + 120)
    return parse_wrk(out, host)


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


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        inv = inventory()
        hv = inv["_meta"]["hostvars"]
        first = lambda group: inv[group]["hosts"][0]  # noqa: E731
        self.lb, self.client = first("lb"), first("lab_clients")
        self.app_hosts = inv["app"]["hosts"]
        self.addr = {h: v["ansible_host"] for h, v in hv.items()}
        self.inv = inv
        self.results: dict = {}

    # --- serving ------------------------------------------------------------------
    def serving(self) -> None:
        """/health/live and an authenticated call: through Nginx+TLS from the client,
        and the same gunicorn workers hit directly (from the load balancer: the
        firewall lets only it reach the app port)."""
        a = self.args
        for host in {self.client, self.lb}:
            on(host, "command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null")
        lb = self.addr[self.lb]
        token = self.token()
        auth = f"Authorization: Bearer {token}"
        apps = [self.addr[h] for h in self.app_hosts]
        cases = {
            # An explicit :443: wrk resolves "https" through /etc/services, which minimal hosts lack.
            "nginx_tls_live": lambda: wrk(self.client, f"https://{lb}:443/health/live", a.seconds, a.conns),
            "direct_live": lambda: self.direct("/health/live", apps),
            "direct_auth_me": lambda: self.direct("/api/v1/auth/me", apps, auth),
        }
        out = {}
        for name, fn in cases.items():
            runs = []
            for i in range(a.runs):
                runs.append(fn())
                log(f"serving {name} run {i + 1}: {runs[-1]['rps']:.0f} req/s, p99 {runs[-1]['p99_ms']:.1f} ms, non-2xx {runs[-1]['non_2xx']}")
            out[name] = median_of(runs)
        out["ratio_nginx_tls_vs_direct"] = out["nginx_tls_live"]["rps"] / out["direct_live"]["rps"]
        self.results["serving"] = out

    def direct(self, path: str, apps: list[str], header: str = "") -> dict:
        """wrk against every app host's port at once, from the load balancer; req/s summed."""
        a = self.args
        hdr = f"-H '{header}'" if header else ""
        conns = max(2, a.conns // len(apps))
        cmd = " & ".join(f"wrk -t1 -c{conns} -d{a.seconds}s --latency {hdr} 'http://{ip}:8000{path}' > /tmp/wrk-{ip}.out 2>&1"
                         for ip in apps) + " & wait; " + "; ".join(f"echo '=== {ip}'; cat /tmp/wrk-{ip}.out" for ip in apps)
        out = on(self.lb, cmd, timeout=a.seconds + 120)
        parts = [p for p in out.split("=== ") if p.strip()]
        per = []
        for part in parts:
            per.append(parse_wrk(part, self.lb))
        return {"rps": sum(p["rps"] for p in per), "p50_ms": max(p["p50_ms"] for p in per),
                "p99_ms": max(p["p99_ms"] for p in per), "non_2xx": sum(p["non_2xx"] for p in per)}

    def token(self) -> str:
        lb = self.addr[self.lb]
        email = f"bench-{int(time.time())}@example.com"
        body = json.dumps({"email": email, "password": "bench-password-0123456789"})
        curl = f"curl -ks -H 'Content-Type: application/json' -d '{body}' https://{lb}/api/v1/auth"
        on(self.client, f"{curl}/register >/dev/null")
        time.sleep(1.5)  # the /api/ limiter: stay well inside it
        return json.loads(on(self.client, f"{curl}/login"))["access_token"]

    # --- rate limits --------------------------------------------------------------
    def ratelimits(self) -> None:
        """Requests sent faster than the limit from one client: the accepted count
        (anything but 429) against burst + rate x time."""
        lb = self.addr[self.lb]
        hv = self.inv["_meta"]["hostvars"][self.lb]
        api_rate = float(str(hv.get("nginx_api_rate", "10r/s")).rstrip("r/s"))
        api_burst = int(hv.get("nginx_api_burst", 20))
        up_rate = float(str(hv.get("nginx_upload_rate", "1r/s")).rstrip("r/s"))
        up_burst = int(hv.get("nginx_upload_burst", 5))
        script = (REPO / "bench/ratecheck.py").read_text()
        on(self.client, f"cat > /tmp/ratecheck.py <<'PY'\n{script}\nPY")
        out = {}
        for name, url, method, rate, burst, send in [
            ("api", f"https://{lb}:443/api/v1/auth/me", "GET", api_rate, api_burst, api_rate * 5),
            ("upload", f"https://{lb}:443/api/v1/projects/00000000-0000-0000-0000-000000000000/documents", "POST",
             up_rate, up_burst, up_rate * 10),
        ]:
            time.sleep(burst / rate + 2)  # let the bucket drain from earlier requests
            r = json.loads(on(self.client, f"python3 /tmp/ratecheck.py '{url}' {send} {self.args.seconds} {method}"))
            accepted = sum(v for k, v in r["statuses"].items() if k != "429")
            expected = burst + rate * r["sent_for_s"]
            out[name] = {"sent": r["sent"], "statuses": r["statuses"], "accepted": accepted,
                         "expected": round(expected, 1), "accepted_vs_expected": accepted / expected,
                         "only_429_beyond": set(r["statuses"]) <= {"429", "401", "404", "422"}}
            log(f"ratelimits {name}: {accepted} accepted of {r['sent']}, expected {expected:.1f}; {r['statuses']}")
        self.results["ratelimits"] = out

    # --- memory -------------------------------------------------------------------
    def memory(self) -> None:
        """Resident memory per service (the VmRSS of its processes, summed by systemd unit)
        after the other benchmarks warmed them up."""
        wanted = re.compile(r"^(ai-platform-.*|postgresql@.*|redis@.*|chromadb|nginx|prometheus|prometheus-alertmanager)[.]service$")
        groups = ["app", "db_primary", "db_replicas", "redis", "vector", "lb", "monitoring"]
        hosts = sorted({h for g in groups for h in self.inv.get(g, {}).get("hosts", [])})
        out = {}
        for host in hosts:
            for line in on(host, "ps -eo rss=,unit=").splitlines():
                kb, _, unit = line.strip().partition(" ")
                unit = unit.strip()
                if wanted.match(unit):
                    key = f"{host}:{unit.removesuffix('.service')}"
                    out[key] = out.get(key, 0) + int(kb) / 1024
        out = {k: round(v, 1) for k, v in sorted(out.items())}
        for k, v in out.items():
            log(f"memory {k}: {v:.0f} MiB")
        self.results["memory_mib"] = out

    # --- deploy -------------------------------------------------------------------
    def deploy(self) -> None:
        """The idempotent re-run of site.yml on the converged lab, with the project's
        SSH/fact settings and without pipelining and the fact cache."""
        def run(extra_env: dict) -> dict:
            env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), **extra_env)
            t0 = time.monotonic()
            r = subprocess.run(["ansible-playbook", "-i", str(INVENTORY), str(REPO / "site.yml")],
                               env=env, capture_output=True, text=True, cwd=REPO)
            secs = time.monotonic() - t0
            changed = sum(int(m) for m in re.findall(r"changed=(\d+)", "\n".join(
                ln for ln in r.stdout.splitlines() if " ok=" in ln)))
            if r.returncode != 0:
                raise RuntimeError(f"site.yml failed: {r.stdout[-3000:]}")
            return {"seconds": round(secs, 1), "changed": changed}
        tuned = [run({}) for _ in range(self.args.deploy_runs)]
        for i, t in enumerate(tuned):
            log(f"deploy idempotent re-run {i + 1}: {t['seconds']} s, changed={t['changed']}")
        # ControlPersist stays on: without it every task opens a new SSH connection,
        # and the firewall's `ufw limit` on port 22 (6 new connections in 30 s per
        # source) refuses them. Measured: the run fails with "Connection refused".
        plain = run({"ANSIBLE_PIPELINING": "False", "ANSIBLE_CACHE_PLUGIN": "memory", "ANSIBLE_GATHERING": "implicit"})
        log(f"deploy without pipelining and fact cache: {plain['seconds']} s")
        med = statistics.median(t["seconds"] for t in tuned)
        self.results["deploy"] = {"idempotent_rerun_s": med, "idempotent_runs": tuned, "changed": max(t["changed"] for t in tuned),
                                  "without_tuning_s": plain["seconds"], "speedup_from_tuning": plain["seconds"] / med}


TARGETS = """| benchmark | target | measured |
| --- | --- | --- |
"""


def markdown(res: dict) -> str:
    rows = []
    s = res.get("serving")
    if s:
        for k in ("nginx_tls_live", "direct_live", "direct_auth_me"):
            rows.append((f"serving `{k}` req/s, p50 / p99", "p99 ≤ 50 ms at half saturation (here: at saturation)",
                         f"{s[k]['rps']:.0f} req/s, {s[k]['p50_ms']:.1f} / {s[k]['p99_ms']:.1f} ms"))
        rows.append(("Nginx+TLS vs the same workers direct (req/s)", "≥ 0.7×", f"{s['ratio_nginx_tls_vs_direct']:.2f}×"))
    rl = res.get("ratelimits")
    if rl:
        for k, v in rl.items():
            rows.append((f"rate limit `{k}`: accepted vs burst + rate × time", "within 10 % (0.9-1.1)",
                         f"{v['accepted']} / {v['expected']} = {v['accepted_vs_expected']:.2f}; rest 429: {v['only_429_beyond']}"))
    d = res.get("deploy")
    if d:
        rows.append(("site.yml idempotent re-run (lab, 8 hosts)", "≤ 45 s", f"{d['idempotent_rerun_s']:.0f} s, changed={d['changed']}"))
        rows.append(("same without pipelining and fact cache (ControlPersist stays: `ufw limit` on 22 refuses new connections)", "slower (ratio)",
                     f"{d['without_tuning_s']:.0f} s = {d['speedup_from_tuning']:.2f}× the tuned run"))
    m = res.get("memory_mib")
    if m:
        rows.append(("resident memory after warm-up (MiB, host:unit; VmRSS summed over the unit's processes, so "
                     "PostgreSQL's shared buffers count once per backend)", "reported", ", ".join(f"{k} {v:.0f}" for k, v in m.items())))
    return TARGETS + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per serving case (median reported)")
    ap.add_argument("--seconds", type=int, default=10, help="length of each load run")
    ap.add_argument("--conns", type=int, default=32, help="wrk connections")
    ap.add_argument("--deploy-runs", type=int, default=2, help="idempotent site.yml re-runs (median reported)")
    ap.add_argument("--only", default="serving,ratelimits,memory,deploy")
    ap.add_argument("--render", action="store_true", help="only write results.md again from results.json")
    args = ap.parse_args()
    if args.render:
        write(json.loads((OUT / "results.json").read_text()))
        return
    bench = Bench(args)
    t0 = time.time()
    for name in args.only.split(","):
        log(f"--- {name}")
        getattr(bench, name)()
    res = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cores": os.cpu_count(), "kernel": platform.release(), "load_at_end": os.getloadavg()},
           "seconds": round(time.time() - t0), **bench.results}
    write(res)


def write(res: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    md = (f"# Benchmark results\n\nMeasured {res['when']} on the `make lab` lab ({res['machine']['cores']} cores, "
          f"every lab host shares them; load average at the end {res['machine']['load_at_end'][0]:.1f}). "
          "Medians of several runs; ratios from the same run. Written by `make bench` (bench/bench.py); raw numbers in "
          "[results.json](results.json).\n\n" + (f"{res['note']}\n\n" if res.get("note") else "") + markdown(res))
    (OUT / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
