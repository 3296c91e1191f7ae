"""Steady mixed load through the load balancers' virtual IP, for the "lose any host" drill.

Runs on the lab's client host (Python's standard library only):

    python3 ha_load.py BASE CA TOKEN PROJECT SECONDS OUT

Three loops at fixed rates, each request on its own connection (a client that comes
back through the VIP after a move): reads (the project's document list, 2/s), searches
(2/s) and uploads (one small text every 2 s). Each request is one JSON line in OUT:
{"t": unix time sent, "kind", "status" (0: no answer), "ms", "doc" (an upload's id on 201)}.
A last line {"done": true} says the load ended.
"""
from __future__ import annotations

import json
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

BASE, CA, TOKEN, PROJECT, SECONDS, OUT = sys.argv[1:7]
RATES = {"read": 2.0, "search": 2.0, "upload": 0.5}  # requests per second
TIMEOUT = 15.0  # a request that takes longer counts as failed (status 0)
CTX = ssl.create_default_context(cafile=CA)
lock = threading.Lock()
out = open(OUT, "w")  # noqa: SIM115 - closed at the end of main


def record(entry: dict) -> None:
    with lock:
        out.write(json.dumps(entry) + "\n")
        out.flush()


def request(kind: str, method: str, path: str, body: bytes | None = None,
            ctype: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Connection": "close"}
    if ctype:
        headers["Content-Type"] = ctype
    req = urllib.request.Request(BASE + path, data=body, method=method, headers=headers)
    t0 = time.time()
    status, doc = 0, None
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT, context=CTX) as resp:
            status = resp.status
            data = resp.read()
            if kind == "upload" and status == 201:
                doc = json.loads(data)["id"]
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError):
        status = 0
    record({"t": round(t0, 3), "kind": kind, "status": status,
            "ms": round((time.time() - t0) * 1000, 1), "doc": doc})


def upload_body(n: int) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    text = (f"Drill document {n}: the cooling loop {n} of the reactor carries heavy water "
            f"through pump {n % 7}. Turbine hall {n % 3} keeps the spare parts.\n").encode()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"drill-{n}.md\"\r\nContent-Type: text/markdown\r\n\r\n").encode() \
        + text + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def loop(kind: str, end: float) -> None:
    period = 1.0 / RATES[kind]
    n, next_at = 0, time.time()
    while next_at < end:
        n += 1
        if kind == "read":
            request(kind, "GET", f"/api/v1/projects/{PROJECT}/documents?limit=20")
        elif kind == "search":
            request(kind, "POST", f"/api/v1/projects/{PROJECT}/search",
                    json.dumps({"query": f"which pump moves loop {n % 9}", "top_k": 3}).encode(),
                    "application/json")
        else:
            body, ctype = upload_body(n)
            request(kind, "POST", f"/api/v1/projects/{PROJECT}/documents", body, ctype)
        # A fixed rate, not one request after the other; a slow answer skips the slots it
        # overran instead of bursting afterwards (Nginx's rate limits would answer 429).
        next_at = max(next_at + period, time.time())
        time.sleep(max(0.0, next_at - time.time()))


def main() -> None:
    end = time.time() + float(SECONDS)
    threads = [threading.Thread(target=loop, args=(k, end)) for k in RATES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record({"done": True})
    out.close()


if __name__ == "__main__":
    main()
