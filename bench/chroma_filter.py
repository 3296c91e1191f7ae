#!/usr/bin/env python3
"""Why search slows down as a project grows: Chroma's metadata filter, not HNSW.

Releases before 2026-12-01 kept every project in one Chroma collection and searched
with where={"project_id": ...}; the app now keeps one collection per project
(app/app/vectorstore.py). This measures, in one run on one machine, the same
query over 100k random 384-dim vectors with no filter, with a filter matching
90 % of them and one matching 10 %. Run with the app tests' Chroma venv:
    .cache/venv-chroma/bin/python bench/chroma_filter.py
Measured here (2026-12-01, chromadb 1.5.9, 2 cores): no filter p50 2.0 ms;
filter on 90 % p50 354.5 ms; filter on 10 % p50 59.4 ms. The lab's search at
100k chunks (p50 465 ms) matched the 90 % case: hence one collection per
project (no filter), not HNSW tuning.
"""
import shutil
import tempfile
import time

import chromadb
import numpy as np

folder = tempfile.mkdtemp(prefix="chroma-filter-")
c = chromadb.PersistentClient(path=folder)
col = c.create_collection("test", configuration={"hnsw": {"space": "cosine"}})
rng = np.random.default_rng(0)
N = 100_000
for i in range(0, N, 5000):
    v = rng.standard_normal((5000, 384)).astype(np.float32)
    col.add(ids=[f"{j}" for j in range(i, i + 5000)], embeddings=v,
            metadatas=[{"project_id": "p1" if j % 10 else "p2", "document_id": f"d{j//1000}"} for j in range(i, i + 5000)])
print("added", col.count(), flush=True)
def bench(label, **kw):
    ts = []
    for _ in range(30):
        q = rng.standard_normal((1, 384)).astype(np.float32)
        t = time.perf_counter()
        col.query(query_embeddings=q, n_results=5, **kw)
        ts.append(time.perf_counter() - t)
    ts.sort()
    print(f"{label}: p50 {1000*ts[15]:.1f} ms p90 {1000*ts[27]:.1f} ms", flush=True)
bench("no filter")
bench("where project p1 (90%)", where={"project_id": "p1"})
bench("where project p2 (10%)", where={"project_id": "p2"})
shutil.rmtree(folder)
