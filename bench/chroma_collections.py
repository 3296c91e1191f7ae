#!/usr/bin/env python3
"""What one Chroma collection per project costs when there are many projects.

The app keeps each project's vectors in a collection of its own (app/app/vectorstore.py),
so a search needs no metadata filter (bench/chroma_filter.py). This measures, in one run,
the other side: N collections of M random 384-dim vectors each (default 1000 x 100 =
100k vectors, as many as the single-collection case), then
  * the process's resident memory and the data folder's size after the load,
  * a query on a collection touched for the first time since the client opened the data
    (cold: its index is loaded from disk) and on one queried just before (warm),
  * a query on a single 100k-vector collection without a filter, as the reference.
Measured here (2026-12-01, chromadb 1.5.9 in-process, 2 cores), 1000 x 100: loaded in
53.5 s; RSS +2756 MB during the load; data 399 MB (one 100k collection: 203 MB); query on
a cold collection p50 55.6 ms (max 70.1), warm p50 1.12 ms; one 100k collection without a
filter p50 0.97 ms. Chroma keeps the HNSW index of every collection it has touched in
memory, up to its index cache (in-process: open-file limit / 5 indexes), so memory grows
with the number of active projects and a project's first search after a restart pays the
load. Run with the app tests' Chroma venv:
    .cache/venv-chroma/bin/python bench/chroma_collections.py [N] [M]
With --server the same load goes through HTTP to a `chroma run` server (the one the
chromadb role deploys) on a free loopback port, and the server's RSS is read after the
load, after a restart and after querying 200 of the collections. Measured here, 1000 x 100:
RSS 110 MB empty, 2865 MB after the load, 109 MB after a restart, 670 MB after querying
200 collections (about 2.8 MB per touched collection); cold query p50 55.1 ms, warm 2.0 ms.
"""
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import chromadb
import numpy as np
from chromadb.api.client import SharedSystemClient

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
N = int(ARGS[0]) if ARGS else 1000
M = int(ARGS[1]) if len(ARGS) > 1 else 100
rng = np.random.default_rng(0)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def du_mb(path: str) -> float:
    return int(subprocess.run(["du", "-sk", path], capture_output=True, text=True).stdout.split()[0]) / 1024


def p50_ms(fn, n: int = 50) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def rss_of(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024


def server() -> None:
    import socket

    from chromadb.config import Settings
    chroma = Path(sys.executable).with_name("chroma")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tempfile.mkdtemp(prefix="chroma-server-")

    def start():
        proc = subprocess.Popen([str(chroma), "run", "--path", data, "--host", "127.0.0.1", "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(150):
            try:
                client = chromadb.HttpClient(host="127.0.0.1", port=port, settings=Settings(anonymized_telemetry=False))
                client.heartbeat()
                return proc, client
            except Exception:
                time.sleep(0.2)
        proc.terminate()
        raise SystemExit("the chroma server did not answer")
    proc, c = start()
    try:
        empty = rss_of(proc.pid)
        for i in range(N):
            col = c.create_collection(f"p_{i:032x}", configuration={"hnsw": {"space": "cosine"}})
            col.add(ids=[f"{i}:{j}" for j in range(M)], embeddings=rng.standard_normal((M, 384)).astype(np.float32),
                    metadatas=[{"document_id": f"d{j // 10}"} for j in range(M)])
        loaded = rss_of(proc.pid)
        proc.terminate()
        proc.wait()
        proc, c = start()
        restarted = rss_of(proc.pid)
        q = rng.standard_normal(384).astype(np.float32).tolist()
        names = [f"p_{i:032x}" for i in random.Random(0).sample(range(N), min(200, N))]

        def query(name: str) -> float:
            col = c.get_collection(name)
            t = time.perf_counter()
            col.query(query_embeddings=[q], n_results=5)
            return (time.perf_counter() - t) * 1000
        cold = [query(n) for n in names]
        touched = rss_of(proc.pid)
        warm = [query(n) for n in names[:50]]
        print(f"server, {N} collections x {M} vectors: RSS {empty:.0f} MB empty, {loaded:.0f} MB after the load, "
              f"{restarted:.0f} MB after a restart, {touched:.0f} MB after querying {len(names)} collections; "
              f"cold query p50 {statistics.median(cold):.1f} ms, warm p50 {statistics.median(warm):.1f} ms", flush=True)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


if "--server" in sys.argv:
    server()
    sys.exit(0)

folder = tempfile.mkdtemp(prefix="chroma-collections-")
try:
    rss0 = rss_mb()
    c = chromadb.PersistentClient(path=folder)
    t = time.perf_counter()
    for i in range(N):
        col = c.create_collection(f"p_{i:032x}", configuration={"hnsw": {"space": "cosine"}})
        col.add(ids=[f"{i}:{j}" for j in range(M)], embeddings=rng.standard_normal((M, 384)).astype(np.float32),
                metadatas=[{"document_id": f"d{j // 10}", "chunk_index": j} for j in range(M)])
    load_s = time.perf_counter() - t
    rss_many = rss_mb() - rss0
    q = rng.standard_normal(384).astype(np.float32).tolist()
    del c
    # A fresh client on the same data (Chroma caches one system per path): every
    # collection is cold.
    SharedSystemClient.clear_system_cache()
    c = chromadb.PersistentClient(path=folder)
    names = [f"p_{i:032x}" for i in random.Random(0).sample(range(N), 50)]
    cold = []
    for name in names:
        t = time.perf_counter()
        c.get_collection(name).query(query_embeddings=[q], n_results=5)
        cold.append((time.perf_counter() - t) * 1000)
    warm_col = c.get_collection(names[0])
    warm = p50_ms(lambda: warm_col.query(query_embeddings=[q], n_results=5))
    disk_many = du_mb(folder)
    print(f"{N} collections x {M} vectors: loaded in {load_s:.1f} s; RSS +{rss_many:.0f} MB during the load; "
          f"data {disk_many:.0f} MB", flush=True)
    print(f"  query, collection cold (first touch after opening): p50 {statistics.median(cold):.2f} ms, "
          f"max {max(cold):.2f} ms; warm: p50 {warm} ms", flush=True)
    del c
    SharedSystemClient.clear_system_cache()
    shutil.rmtree(folder)
    folder = tempfile.mkdtemp(prefix="chroma-one-")
    c = chromadb.PersistentClient(path=folder)
    one = c.create_collection("one", configuration={"hnsw": {"space": "cosine"}})
    for i in range(0, N * M, 5000):
        k = min(5000, N * M - i)
        one.add(ids=[str(j) for j in range(i, i + k)], embeddings=rng.standard_normal((k, 384)).astype(np.float32),
                metadatas=[{"document_id": f"d{j // 10}", "chunk_index": j} for j in range(i, i + k)])
    print(f"one collection of {N * M} vectors, no filter: query p50 {p50_ms(lambda: one.query(query_embeddings=[q], n_results=5))} ms; "
          f"data {du_mb(folder):.0f} MB; peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
          flush=True)
finally:
    shutil.rmtree(folder, ignore_errors=True)
