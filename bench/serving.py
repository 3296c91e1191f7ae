"""serving: requests per second and latency through Nginx with TLS and straight to the
app's workers, all from the same client host with the same wrk threads and connections,
at saturation (wrk) and at half of that rate (hey, fixed rate); in the same run the
seed's way on the same app hosts and Nginx answering by itself.

Every load run counts the answers that were not 2xx and the requests that got no answer
(socket errors); the table shows them, and a row with any fails its target."""
from __future__ import annotations

import contextlib
import json
import re
import time

from bench.lab import Lab, log, on
from bench.loadgen import failures, hey, median_of, post_script, wrk, wrk_many
from bench.report import Row

NAME = "serving"
# The seed's Nginx upstream (the deployment guide's nginx.conf), in front of one
# `uvicorn app.main:app` per app host (its Dockerfile's CMD); proxy_pass without
# proxy_http_version 1.1 and keepalive: a new connection to the app per request.
SEED_UPSTREAM = "least_conn;"
SEED_SERVER = "max_fails=3 fail_timeout=30s"


def measure(lab: Lab) -> dict:
    """/health/live, an authenticated call (/auth/me) and a search, each through Nginx+TLS
    and straight to the same gunicorn workers (every app host's port at once, the wrk
    threads and connections split among them), all from the client host: at saturation
    (wrk, --conns connections, 2 threads) and at half of that rate (hey). The client is
    exempt from Nginx's rate limits and may reach the app port while this runs
    (nginx_rate_limit_exempt, firewall_extra_rules: the roles' own variables).

    Then per host: /health/live with the first app host alone behind Nginx
    (nginx_upstream_servers) and straight to it, the same wrk command. Then the seed's
    way on the same app hosts (one uvicorn process on each, Nginx without upstream
    keepalive), with both hosts and with the first alone, and Nginx answering `return
    200` itself (the ceiling)."""
    a = lab.args
    on(lab.client, "command -v wrk >/dev/null && command -v hey >/dev/null || "
                   "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk hey >/dev/null")
    lb, port = lab.addr[lab.lb], lab.app_port
    token = lab.token()
    auth = f"Authorization: Bearer {token}"
    project = search_project(lab, token)
    out: dict = {"client": lab.client, "wrk": f"2 threads, {a.conns} connections, {a.seconds} s; direct: split among the app hosts",
                 "search_warm_up": warm_up_search(lab, token, project)}
    apps = [f"http://{lab.addr[h]}:{port}" for h in lab.app_hosts]
    site = f"https://{lb}:443"  # an explicit :443: wrk resolves "https" through /etc/services, which minimal hosts lack
    search = (f"/api/v1/projects/{project}/search", json.dumps({"query": "how does the pump move water", "top_k": 5}))
    lua = post_script(lab.client, search[1])
    calls = {"live": ("/health/live", "", "", ""), "auth_me": ("/api/v1/auth/me", auth, "", ""),
             "search": (search[0], auth, lua, search[1])}
    cases = {}
    for call, (path, hdr, script, body) in calls.items():
        cases[f"nginx_tls_{call}"] = (lambda p=path, h=hdr, s=script: wrk(lab.client, site + p, a.seconds, a.conns, h, s),
                                      lambda rate, p=path, h=hdr, b=body: hey(lab.client, [site + p], rate, a.seconds, h, b))
        cases[f"direct_{call}"] = (lambda p=path, h=hdr, s=script: wrk_many(lab.client, [u + p for u in apps], a.seconds, a.conns, h, s),
                                   lambda rate, p=path, h=hdr, b=body: hey(lab.client, [u + p for u in apps], rate, a.seconds, h, b))
    one = lab.app_hosts[0]
    with client_reaches_app_port(lab):
        with lab.lb_vars(**lab.exempt()):
            run_cases(lab, cases, out)
        with lab.lb_vars(**lab.exempt(), nginx_upstream_servers=[f"{lab.addr[one]}:{port}"]):
            out["nginx_tls_live_one_host"] = saturate(lab, "nginx_tls_live_one_host", lambda: wrk(lab.client, site + "/health/live",
                                                                                                      a.seconds, a.conns))
        out["direct_live_one_host"] = saturate(lab, "direct_live_one_host", lambda: wrk(lab.client, f"{apps[0]}/health/live",
                                                                                        a.seconds, a.conns))
    out["one_host"] = one
    for call in calls:
        out[f"ratio_nginx_tls_vs_direct{'' if call == 'live' else '_' + call}"] = ratio(
            out[f"nginx_tls_{call}"]["rps"], out[f"direct_{call}"]["rps"])
    out["ratio_nginx_tls_vs_direct_one_host"] = ratio(out["nginx_tls_live_one_host"]["rps"], out["direct_live_one_host"]["rps"])
    out.update(references(lab))
    # Against the seed's best run (its back-to-back runs decay: TIME_WAIT on the load balancer).
    out["ratio_vs_seed"] = ratio(out["nginx_tls_live"]["rps"], best(out["seed_live"]))
    out["ratio_vs_seed_one_host"] = ratio(out["nginx_tls_live_one_host"]["rps"], best(out["seed_live_one_host"]))
    out["ratio_vs_ceiling"] = ratio(out["nginx_tls_live"]["rps"], out["nginx_return_200"]["rps"])
    out["app_workers_per_host"] = int(on(one, "systemctl show -p MainPID --value ai-platform-api | xargs -I{} pgrep -c -P {}").strip())
    out["app_hosts"] = len(lab.app_hosts)
    return out


def warm_up_search(lab: Lab, token: str, project: str) -> list[float]:
    """Rounds of 8 searches at once through Nginx until one round's slowest answers within a
    second: every API worker loads its embedder at its first search (on this busy lab that
    took 37 s under load, and a saturation run measured nothing), which is not what a
    steady site serves. The slowest seconds of each round, for the record."""
    body = json.dumps({"query": "warm up the embedder", "top_k": 1})
    curl = (f"curl -ks -o /dev/null -w '%{{time_total}}\\n' -m 120 -H 'Authorization: Bearer {token}' "
            f"-H 'Content-Type: application/json' -d '{body}' https://{lab.addr[lab.lb]}:443/api/v1/projects/{project}/search")
    rounds: list[float] = []
    for _ in range(20):
        times = on(lab.client, " & ".join([curl] * 8) + " & wait", timeout=300).split()
        rounds.append(round(max(float(t) for t in times), 2))
        if rounds[-1] < 1:
            break
        time.sleep(2)  # the /api/ rate limit: 8 in a burst of 20, refilled at 10 r/s
    log(f"serving: search warm-up rounds, slowest answer each: {rounds}")
    return rounds


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def best(r: dict) -> float:
    return max(x["rps"] for x in r["runs"])


def saturate(lab: Lab, name: str, run) -> dict:
    """--runs runs of a wrk load; their median (and every run)."""
    runs = []
    for i in range(lab.args.runs):
        runs.append(run())
        log(f"serving {name} run {i + 1}: {runs[-1]['rps']:.0f} req/s, p99 {runs[-1]['p99_ms']:.1f} ms, "
            f"non-2xx {runs[-1]['non_2xx']}, socket errors {runs[-1]['socket_errors']}")
    return median_of(runs)


def run_cases(lab: Lab, cases: dict, out: dict) -> None:
    for name, (at_saturation, at_rate) in cases.items():
        out[name] = saturate(lab, name, at_saturation)
        if not out[name]["rps"]:
            log(f"serving {name}: nothing answered at saturation, no half-rate runs")
            continue
        half = []
        for i in range(lab.args.runs):
            half.append(at_rate(out[name]["rps"] / 2))
            log(f"serving {name} at half ({out[name]['rps'] / 2:.0f} req/s) run {i + 1}: {half[-1]['rps']:.0f} req/s, "
                f"p50 {half[-1]['p50_ms']:.1f} ms, p99 {half[-1]['p99_ms']:.1f} ms, non-2xx {half[-1]['non_2xx']}, "
                f"socket errors {half[-1]['socket_errors']}")
        out[name]["half"] = median_of(half)


@contextlib.contextmanager
def client_reaches_app_port(lab: Lab):
    """The client host may reach the app port of the app hosts while the block runs (the
    firewall role with one more rule in firewall_extra_rules, on the app hosts), then the
    inventory's rules again."""
    rule = {"name": "bench-direct", "port": lab.app_port, "hosts_group": "app", "from_cidrs": [f"{lab.addr[lab.client]}/32"]}
    extra = lab.hostvars[lab.app_hosts[0]].get("firewall_extra_rules") or []
    lab.playbook("playbooks/firewall.yml", "--limit", "app", "-e", json.dumps({"firewall_extra_rules": [*extra, rule]}))
    try:
        yield
    finally:
        lab.playbook("playbooks/firewall.yml", "--limit", "app")


def search_project(lab: Lab, token: str) -> str:
    """A project with one indexed document, for the search call."""
    lb = lab.addr[lab.lb]
    auth = f"-H 'Authorization: Bearer {token}'"
    curl = f"curl -ks {auth} https://{lb}:443/api/v1/projects"
    project = json.loads(on(lab.client, f"{curl} -H 'Content-Type: application/json' -d '{{\"name\": \"bench-serving\"}}'"))["id"]
    text = "\n\n".join(f"Paragraph {p}: the pump of loop {p} moves water through pipe {p * 7} and valve {p * 3}." for p in range(40))
    on(lab.client, f"cat > /tmp/bench-search.txt <<'EOF'\n{text}\nEOF")
    time.sleep(1.5)
    doc = json.loads(on(lab.client, f"{curl}/{project}/documents -F file=@/tmp/bench-search.txt"))["id"]
    for _ in range(120):
        time.sleep(1)
        if json.loads(on(lab.client, f"{curl}/{project}/documents/{doc}"))["status"] == "ready":
            return project
    raise RuntimeError("the search document was not indexed within 120 s")


def references(lab: Lab) -> dict:
    """The seed's way and the ceiling, through the same Nginx and TLS from the client:
    extra server blocks on the load balancer's port 443 picked by Host. The seed's: its
    upstream (least_conn, no keepalive: HTTP/1.0 to the app) in front of one `uvicorn
    app.main:app` process on every app host, in place of their gunicorn for the
    measurement; seed.bench with every app host, seed1.bench with the first alone. The
    ceiling: `return 200` from Nginx. Everything is put back afterwards."""
    a = lab.args
    lb, port = lab.addr[lab.lb], lab.app_port
    ips = [lab.addr[h] for h in lab.app_hosts]
    site = on(lab.lb, "cat /etc/nginx/conf.d/ai-platform.conf")
    cert = re.search(r"^\s*ssl_certificate\s+(\S+);", site, re.M).group(1)
    key = re.search(r"^\s*ssl_certificate_key\s+(\S+);", site, re.M).group(1)
    tls = f"listen 443 ssl; ssl_certificate {cert}; ssl_certificate_key {key};"
    proxy = ("location / { proxy_pass http://$upstream; proxy_set_header Host $host;"
             " proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme; }")
    conf = ""
    for name, servers in (("bench_seed", ips), ("bench_seed1", ips[:1])):
        conf += f"upstream {name} {{ {SEED_UPSTREAM} " + " ".join(f"server {ip}:{port} {SEED_SERVER};" for ip in servers) + " }\n"
    conf += (f"server {{ {tls} server_name seed.bench; {proxy.replace('$upstream', 'bench_seed')} }}\n"
             f"server {{ {tls} server_name seed1.bench; {proxy.replace('$upstream', 'bench_seed1')} }}\n"
             f"server {{ {tls} server_name ceiling.bench; access_log off; location / {{ default_type text/plain; return 200 'ok'; }} }}\n")
    venv = "/opt/ai-platform/current/venv"
    out = {}
    try:
        on(lab.lb, f"cat > /etc/nginx/conf.d/zz-bench-references.conf <<'EOF'\n{conf}EOF\nnginx -t -q && systemctl reload nginx")
        for app, ip in zip(lab.app_hosts, ips):
            on(app, "systemctl stop ai-platform-api && systemd-run --unit=bench-seed-uvicorn --uid=aiplatform --gid=aiplatform "
                    "-p EnvironmentFile=/etc/ai-platform/app.env -p WorkingDirectory=/var/lib/ai-platform "
                    f"{venv}/bin/uvicorn app.main:app --host {ip} --port {port} --no-access-log")
        for ip in ips:
            for _ in range(60):
                if on(lab.lb, f"curl -s -o /dev/null -w '%{{http_code}}' http://{ip}:{port}/health/live", check=False) == "200":
                    break
                time.sleep(1)
        def run(host: str) -> dict:
            if host.startswith("seed"):
                # Without upstream keepalive every request leaves a socket in TIME_WAIT on the
                # load balancer (60 s): back-to-back runs ran out of local ports and measured
                # 1210, 497 and 246 req/s. Each run starts with the ports free again.
                on(lab.lb, "for _ in $(seq 90); do [ $(ss -Htan state time-wait | wc -l) -lt 1000 ] && break; sleep 1; done")
            return wrk(lab.client, f"https://{lb}:443/health/live", a.seconds, a.conns, f"Host: {host}")
        for name, host in (("seed_live", "seed.bench"), ("seed_live_one_host", "seed1.bench"), ("nginx_return_200", "ceiling.bench")):
            out[name] = saturate(lab, name, lambda h=host: run(h))
    finally:
        on(lab.lb, "rm -f /etc/nginx/conf.d/zz-bench-references.conf && systemctl reload nginx", check=False)
        for app in lab.app_hosts:
            on(app, "systemctl stop bench-seed-uvicorn; systemctl reset-failed bench-seed-uvicorn; systemctl start ai-platform-api",
               check=False)
    return out


def _times(r: float | None) -> str:
    return "n/a (nothing answered)" if r is None else f"{r:.2f}×"


def _fails(r: dict) -> tuple[str, bool]:
    """'non-2xx N, socket errors N' over a result's runs, and whether both are 0."""
    bad, errors = failures(r)
    return f"non-2xx {bad}, socket errors {errors}", bad == 0 and errors == 0


def rows(res: dict) -> list[Row]:
    s = res.get(NAME)
    if not s:
        return []
    out = []
    runs = len(s["nginx_tls_live"].get("runs", [])) if "nginx_tls_live" in s else 0
    for k in ("nginx_tls_live", "direct_live", "nginx_tls_auth_me", "direct_auth_me", "nginx_tls_search", "direct_search"):
        if k not in s:
            continue
        text, clean = _fails(s[k])
        out.append(Row(f"serving `{k}` at saturation (wrk, {runs} runs): req/s, p50 / p99; failed requests over the runs",
                       "reported; every answer 2xx", f"{s[k]['rps']:.0f} req/s, {s[k]['p50_ms']:.1f} / {s[k]['p99_ms']:.1f} ms; {text}",
                       clean))
        if "half" in s[k]:
            h = s[k]["half"]
            text, clean = _fails(h)
            out.append(Row(f"serving `{k}` at half of that rate (hey, fixed rate): p50 / p99", "p99 ≤ 50 ms; every answer 2xx",
                           f"{h['rps']:.0f} req/s, {h['p50_ms']:.1f} / {h['p99_ms']:.1f} ms; {text}", h["p99_ms"] <= 50 and clean))
    for key, what in (("", "`/health/live`"), ("_auth_me", "`/auth/me`"), ("_search", "search")):
        if f"ratio_nginx_tls_vs_direct{key}" in s:
            r = s[f"ratio_nginx_tls_vs_direct{key}"]
            how = ("same client host, same wrk threads and connections" if "client" in s
                   else "an older run: the direct runs from the load balancer, one wrk thread per app host")
            out.append(Row(f"{what}: Nginx+TLS vs the same workers direct (req/s; {how})",
                           "≥ 0.7×", _times(r), r is not None and r >= 0.7))
    if "nginx_tls_live_one_host" in s:
        text, clean = _fails(s["nginx_tls_live_one_host"])
        text2, clean2 = _fails(s["direct_live_one_host"])
        r = s["ratio_nginx_tls_vs_direct_one_host"]
        out.append(Row(f"`/health/live`, one app host ({s['one_host']}): Nginx+TLS vs the same workers direct, the same wrk command",
                       "≥ 0.7×; every answer 2xx", f"{s['nginx_tls_live_one_host']['rps']:.0f} vs {s['direct_live_one_host']['rps']:.0f} "
                       f"req/s = {_times(r)}; {text} / {text2}", r is not None and r >= 0.7 and clean and clean2))
    if "seed_live" in s:
        workers = f"{s['app_workers_per_host']} gunicorn workers per app host"
        for key, ours, scope in (("", "nginx_tls_live", f"both app hosts ({s.get('app_hosts', 2)}) behind Nginx"),
                                 ("_one_host", "nginx_tls_live_one_host", f"one app host ({s.get('one_host', '')}) behind Nginx")):
            seed = s.get(f"seed_live{key}")
            if not seed:
                continue
            b = best(seed)
            r = s[ours]["rps"] / b if b else None
            text, clean = _fails(seed)
            old = "" if key or "seed_live_one_host" in s else " (this run's seed had uvicorn on the last app host only)"
            seed_runs = ", ".join(f"{r['rps']:.0f}" for r in seed["runs"])
            out.append(Row(f"`/health/live` through Nginx+TLS, {scope}: this deployment ({workers}) vs the seed's way (Nginx without "
                           f"upstream keepalive, one uvicorn process per app host){old}", "≥ 2×",
                           f"{s[ours]['rps']:.0f} vs {b:.0f} req/s (the seed's best run; its runs: "
                           f"{seed_runs}; {text}) = {_times(r)}", r is not None and r >= 2))
        out.append(Row("ceiling: Nginx answering `return 200` itself over TLS", "reported",
                       f"{s['nginx_return_200']['rps']:.0f} req/s; this deployment reaches {_times(s['ratio_vs_ceiling'])} of it"))
    return out
