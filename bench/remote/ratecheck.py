#!/usr/bin/env python3
"""Runs on a lab client host (stdlib only): sends requests at a fixed rate for a
while and prints, as JSON, how many were answered with each status and when
the first and the last were sent.

    ratecheck.py URL RATE SECONDS [METHOD]

One thread per in-flight request, started on schedule, so a slow answer does
not slow the sending rate. TLS is not verified: this measures Nginx's limiter,
the tests check the certificates.
"""
import json
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter


def main() -> None:
    url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    method = sys.argv[4] if len(sys.argv) > 4 else "GET"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    statuses: Counter = Counter()
    lock = threading.Lock()

    def one() -> None:
        req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                code = resp.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        except OSError:
            code = 0
        with lock:
            statuses[code] += 1

    threads = []
    start = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one)
        t.start()
        threads.append(t)
    sent_for = time.monotonic() - start
    for t in threads:
        t.join()
    print(json.dumps({"sent": n, "sent_for_s": sent_for, "statuses": {str(k): v for k, v in statuses.items()}}))


if __name__ == "__main__":
    main()
