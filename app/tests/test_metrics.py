"""Prometheus metrics: request counts and latencies by route template, Celery task counts,
queue depth and documents by status read at scrape time, multiprocess mode, Sentry off."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def scrape(client: Any) -> dict[str, list[Any]]:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def value(samples: list[Any], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name
             and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


def test_requests_are_counted_by_route_template_and_status(client: Any, user: dict[str, Any],
                                                           project: dict[str, Any]) -> None:
    route = "/api/v1/projects/{project_id}"
    before = scrape(client).get("aiplatform_http_requests", [])
    ok = value(before, "aiplatform_http_requests_total", route=route, status="200")
    missing = value(before, "aiplatform_http_requests_total", route=route, status="404")
    headers = user["headers"]
    assert client.get(f"/api/v1/projects/{project['id']}", headers=headers).status_code == 200
    gone = "00000000-0000-0000-0000-000000000000"
    assert client.get(f"/api/v1/projects/{gone}", headers=headers).status_code == 404
    client.get("/no/such/path")
    after = scrape(client)
    requests = after["aiplatform_http_requests"]
    assert value(requests, "aiplatform_http_requests_total", route=route, status="200") == ok + 1
    total = "aiplatform_http_requests_total"
    assert value(requests, total, route=route, status="404") == missing + 1
    # Raw paths (ids) never become labels; unmatched paths share one label value.
    assert not [s for s in requests if project["id"] in s.labels.get("route", "")]
    assert value(requests, "aiplatform_http_requests_total", route="<unmatched>") >= 1
    hist = after["aiplatform_http_request_duration_seconds"]
    name = "aiplatform_http_request_duration_seconds"
    assert value(hist, f"{name}_count", route=route, method="GET") >= 2
    assert value(hist, f"{name}_bucket", route=route, le="+Inf") >= 2


def test_queue_depth_and_documents_by_status_are_read_at_scrape_time(client: Any) -> None:
    families = scrape(client)
    assert value(families["aiplatform_metrics_source_up"], "aiplatform_metrics_source_up",
                 source="redis") == 1
    assert value(families["aiplatform_metrics_source_up"], "aiplatform_metrics_source_up",
                 source="database") == 1
    queue = families["aiplatform_celery_queue_length"]
    assert [s.labels["queue"] for s in queue] == ["celery"]
    statuses = {s.labels["status"] for s in families["aiplatform_documents"]}
    assert {"pending", "indexing", "ready", "failed"} <= statuses


def test_broken_dependencies_do_not_break_the_endpoint(settings: Any, dead_port: int) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    broken = settings.model_copy(update={
        "redis_url": f"redis://127.0.0.1:{dead_port}/0",
        "celery_broker_url": f"redis://127.0.0.1:{dead_port}/0",
        "database_url": f"postgresql+psycopg://nobody:x@127.0.0.1:{dead_port}/nothing",
        "database_read_url": None,
        "health_timeout_seconds": 0.5,
    })
    with TestClient(create_app(broken)) as c:
        families = scrape(c)
    up = families["aiplatform_metrics_source_up"]
    assert value(up, "aiplatform_metrics_source_up", source="redis") == 0
    assert value(up, "aiplatform_metrics_source_up", source="database") == 0
    assert "aiplatform_celery_queue_length" not in families


def test_celery_tasks_are_counted_with_their_outcome() -> None:
    from celery import Celery

    from app import metrics

    metrics.connect_celery_signals()
    capp = Celery("metrics_test", set_as_current=False)
    capp.conf.task_always_eager = True

    @capp.task(name="metrics_test.ok")
    def ok() -> int:
        return 1

    @capp.task(name="metrics_test.boom")
    def boom() -> None:
        raise ValueError("boom")

    def count(task: str, state: str) -> float:
        return metrics.CELERY_TASKS.labels(task, state)._value.get()

    ok.apply()
    boom.apply()
    assert count("metrics_test.ok", "succeeded") == 1
    assert count("metrics_test.boom", "failed") == 1
    assert metrics.CELERY_DURATION.labels("metrics_test.ok")._sum.get() >= 0


def test_multiprocess_mode_sums_the_api_and_worker_folders(tmp_path: Any) -> None:
    """Two processes write their own files; /metrics of a third sums both folders."""
    api_dir, worker_dir = tmp_path / "api", tmp_path / "worker"
    api_dir.mkdir()
    worker_dir.mkdir()
    write = textwrap.dedent("""
        from app import metrics
        import sys
        if sys.argv[1] == "api":
            metrics.HTTP_REQUESTS.labels("GET", "/health", "200").inc(3)
        else:
            metrics.CELERY_TASKS.labels("app.tasks.index_document", "failed").inc(2)
    """)
    read = textwrap.dedent("""
        from types import SimpleNamespace
        from app import metrics
        from app.config import Settings
        s = Settings(metrics_multiproc_dirs=sys.argv[1], redis_url="redis://127.0.0.1:1/0",
                     health_timeout_seconds=0.2)
        db = SimpleNamespace(read_engine=None)
        body, _ = metrics.render(metrics.registry_for(s, db))
        open(sys.argv[2], "wb").write(body)
    """)
    for role, folder in (("api", api_dir), ("worker", worker_dir)):
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
        subprocess.run([sys.executable, "-c", write, role], env=env, check=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(api_dir)}
    out_file = tmp_path / "metrics.txt"
    subprocess.run([sys.executable, "-c", "import sys\n" + read, str(worker_dir), str(out_file)],
                   env=env, check=True)
    out = out_file.read_text()
    families = {f.name: f.samples for f in text_string_to_metric_families(out)}
    assert value(families["aiplatform_http_requests"], "aiplatform_http_requests_total",
                 route="/health") == 3
    assert value(families["aiplatform_celery_tasks"], "aiplatform_celery_tasks_total",
                 task="app.tasks.index_document", state="failed") == 2


def test_sentry_is_off_without_a_dsn(settings: Any) -> None:
    from app.log import init_sentry

    assert settings.sentry_dsn is None
    assert init_sentry(settings) is False
    assert "sentry_sdk" not in sys.modules
