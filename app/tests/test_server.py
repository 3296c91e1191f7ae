"""The real ASGI server: `uvicorn app.main:app` serves the app, and the size limit holds on
a real socket, both with Content-Length and with a chunked body."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

LIMIT = 100_000
PIDS: dict[str, int] = {}


@pytest.fixture(scope="module")
def server(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = tmp_path_factory.mktemp("uvicorn") / "uvicorn.log"
    env = {**os.environ, "MAX_FILE_SIZE": str(LIMIT), "UPLOAD_CONCURRENCY": "1"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"], env=env, stdout=fh, stderr=subprocess.STDOUT)
    pidfile = Path(os.environ["AI_TEST_STATE_DIR"]) / "pids" / f"uvicorn-{proc.pid}.pid"
    pidfile.write_text(str(proc.pid))
    PIDS["server"] = proc.pid
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError(log.read_text())
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        pidfile.unlink(missing_ok=True)


def _auth(url: str) -> tuple[dict[str, str], str]:
    email = f"srv-{time.time_ns()}@example.com"
    httpx.post(f"{url}/api/v1/auth/register", json={"email": email, "password": "password-1"})
    tok = httpx.post(f"{url}/api/v1/auth/login",
                     json={"email": email, "password": "password-1"}).json()["access_token"]
    headers = {"Authorization": f"Bearer {tok}"}
    pid = httpx.post(f"{url}/api/v1/projects", json={"name": "p"}, headers=headers).json()["id"]
    return headers, pid


def test_docs_and_openapi(server: str) -> None:
    assert httpx.get(f"{server}/docs").status_code == 200
    spec = httpx.get(f"{server}/openapi.json").json()
    upload = spec["paths"]["/api/v1/projects/{project_id}/documents"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]


def _raw_request(url: str, head: bytes, body_parts: Iterator[bytes]) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        try:
            for part in body_parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed early: that is the point
        return sock.recv(4096)


def test_413_on_real_socket(server: str) -> None:
    headers, pid = _auth(server)
    boundary = "zzBOUNDARYzz"
    preamble = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"big.txt\"\r\n\r\n").encode()
    path = f"/api/v1/projects/{pid}/documents"

    def head(extra: str) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{extra}"
                f"Authorization: {headers['Authorization']}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()

    # Declared too large: refused before the body is read.
    total = 60 * 1024 * 1024
    reply = _raw_request(server, head(f"Content-Length: {total}\r\n"),
                         iter([preamble, b"a" * 65536]))
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]

    # Chunked, no length: refused while streaming, after ~LIMIT bytes.
    def chunked() -> Iterator[bytes]:
        def frame(b: bytes) -> bytes:
            return f"{len(b):x}\r\n".encode() + b + b"\r\n"
        yield frame(preamble)
        for _ in range(40):
            yield frame(b"b" * 16384)
        yield b"0\r\n\r\n"

    reply = _raw_request(server, head("Transfer-Encoding: chunked\r\n"), chunked())
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    listed = httpx.get(f"{server}{path}", headers=headers).json()
    assert listed == []


def test_concurrent_uploads_are_bounded_per_process(server: str) -> None:
    """UPLOAD_CONCURRENCY=1: while one upload is still arriving, the next is answered
    503 with Retry-After before its body is read."""
    headers, pid = _auth(server)
    host, port = server.removeprefix("http://").split(":")
    boundary = "slowBOUNDARY"
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall((f"POST /api/v1/projects/{pid}/documents HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: {headers['Authorization']}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: 50000\r\n\r\n--{boundary}\r\n"
                      "Content-Disposition: form-data; name=\"file\"; filename=\"s.txt\"\r\n\r\n"
                      "slowly arriving ").encode())
        time.sleep(1.0)  # the first upload is now inside the handler, waiting for bytes
        r = httpx.post(f"{server}/api/v1/projects/{pid}/documents", headers=headers,
                       files={"file": ("b.txt", b"second upload", "text/plain")}, timeout=10)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] and r.json()["error"]["code"] == "uploads_busy"
    time.sleep(0.5)
    r = httpx.post(f"{server}/api/v1/projects/{pid}/documents", headers=headers,
                   files={"file": ("c.txt", b"third upload", "text/plain")}, timeout=10)
    assert r.status_code == 201, r.text


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_download_streams_from_postgresql(server: str) -> None:
    """A 48 MiB document is downloaded whole, while the server's peak memory grows by far
    less than the file: it is read from PostgreSQL in pieces, never held whole."""
    import hashlib
    import uuid as uuid_mod

    from helpers import db_execute

    headers, pid = _auth(server)
    size = 48 * 1024 * 1024
    data = os.urandom(1024 * 1024) * 48
    doc_id = str(uuid_mod.uuid4())
    db_execute("INSERT INTO documents (id, project_id, filename, content_type, kind, size_bytes,"
               " sha256, status) VALUES (:i, :p, 'big.bin', 'text/plain', 'text', :n, 'x',"
               " 'ready')", i=doc_id, p=pid, n=size)
    db_execute("INSERT INTO document_contents (document_id, data) VALUES (:i, :d)",
               i=doc_id, d=data)
    expected = hashlib.sha256(data).hexdigest()
    del data
    before = _peak_rss_kib(PIDS["server"])
    digest, got = hashlib.sha256(), 0
    with httpx.stream("GET", f"{server}/api/v1/projects/{pid}/documents/{doc_id}/download",
                      headers=headers, timeout=60) as r:
        assert r.status_code == 200 and int(r.headers["content-length"]) == size
        for chunk in r.iter_bytes(65536):
            digest.update(chunk)
            got += len(chunk)
    grown_mib = (_peak_rss_kib(PIDS["server"]) - before) / 1024
    assert got == size
    assert digest.hexdigest() == expected
    assert grown_mib < 24, f"peak RSS grew by {grown_mib:.0f} MiB for a 48 MiB download"
