"""Prometheus on the lab's monitoring host scrapes the app: no Molecule scenario has the app and monitoring
together, the lab has both. Read through Prometheus's own HTTP API on the monitoring host."""
from __future__ import annotations

import json
import re
import time
import urllib.parse

from conftest import CA, on


def _prometheus(the_lab) -> tuple[str, str]:
    """(the monitoring host, the address Prometheus listens on, from its own arguments)."""
    mon = the_lab.groups["monitoring"][0]
    listen = on(mon, "sed -n 's/.*--web.listen-address=\\([^ \"]*\\).*/\\1/p' /etc/default/prometheus").strip()
    return mon, listen or "127.0.0.1:9090"


def _api(mon: str, listen: str, path: str, **params) -> dict:
    url = f"http://{listen}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    answer = json.loads(on(mon, f"curl -sS -m 20 '{url}'"))
    assert answer.get("status") == "success", answer
    return answer["data"]


def _seconds(duration: str) -> float:
    """A Prometheus duration (15s, 1m, 1m30s, 500ms) in seconds."""
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * unit[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))


def _requests(mon: str, listen: str, route: str) -> dict[str, float]:
    """aiplatform_http_requests_total answered 200 on route, per app host (the scrape's instance label)."""
    q = f'sum by (instance) (aiplatform_http_requests_total{{job="app",route="{route}",status="200"}})'
    return {r["metric"]["instance"]: float(r["value"][1]) for r in _api(mon, listen, "query", query=q)["result"]}


def test_prometheus_scrapes_every_app_hosts_metrics(the_lab, record):
    """Prometheus scrapes /metrics of every app host (target up) and its counters follow requests sent through Nginx."""
    mon, listen = _prometheus(the_lab)
    apps = set(the_lab.apps)
    targets = [t for t in _api(mon, listen, "targets", state="active")["activeTargets"] if t["labels"].get("job") == "app"]
    health = {t["labels"].get("instance"): t["health"] for t in targets}
    errors = {t["labels"].get("instance"): t.get("lastError") for t in targets if t.get("lastError")}
    interval = max((_seconds(t.get("scrapeInterval", "15s")) for t in targets), default=15.0)
    # The app's own series, from every app host: the scrape reaches the app's code, not only its port.
    docs = {r["metric"].get("instance") for r in _api(mon, listen, "query", query='aiplatform_documents{job="app"}')["result"]}
    n, route = 200, "/health/live"
    before = _requests(mon, listen, route)
    on(the_lab.client, f"for i in $(seq {n}); do curl -s -o /dev/null --cacert {CA} {the_lab.base}{route}; done", timeout=300)
    # Counters move after the next scrape of each host: wait up to four scrape intervals.
    deadline, after = time.monotonic() + 4 * interval + 10, before
    while time.monotonic() < deadline:
        after = _requests(mon, listen, route)
        if sum(after.values()) - sum(before.values()) >= n and all(after.get(h, 0) > before.get(h, 0) for h in apps):
            break
        time.sleep(interval / 3)
    grown = {h: after.get(h, 0) - before.get(h, 0) for h in sorted(apps)}
    record(app_targets=health, last_errors=errors or "none", scrape_interval_s=interval, documents_series_from=sorted(docs),
           requests_sent=n, counted_per_host=grown)
    assert set(health) == apps, f"the app job scrapes {sorted(health)}, the app hosts are {sorted(apps)}"
    assert all(h == "up" for h in health.values()), (health, errors)
    assert docs >= apps, f"aiplatform_documents from {sorted(docs)} only"
    # Counted where the app answered: every host in Nginx's rotation got some, together at least those sent.
    assert sum(grown.values()) >= n and all(v > 0 for v in grown.values()), grown
