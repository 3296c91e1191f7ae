"""Runs on the load balancer (stdlib only): THREADS writers POST new projects to the app
hosts' port, one after another, until /tmp/writer-PREFIX.stop exists; each request as a
JSON line [sent, answered, status, name] in /tmp/writer-PREFIX.jsonl (status 0: no answer).

    writer.py HOST,HOST TOKEN PREFIX THREADS
"""
import http.client
import json
import os
import sys
import threading
import time

hosts, token, prefix, threads = sys.argv[1].split(","), sys.argv[2], sys.argv[3], int(sys.argv[4])
out, lock = open(f"/tmp/writer-{prefix}.jsonl", "w"), threading.Lock()  # noqa: SIM115 (open for the whole run)


def run(n: int) -> None:
    conn, i = None, 0
    while not os.path.exists(f"/tmp/writer-{prefix}.stop"):
        name, t, i = f"{prefix}-{n}-{i}", time.time(), i + 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection(hosts[n % len(hosts)], 8000, timeout=15)
            conn.request("POST", "/api/v1/projects", json.dumps({"name": name}),
                         {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            status = r.status
        except Exception:  # any failure is a failed write; a new connection next time
            status, conn = 0, None
        with lock:
            out.write(json.dumps([t, time.time(), status, name]) + "\n")
            out.flush()
        if status != 201:
            time.sleep(0.05)


ts = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
