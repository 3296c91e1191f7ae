#!/usr/bin/env python3
"""Benchmarks on the lab that `make lab` deployed (`make bench` runs this after
deploying it). Writes docs/bench/results.json and docs/bench/results.md.

Every lab host shares this machine's cores, so absolute numbers say little:
each benchmark reports the median of several runs and the ratios it was built
for, measured in the same run.

    bench/bench.py [--runs 3] [--seconds 10] [--only serving,ratelimits,memory,deploy]
    bench/bench.py --only database [--inventory INVENTORY] [--scale 70]

Each run replaces the sections it measured in results.json and keeps the others.
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


def inventory(path: Path = INVENTORY) -> dict:
    out = subprocess.run(["ansible-inventory", "-i", str(path), "--list"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def on(host: str, cmd: str, timeout: int = 900, check: bool = True) -> str:
    """Run a shell command on a lab host; its stdout (stdout and stderr when check is off)."""
    r = subprocess.run(LAB + ["exec", host, "--", "bash", "-c", cmd],
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{host}: {cmd!r} exited {r.returncode}: {r.stdout[-1000:]} {r.stderr[-2000:]}")
    return r.stdout if check else r.stdout + r.stderr


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
        inv = inventory(args.inventory)
        hv = inv["_meta"]["hostvars"]
        first = lambda group: inv.get(group, {}).get("hosts", [None])[0]  # noqa: E731
        self.lb, self.client = first("lb"), first("lab_clients")
        self.app_hosts = inv.get("app", {}).get("hosts", [])
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

    # --- database -----------------------------------------------------------------
    def database(self) -> None:
        """PostgreSQL: a pgbench database of --scale (70: about 1 GB) on the primary;
        replica replay lag sampled every 0.5 s during a 60 s pgbench write load; the
        backup service on the backup host (the first replica) and playbooks/restore.yml
        into a new database, both timed; the restored copy compared table by table
        (row count and the sum of a 64-bit hash of every row). Cleans up afterwards."""
        primary = self.inv["db_primary"]["hosts"][0]
        replicas = self.inv.get("db_replicas", {}).get("hosts", [])
        backup_host = replicas[0] if replicas else primary
        ver = on(primary, "ls /etc/postgresql").split()[-1]
        bindir = f"/usr/lib/postgresql/{ver}/bin"
        psql = "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d aiplatform"
        pgbench = f"runuser -u postgres -- {bindir}/pgbench"
        out: dict = {"primary": primary, "replicas": replicas, "postgresql": ver, "scale": self.args.scale,
                     "synchronous_standby_names": on(primary, f"{psql} -c 'SHOW synchronous_standby_names'").strip()}
        t0 = time.monotonic()
        on(primary, f"{pgbench} -i -q -s {self.args.scale} aiplatform 2>&1 | tail -2", timeout=3600)
        out["generate_s"] = round(time.monotonic() - t0, 1)
        # The app's role owns them, as it owns its own tables (restore.yml restores as that role).
        on(primary, f"{psql} " + " ".join(f"-c 'ALTER TABLE pgbench_{t} OWNER TO aiplatform'"
                                          for t in ("accounts", "branches", "tellers", "history")))
        out["database_bytes"] = int(on(primary, f"{psql} -c \"SELECT pg_database_size('aiplatform')\""))
        log(f"database: generated {out['database_bytes'] / 2**30:.2f} GiB in {out['generate_s']} s")

        # Lag: the primary's view of each replica, sampled while pgbench writes.
        sample = ("SELECT application_name, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
                  "coalesce(extract(epoch FROM replay_lag), 0) FROM pg_stat_replication")
        secs = 60
        run = (f"(for i in $(seq {secs * 2}); do {psql} -F' ' -c \"{sample}\"; sleep 0.5; done > /tmp/bench-lag.txt) & "
               f"{pgbench} -c 8 -j 2 -T {secs} -P 10 aiplatform 2>&1 | grep -E '^(tps|latency average|number of transactions actually)'; wait")
        pg = on(primary, run, timeout=secs + 600)
        tps = re.search(r"tps = ([\d.]+)", pg)
        lag: dict = {}
        for line in on(primary, "cat /tmp/bench-lag.txt").splitlines():
            name, nbytes, seconds = line.split()
            lag.setdefault(name, {"bytes": [], "seconds": []})
            lag[name]["bytes"].append(int(nbytes))
            lag[name]["seconds"].append(float(seconds))

        def pct(values: list, q: float) -> float:
            v = sorted(values)
            return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]
        out["pgbench"] = {"seconds": secs, "clients": 8, "tps": float(tps.group(1)) if tps else None,
                          "lag": {n: {"samples": len(v["bytes"]), "bytes_p50": pct(v["bytes"], .5), "bytes_p99": pct(v["bytes"], .99),
                                      "seconds_p50": pct(v["seconds"], .5), "seconds_p99": pct(v["seconds"], .99)}
                                  for n, v in sorted(lag.items())}}
        for n, v in out["pgbench"]["lag"].items():
            log(f"database: lag of {n} under pgbench ({out['pgbench']['tps']} tps): p50 {v['bytes_p50']} B / {v['seconds_p50']:.3f} s, "
                f"p99 {v['bytes_p99']} B / {v['seconds_p99']:.3f} s")

        # Backup by its own service, on the backup host once it has replayed everything.
        lsn = on(primary, f"{psql} -c 'SELECT pg_current_wal_lsn()'").strip()
        for _ in range(120):
            if on(backup_host, f"{psql.replace('aiplatform', 'postgres')} -c \"SELECT pg_last_wal_replay_lsn() >= '{lsn}'\"").strip() in ("t", ""):
                break
            time.sleep(1)
        t0 = time.monotonic()
        on(backup_host, "systemctl start postgresql-backup.service", timeout=3600)
        out["backup_s"] = round(time.monotonic() - t0, 1)
        latest = on(backup_host, "ls -1 /var/backups/postgresql | tail -1").strip()
        out["dump_bytes"] = int(on(backup_host, f"stat -c %s /var/backups/postgresql/{latest}/aiplatform.dump"))
        log(f"database: backup {out['backup_s']} s, dump {out['dump_bytes'] / 2**20:.0f} MiB")

        # Restore with the playbook operators use, into a new database.
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
        t0 = time.monotonic()
        r = subprocess.run(["ansible-playbook", "-i", str(self.args.inventory), str(REPO / "playbooks/restore.yml"),
                            "-e", "postgresql_restore_database=bench_restore"], env=env, capture_output=True, text=True, cwd=REPO)
        out["restore_playbook_s"] = round(time.monotonic() - t0, 1)
        if r.returncode != 0:
            raise RuntimeError(f"restore.yml failed: {r.stdout[-3000:]}")
        log(f"database: restore.yml {out['restore_playbook_s']} s")
        same = {}
        for table in ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"):
            q = f"SELECT count(*) || ' ' || coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM {table} t"
            src = on(primary, f"{psql} -c \"{q}\"").strip()
            dst = on(primary, f"{psql.replace('-d aiplatform', '-d bench_restore')} -c \"{q}\"").strip()
            same[table] = {"rows": int(src.split()[0]), "identical": src == dst}
        out["restored_identical"] = same
        log(f"database: restored copy {same}")
        on(primary, f"{psql} -c 'DROP TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history' "
                    f"-c 'DROP DATABASE bench_restore'")
        on(backup_host, f"rm -rf /var/backups/postgresql/{latest}")
        self.results["database"] = out

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
    db = res.get("database")
    if db:
        where = (f"PostgreSQL {db['postgresql']}, primary {db['primary']} and replicas {', '.join(db['replicas'])}"
                 f"{'; synchronous ' + db['synchronous_standby_names'] if db['synchronous_standby_names'] else ', asynchronous'}")
        for n, v in db["pgbench"]["lag"].items():
            rows.append((f"replay lag of {n} during {db['pgbench']['seconds']} s of pgbench ({db['pgbench']['clients']} clients, "
                         f"{db['pgbench']['tps']:.0f} tps; {where})", "p99 < 1 s",
                         f"p50 {v['seconds_p50']:.3f} s / {v['bytes_p50']} B, p99 {v['seconds_p99']:.3f} s / {v['bytes_p99']} B"))
        ok = all(t["identical"] for t in db["restored_identical"].values())
        rows.append((f"backup (pg_dump by the backup service on {db['replicas'][0] if db['replicas'] else db['primary']}) of a "
                     f"{db['database_bytes'] / 2**30:.2f} GiB database (pgbench scale {db['scale']})", "≥ 1 GB, duration reported",
                     f"{db['backup_s']:.0f} s, dump {db['dump_bytes'] / 2**20:.0f} MiB"))
        rows.append(("restore (playbooks/restore.yml into a new database) and row-for-row check", "restored copy identical",
                     f"{db['restore_playbook_s']:.0f} s; {'identical' if ok else 'DIFFERENT'}: "
                     + ", ".join(f"{t} {v['rows']} rows" for t, v in db["restored_identical"].items())))
    return TARGETS + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per serving case (median reported)")
    ap.add_argument("--seconds", type=int, default=10, help="length of each load run")
    ap.add_argument("--conns", type=int, default=32, help="wrk connections")
    ap.add_argument("--deploy-runs", type=int, default=2, help="idempotent site.yml re-runs (median reported)")
    ap.add_argument("--only", default="serving,ratelimits,memory,deploy")
    ap.add_argument("--inventory", type=Path, default=INVENTORY, help="inventory of the lab to measure (database: any with db_primary)")
    ap.add_argument("--scale", type=int, default=70, help="pgbench scale of the database benchmark (70: about 1 GB)")
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
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    machine = {"cores": os.cpu_count(), "kernel": platform.release(), "load_at_end": os.getloadavg()}
    old = json.loads((OUT / "results.json").read_text()) if (OUT / "results.json").exists() else {}
    runs = old.get("runs", {})
    for name in bench.results:
        runs[name] = {"when": when, "inventory": str(args.inventory.resolve().relative_to(REPO)) if args.inventory.resolve().is_relative_to(REPO)
                      else "a Molecule scenario's", "seconds": round(time.time() - t0), "machine": machine}
    write({**old, "when": when, "machine": machine, "runs": runs, **bench.results})


def write(res: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    where = "".join(f"- {name}: {r['when']} on {r['inventory']} (load average at the end {r['machine']['load_at_end'][0]:.1f})\n"
                    for name, r in res.get("runs", {}).items())
    md = (f"# Benchmark results\n\nOn {res['machine']['cores']} cores that every lab host shares. Medians of several runs; "
          "ratios from the same run. Written by `make bench` (bench/bench.py); raw numbers in "
          "[results.json](results.json). Each run replaces only the sections it measured:\n\n" + where + "\n"
          + (f"{res['note']}\n\n" if res.get("note") else "") + markdown(res))
    (OUT / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
