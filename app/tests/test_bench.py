"""Benchmarks through the real stack, skipped unless AI_BENCH=1:

    AI_BENCH=1 tests/run-app-tests.sh -k bench -s

Measures indexing throughput through Celery (upload -> ready) and search latency p50/p99.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import pytest
from helpers import upload, wait_for_status

pytestmark = pytest.mark.skipif(os.environ.get("AI_BENCH") != "1", reason="set AI_BENCH=1")

WORDS = ("retrieval augmented generation indexes research papers source code and notes so "
         "that a language model can answer questions with citations from the documents "
         "plasma physics protein folding compilers databases climate models").split()


def _doc(seed: int, paragraphs: int) -> bytes:
    return "\n\n".join(
        f"Section {seed}.{i}: " + " ".join(WORDS[(seed * 31 + i * 7 + j) % len(WORDS)]
                                             for j in range(110)) + "."
        for i in range(paragraphs)
    ).encode()


def test_bench_pipeline(client: Any, worker: Any, user: dict[str, Any],
                        project: dict[str, Any]) -> None:
    pid = project["id"]
    n_docs, paragraphs = 8, 40
    t0 = time.perf_counter()
    ids = [upload(client, user, pid, f"doc{i}.txt", _doc(i, paragraphs)).json()["id"]
           for i in range(n_docs)]
    upload_s = time.perf_counter() - t0
    docs = [wait_for_status(client, user, pid, d, {"ready", "failed"}, timeout=900) for d in ids]
    total_s = time.perf_counter() - t0
    chunks = sum(d["chunk_count"] for d in docs)
    assert all(d["status"] == "ready" for d in docs)
    print(f"\n[bench] celery path: {n_docs} docs, {chunks} chunks in {total_s:.1f}s "
          f"(uploads {upload_s:.1f}s) -> {chunks / total_s:.1f} chunks/s, "
          f"{n_docs / total_s:.2f} docs/s (1 worker, concurrency 1)")

    queries = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5) % len(WORDS)]} questions"
               for i in range(200)]
    lat = []
    for q in queries:
        s = time.perf_counter()
        r = client.post(f"/api/v1/projects/{pid}/search", json={"query": q, "top_k": 5},
                        headers=user["headers"])
        lat.append((time.perf_counter() - s) * 1000)
        assert r.status_code == 200
    lat.sort()
    p50 = statistics.median(lat)
    p99 = lat[int(len(lat) * 0.99) - 1]
    print(f"[bench] search over {chunks} chunks: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"({len(lat)} queries, top_k=5, in-process client)")
