"""The site as a client on another lab host sees it: TLS, headers, redirects, limits, uploads."""

import json
import time
import uuid

from conftest import BASE, CA, LB, NAME, UPLOAD, curl, lab_host

testinfra_hosts = ["nginx-client"]


def headers_of(client, path="/api/v1/ping", *args):
    out = curl(client, "-D", "-", "-o", "/dev/null", *args, path=path)
    assert out.rc == 0, out.stderr
    lines = out.stdout.splitlines()
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    return status, hdrs


def test_tls_verified_with_the_exported_ca(client):
    out = curl(client, "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}", path="/api/v1/ping")
    assert out.rc == 0, out.stderr
    assert out.stdout == "200 0"


def test_security_headers(client):
    status, h = headers_of(client)
    assert status == 200
    assert h["strict-transport-security"] == "max-age=63072000"
    assert h["x-frame-options"] == "DENY"
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "strict-origin-when-cross-origin"
    assert h["content-security-policy"].startswith("default-src 'none'")
    assert "camera=()" in h["permissions-policy"]
    assert "x-xss-protection" not in h  # deprecated, deliberately not sent
    assert h["server"] == "nginx"  # server_tokens off: no version


def test_headers_on_errors_too(client):
    status, h = headers_of(client, "/static/missing.css")
    assert status == 404
    assert h["x-frame-options"] == "DENY" and "strict-transport-security" in h


def test_http_redirects_to_https(client):
    out = client.run(f"curl -sS -o /dev/null -w '%{{http_code}} %{{redirect_url}}' http://{LB}/api/v1/x?y=1")
    assert out.stdout == f"301 https://{LB}/api/v1/x?y=1"


def test_old_tls_refused_new_accepted(client):
    for proto in ("-tls1", "-tls1_1"):
        # SECLEVEL=0 lets the client offer the old protocol, so the refusal is the server's.
        out = client.run(f"openssl s_client -connect {LB}:443 -servername {NAME} {proto} "
                         f"-cipher DEFAULT:@SECLEVEL=0 < /dev/null 2>&1")
        assert out.rc != 0
        assert "alert protocol version" in out.stdout or "unsupported protocol" in out.stdout, out.stdout
    for proto, name in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        out = client.run(f"openssl s_client -connect {LB}:443 -servername {NAME} {proto} -CAfile {CA} "
                         f"-verify_return_error < /dev/null 2>&1")
        assert out.rc == 0, out.stdout
        assert f"Protocol: {name}" in out.stdout.replace("Protocol  :", "Protocol:") or f", {name}," in out.stdout


def test_forwarded_headers_and_upstream_keepalive(client):
    seen = []
    for _ in range(8):
        out = curl(client, "-H", "X-Forwarded-For: 203.0.113.7", path="/api/v1/echo")
        body = json.loads(out.stdout)
        h = {k.lower(): v for k, v in body["headers"].items()}
        assert h["x-forwarded-for"] == "10.90.6.99"  # set, not appended to what the client claimed
        assert h["x-forwarded-proto"] == "https"
        assert h["host"] == NAME
        assert len(h["x-request-id"]) == 32
        assert h.get("connection", "") == ""  # HTTP/1.1 keep-alive to the app
        seen.append((body["backend"], body["peer_port"]))
    assert {b for b, _ in seen} == {"nginx-app1", "nginx-app2"}  # both app hosts serve
    assert len(set(seen)) < len(seen)  # connections to the app are reused


def test_gzip(client):
    status, h = headers_of(client, "/api/v1/big", "-H", "Accept-Encoding: gzip")
    assert status == 200 and h.get("content-encoding") == "gzip"


def test_static_files_long_cache(client):
    lab_host("nginx-lb").run("echo 'body{}' > /var/www/ai-platform/static/app.css")
    status, h = headers_of(client, "/static/app.css")
    assert status == 200
    assert h["cache-control"] == "public, max-age=2592000, immutable"
    assert h["x-content-type-options"] == "nosniff"


def test_health_passed_through_and_not_logged(client):
    marker = uuid.uuid4().hex
    for path in ("/health", "/health/live"):
        out = curl(client, "-o", "/dev/null", "-w", "%{http_code}", path=path)
        assert out.stdout == "200"
    curl(client, "-o", "/dev/null", path=f"/api/v1/marker-{marker}")
    log = lab_host("nginx-lb").file("/var/log/nginx/ai-platform.access.log").content_string
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert not [entry for entry in lines if entry["uri"].startswith("/health")]
    entry = next(e for e in lines if marker in e["uri"])
    assert entry["status"] == 200 and entry["upstream_addr"].endswith(":8000")
    assert float(entry["upstream_response_time"]) >= 0 and entry["tls"].startswith("TLSv1.")


def test_app_metrics_not_served_by_the_public_site(client):
    # The test backend answers 200 on every path: a 404 here comes from Nginx itself.
    for path in ("/metrics", "/metrics/", "/metrics?format=x", "//metrics", "/%6detrics"):
        out = curl(client, "-o", "/dev/null", "-w", "%{http_code}", path=path)
        assert out.stdout == "404", path
    assert curl(client, "-o", "/dev/null", "-w", "%{http_code}", path="/api/v1/metrics-like").stdout == "200"


def test_body_limits(client):
    client.run("head -c 51M /dev/zero > /tmp/51m; head -c 49M /dev/zero > /tmp/49m; head -c 2M /dev/zero > /tmp/2m")
    post = ("-o", "/tmp/resp", "-w", "%{http_code}", "-H", "Content-Type: application/octet-stream")
    assert curl(client, *post, "--data-binary", "@/tmp/51m", path=UPLOAD).stdout == "413"
    assert curl(client, *post, "--data-binary", "@/tmp/49m", path=UPLOAD).stdout == "200"
    assert json.loads(client.file("/tmp/resp").content_string)["length"] == 49 * 1024 * 1024
    # Outside the upload route the limit is small.
    assert curl(client, *post, "--data-binary", "@/tmp/2m", path="/api/v1/projects").stdout == "413"
    client.run("rm -f /tmp/51m /tmp/49m /tmp/2m")


def parallel_codes(client, n, path, *args):
    """n requests at once, multiplexed by one curl over one HTTP/2 connection; their
    status codes and the seconds they took (measured on the client)."""
    urls = " ".join([f"-o /dev/null {BASE}{path}"] * n)
    out = client.check_output(
        f"s=$(date +%s.%N); curl -sS --parallel --parallel-max {n} --resolve {NAME}:443:{LB} --cacert {CA} "
        f"{' '.join(args)} -w '%{{http_code}}\\n' {urls}; e=$(date +%s.%N); echo \"$s $e\"")
    *codes, times = out.splitlines()
    start, end = (float(t) for t in times.split())
    return codes, end - start


def test_api_burst_answered_429(client):
    time.sleep(3)  # let the bucket refill after the tests above
    codes, took = parallel_codes(client, 60, "/api/v1/ping")
    assert set(codes) <= {"200", "429"}, codes
    # 1 + burst 20 at once, plus what the rate (10 r/s) refills while they arrive.
    assert 21 <= codes.count("200") <= 21 + 10 * took + 1, (codes.count("200"), took)
    assert codes.count("429") > 0


def test_upload_burst_answered_429(client):
    time.sleep(7)  # the upload bucket (1 r/s, burst 5) refills
    codes, took = parallel_codes(client, 15, UPLOAD, "--data-binary", "x")
    assert set(codes) <= {"200", "429"}, codes
    assert 6 <= codes.count("200") <= 6 + took + 1, (codes.count("200"), took)  # 1 + burst 5
    assert codes.count("429") > 0
    # GETs on the same route are not counted by the upload limit (only by the /api/ one).
    time.sleep(2)
    assert set(parallel_codes(client, 10, UPLOAD)[0]) == {"200"}


def test_dying_app_host_does_not_fail_idempotent_requests(client):
    """The app on nginx-app1 dies: requests go on being answered by nginx-app2."""
    app1 = lab_host("nginx-app1")
    app1.run("systemctl stop nginx-test-backend")
    try:
        backends = []
        for _ in range(6):
            out = curl(client, "-w", "\\n%{http_code}", path="/items")
            body, code = out.stdout.rsplit("\n", 1)
            assert code == "200", out.stdout
            backends.append(json.loads(body)["backend"])
        assert set(backends) == {"nginx-app2"}
    finally:
        app1.run("systemd-run --unit=nginx-test-backend /usr/local/bin/nginx-test-backend 10.90.6.21 8000")


# 60 requests at once from the load balancer itself (its address is in
# nginx_rate_limit_exempt in molecule.yml), over TLS to its own public listener;
# their status codes. Python: the load balancer has no curl.
BURST_FROM_LB = r"""
import concurrent.futures, http.client, ssl, sys
method, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def one(_):
    c = http.client.HTTPSConnection("%s", 443, context=ctx, timeout=30)
    c.request(method, path, body=b"x" if method == "POST" else None, headers={"Host": "%s"})
    status = c.getresponse().status
    c.close()
    return status
with concurrent.futures.ThreadPoolExecutor(n) as pool:
    print(" ".join(str(s) for s in pool.map(one, range(n))))
""" % (LB, NAME)


def test_exempt_address_is_not_limited():
    lb = lab_host("nginx-lb")
    time.sleep(3)  # the client's buckets are not involved; the wait only keeps the tests apart
    api = lb.check_output("python3 -c %s GET /api/v1/ping 60", BURST_FROM_LB).split()
    assert api == ["200"] * 60, api
    uploads = lb.check_output("python3 -c %s POST %s 15", BURST_FROM_LB, UPLOAD).split()
    assert uploads == ["200"] * 15, uploads


def test_streamed_answers_pass_unbuffered(client):
    """The ask route's Server-Sent Events reach the client as the backend sends them
    (9 events 0.3 s apart), not in one lump when the backend is done."""
    resolve = f"--resolve {NAME}:443:{LB} --cacert {CA}"
    out = client.run(f"curl -sSN {resolve} -X POST -H 'Content-Type: application/json' "
                     f"-d '{{}}' {BASE}/api/v1/projects/p1/ask | "
                     "while IFS= read -r line; do case $line in data:*) date +%s.%N;; esac; done")
    assert out.rc == 0, out.stderr
    times = [float(t) for t in out.stdout.split()]
    assert len(times) == 9, out.stdout
    assert times[-1] - times[0] > 1.2, times
    status, h = headers_of(client, "/api/v1/projects/p1/ask", "-X", "POST", "-d", "{}")
    assert status == 200 and h["content-type"].startswith("text/event-stream")


def test_public_health_is_cached(client):
    """20 requests to /health in one go reach the backend a few times at most (each
    answer is cached nginx_health_cache_seconds); /health/details is not served."""
    urls = " ".join([f"{BASE}/health"] * 20)
    out = client.run(f"curl -sS --resolve {NAME}:443:{LB} --cacert {CA} -w '\\n' {urls}")
    assert out.rc == 0, out.stderr
    hits = [json.loads(line)["hits"] for line in out.stdout.splitlines() if line.strip()]
    assert len(hits) == 20 and len(set(hits)) <= 5, hits
    out = curl(client, "-o", "/dev/null", "-w", "%{http_code}", path="/health/details")
    assert out.stdout == "404"
