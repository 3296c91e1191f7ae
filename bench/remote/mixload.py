"""Runs on the client host (stdlib only): a steady mixed load through Nginx, each kind of
request at its own fixed rate, until /tmp/mixload-NAME.stop exists (or MAX seconds):

  live    GET  /health/live
  list    GET  /api/v1/projects/P/documents?limit=5         (a database read)
  search  POST /api/v1/projects/P/search                     (embedding + vector query)
  upload  POST /api/v1/projects/P/documents, a small new text file each time (Nginx
          never retries a POST on another app host)

Every request goes on a new TLS connection that trusts only CA. A request is due every
1/rate seconds whatever the others do (a pool sends it), so slow answers do not lower the
load. One JSON line per request in /tmp/mixload-NAME.jsonl:
[kind, sent, answered, status, error]   (status 0: no answer; times in seconds since epoch)

    mixload.py NAME BASE_URL CA TOKEN PROJECT RATES MAX_SECONDS
    RATES: kind=per_second,... e.g. live=8,list=4,search=4,upload=1
"""
import concurrent.futures
import http.client
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
import uuid

name, base, ca, token, project, rates, max_s = sys.argv[1:8]
rates = {k: float(v) for k, v in (kv.split("=") for kv in rates.split(","))}
url = urllib.parse.urlsplit(base)
ctx = ssl.create_default_context(cafile=ca)
stop_file, out_path = f"/tmp/mixload-{name}.stop", f"/tmp/mixload-{name}.jsonl"
out, lock = open(out_path, "w"), threading.Lock()  # noqa: SIM115 (open for the whole run)
auth = {"Authorization": "Bearer " + token}
OK = {"live": {200}, "list": {200}, "search": {200}, "upload": {200, 201}}


def upload_body() -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    text = f"Load note {uuid.uuid4().hex}: the cooling pump of loop {time.time_ns() % 97} was serviced.\n" * 3
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"note.md\"\r\n"
            f"Content-Type: text/markdown\r\n\r\n{text}\r\n--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


def request(kind: str) -> tuple[int, str]:
    conn = http.client.HTTPSConnection(url.hostname, url.port or 443, context=ctx, timeout=60)
    try:
        if kind == "live":
            conn.request("GET", "/health/live")
        elif kind == "list":
            conn.request("GET", f"/api/v1/projects/{project}/documents?limit=5", headers=auth)
        elif kind == "search":
            body = json.dumps({"query": "what does the cooling pump do", "top_k": 3})
            conn.request("POST", f"/api/v1/projects/{project}/search", body,
                         {**auth, "Content-Type": "application/json"})
        else:
            body, ctype = upload_body()
            conn.request("POST", f"/api/v1/projects/{project}/documents", body, {**auth, "Content-Type": ctype})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, "" if resp.status in OK[kind] else data[:200].decode(errors="replace")
    except Exception as exc:  # no answer: refused, reset, timeout ...
        return 0, f"{type(exc).__name__}: {exc}"[:200]
    finally:
        conn.close()


def send(kind: str) -> None:
    sent = time.time()
    status, error = request(kind)
    with lock:
        out.write(json.dumps([kind, sent, time.time(), status, error]) + "\n")
        out.flush()


def schedule(kind: str, rate: float, pool: concurrent.futures.Executor, end: float) -> None:
    due = time.monotonic()
    while time.monotonic() < end and not os.path.exists(stop_file):
        pool.submit(send, kind)
        due += 1 / rate
        time.sleep(max(0.0, due - time.monotonic()))


end = time.monotonic() + float(max_s)
with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
    loops = [threading.Thread(target=schedule, args=(k, r, pool, end)) for k, r in rates.items() if r > 0]
    for t in loops:
        t.start()
    for t in loops:
        t.join()
out.close()
with open(f"/tmp/mixload-{name}.done", "w") as f:
    f.write("done\n")
