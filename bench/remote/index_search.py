"""Runs on the load balancer (stdlib only): sequential searches straight to the app hosts' port
(no Nginx limit), alternating hosts, one kept-alive connection per host after a warm-up on fresh
connections (so every gunicorn worker has loaded its embedder). Prints [status, ms, server ms,
results] per query as JSON.

    index_search.py CONFIG_JSON
"""
import http.client
import json
import sys
import time

cfg = json.loads(sys.argv[1])
topics = ["parse command line arguments", "read the members of a zip archive", "compute a sha256 digest of a file",
          "send an email through an SMTP server", "format dates and times", "match a regular expression",
          "run a subprocess and capture its output", "serialize objects to JSON", "compress data with gzip",
          "open a TCP socket and accept connections", "copy a directory tree", "decode base64 data",
          "sort records with a key function", "run coroutines concurrently with asyncio", "write log messages to a file",
          "parse an XML document", "read rows from a CSV file", "generate random numbers with a seed",
          "run tasks in a thread pool", "normalize Unicode strings", "create a temporary file safely",
          "measure elapsed time precisely", "split a URL into its parts", "make an HTTP request",
          "store rows in an sqlite database", "pickle and unpickle an object", "walk a directory recursively",
          "compare floating point numbers", "keep a priority queue with heapq", "cache the results of a function",
          "deep copy a nested structure", "read an INI configuration file", "compute the median of a list",
          "handle a signal such as SIGTERM", "protect shared state with a lock", "chain iterators with itertools",
          "round decimal numbers correctly", "encode text as UTF-8 bytes", "parse the headers of an email message",
          "validate and generate UUIDs"]
forms = ["how do I {}", "{}", "example code to {}", "what is the best way to {} in Python", "which module can {}"]
queries = [f.format(t) for f in forms for t in topics][: cfg["queries"]]
headers = {"Authorization": "Bearer " + cfg["token"], "Content-Type": "application/json"}
path = f"/api/v1/projects/{cfg['project']}/search"

def post(conn, q):
    body = json.dumps({"query": q, "top_k": cfg["top_k"]})
    t0 = time.perf_counter()
    conn.request("POST", path, body, headers)
    r = conn.getresponse()
    data = r.read()
    ms = (time.perf_counter() - t0) * 1000
    n = len(json.loads(data)["results"]) if r.status == 200 else 0
    return r.status, ms, float(r.getheader("X-Process-Time") or "nan") * 1000, n

for i in range(cfg["warmup"]):
    c = http.client.HTTPConnection(cfg["hosts"][i % len(cfg["hosts"])], 8000, timeout=120)
    post(c, f"warm-up query number {i} about files and sockets")
    c.close()
conns = [http.client.HTTPConnection(h, 8000, timeout=120) for h in cfg["hosts"]]
for i, c in enumerate(conns):
    post(c, f"warm-up on the kept connection {i}")
rows = [post(conns[i % len(conns)], q) for i, q in enumerate(queries)]
print(json.dumps(rows))
