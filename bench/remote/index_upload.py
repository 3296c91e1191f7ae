"""Runs on the client host (stdlib only): documents made of this host's Python standard library
sources (whole files, sorted, tests left out), about SIZE bytes each, TOTAL bytes in all, uploaded
through Nginx at its upload rate (1 r/s, burst 5; a 429 waits and retries). Prints the documents
and timings as JSON.

    index_upload.py LB PROJECT TOKEN TOTAL SIZE
"""
import json
import ssl
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

lb, project, token, total, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
root = Path(sysconfig.get_paths()["stdlib"])
docs, cur, nfiles = [], "", 0
for p in sorted(root.rglob("*.py")):
    rel = p.relative_to(root)
    if {"test", "tests", "idle_test", "site-packages", "dist-packages"} & set(rel.parts):
        continue
    try:
        text = p.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        continue
    if "\x00" in text or not text.strip():
        continue
    nfiles += 1
    cur += f"# ===== {rel} =====\n{text}\n"
    while len(cur) >= size:
        cut = cur.rfind("\n", 0, size) + 1 or size
        docs.append(cur[:cut])
        cur = cur[cut:]
    if sum(len(d) for d in docs) + len(cur) >= total:
        break
if cur.strip():
    docs.append(cur)
ctx = ssl._create_unverified_context()
out, t_start, retries, last = [], time.time(), 0, 0.0
for i, text in enumerate(docs):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"stdlib-{i:03d}.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\n").encode() + text.encode() + f"\r\n--{boundary}--\r\n".encode()
    for _attempt in range(30):
        time.sleep(max(0.0, last + 1.05 - time.time()))
        last = time.time()
        req = urllib.request.Request(f"https://{lb}:443/api/v1/projects/{project}/documents", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=120) as r:
                out.append({"id": json.loads(r.read())["id"], "bytes": len(text.encode())})
                break
        except urllib.error.HTTPError as e:
            if e.code != 429:
                raise SystemExit(f"upload {i}: HTTP {e.code}: {e.read()[:300]!r}") from e
            retries += 1
    else:
        raise SystemExit(f"upload {i}: still 429 after 30 tries")
print(json.dumps({"documents": out, "files": nfiles, "bytes": sum(d["bytes"] for d in out),
                  "upload_start": t_start, "upload_end": time.time(), "retries_429": retries}))
