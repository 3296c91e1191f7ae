"""Helpers shared by the tests (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text


def run_cli(args: list[str], db: str | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
    """The installed ai-platform console script, with the tests' environment."""
    cli = shutil.which("ai-platform", path=str(Path(sys.executable).parent))
    assert cli, "console script ai-platform not installed in the venv"
    full = dict(os.environ)
    if db:
        full["DATABASE_URL"] = db
    full.update(env)
    return subprocess.run([cli, *args], env=full, capture_output=True, text=True, timeout=120)


def upload(client: Any, user: dict[str, Any], project_id: str, filename: str, data: bytes,
           content_type: str = "application/octet-stream") -> Any:
    return client.post(f"/api/v1/projects/{project_id}/documents",
                       files={"file": (filename, data, content_type)}, headers=user["headers"])


def wait_for_status(client: Any, user: dict[str, Any], project_id: str, doc_id: str,
                    wanted: set[str], timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(f"/api/v1/projects/{project_id}/documents/{doc_id}",
                       headers=user["headers"])
        assert r.status_code == 200, r.text
        doc = r.json()
        if doc["status"] in wanted:
            return doc
        time.sleep(0.2)
    raise AssertionError(f"document {doc_id} never reached {wanted}: {doc}")


def make_pdf(pages: list[list[str]]) -> bytes:
    """A small valid PDF with one text line per entry, Helvetica, one page per list."""
    objects: list[bytes] = []
    n_pages = len(pages)
    font_obj = 3 + 2 * n_pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, lines in enumerate(pages):
        content_id = 4 + 2 * i
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
            f"/Resources << /Font << /F1 {font_obj} 0 R >> >> >>".encode()
        )
        ops = ["BT", "/F1 11 Tf", "14 TL", "50 740 Td"]
        for line in lines:
            esc = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({esc}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream
                       + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{num} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
            .encode())
    return bytes(out)


class Listener:
    """A loopback port that accepts connections and counts them. It closes each at once
    (a host that is gone fails the connect), or with ``hold`` keeps them open and never
    says a word (a host that hangs)."""

    def __init__(self, hold: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.hold = hold
        self.held: list[socket.socket] = []
        self.connects = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connects += 1
            if self.hold:
                self.held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def _run_id() -> str:
    return os.environ["AI_TEST_RUN_ID"]


def _state_dir() -> Path:
    return Path(os.environ["AI_TEST_STATE_DIR"])


class Worker:
    def __init__(self, name: str, env_overrides: dict[str, str] | None = None,
                 concurrency: int = 1) -> None:
        self.name = name
        env = dict(os.environ)
        env.update(env_overrides or {})
        self.env = env
        self.log_path = _state_dir() / "logs" / f"celery-{name}.log"
        self.pidfile = _state_dir() / "pids" / f"celery-{name}-{_run_id()}.pid"
        self._log = self.log_path.open("wb")  # one log per run
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "app.tasks.celery_app", "worker",
             "--loglevel", "INFO", "--pool", "prefork", "--concurrency", str(concurrency),
             "--hostname", f"{name}-{_run_id()}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.pidfile.write_text(str(self.proc.pid))

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the worker logs that it is ready (consuming from the broker)."""
        marker = f"{self.name}-{_run_id()}@"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log_path.read_text(errors="replace")
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited: {log[-3000:]}")
            if any(marker in line and "ready." in line for line in log.splitlines()):
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready: {self.log_path.read_text()[-3000:]}")

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                for child in self.children():
                    os.kill(child, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        self.pidfile.unlink(missing_ok=True)


def insert_document(settings: Any, project_id: str, data: bytes, status: str = "pending",
                     age_hours: float = 0.0) -> str:
    """A document row and its bytes, as an upload stores them; its id."""
    doc_id = str(uuid.uuid4())
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO documents (id, project_id, filename, content_type, kind, size_bytes, "
            "sha256, status, updated_at) VALUES (:i, :p, 'seed.txt', 'text/plain', 'text', "
            ":n, 'x', :s, now() - make_interval(secs => :age))"),
            {"i": doc_id, "p": project_id, "n": len(data), "s": status,
             "age": age_hours * 3600})
        conn.execute(text("INSERT INTO document_contents (document_id, data) VALUES (:i, :d)"),
                     {"i": doc_id, "d": data})
    engine.dispose()
    return doc_id


def free_port() -> int:
    """A loopback port nothing listens on (for a server a test starts)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class FakeLLM:
    """An OpenAI-compatible chat endpoint: a real HTTP server on loopback, reached as
    ``localhost`` (the tests' PROVIDER_HTTP_ALLOWLIST). It records what it receives.

    answer: the reply text; stream: answer ``"stream": true`` requests as SSE chunks;
    delay: seconds before answering; status: the HTTP status; body: raw bytes to send
    instead of a chat completion; headers: more response headers (e.g. Location).

    flood: a piece the reply (chunked, 200, event-stream) repeats without end, until the
    client hangs up or FLOOD_LIMIT bytes went out. ``flooded`` counts the bytes written,
    ``hung_up`` says the client went away first, ``flood_over`` is set when it stops."""

    FLOOD_LIMIT = 128 * 1024 * 1024

    def __init__(self, answer: str = "ITER, in France [1].", delay: float = 0.0,
                 status: int = 200, body: bytes | None = None,
                 headers: dict[str, str] | None = None, flood: bytes | None = None) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict[str, Any]] = []
        self.flooded = 0
        self.hung_up = False
        self.flood_over = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": req,
                                       "auth": self.headers.get("Authorization"),
                                       "host": self.headers.get("Host")})
                time.sleep(delay)
                if flood is not None:
                    self._flood(flood)
                    return
                if req.get("stream") and body is None and status == 200:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for word in answer.split(" "):
                        chunk = {"choices": [{"delta": {"content": word + " "}}]}
                        self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                    self._chunk(b"data: [DONE]\n\n")
                    self._chunk(b"")
                    return
                data = body if body is not None else json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": answer}}]}
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _flood(self, piece: bytes) -> None:
                self.close_connection = True
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    while outer.flooded < FakeLLM.FLOOD_LIMIT:
                        self._chunk(piece)
                        outer.flooded += len(piece)
                    self._chunk(b"")
                except OSError:  # the client hung up
                    outer.hung_up = True
                finally:
                    outer.flood_over.set()

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://localhost:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def add_provider(client: Any, user: dict[str, Any], url: str, **extra: Any) -> Any:
    return client.post("/api/v1/providers", headers=user["headers"], json={
        "name": extra.pop("name", "local"), "base_url": url, "model": "tiny-model",
        "api_key": "sk-test-0123456789abcdef", **extra})


def db_execute(sql: str, **params: Any) -> Any:
    """One statement on the tests' database (committed); returns all rows."""
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["DATABASE_URL"])
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()


class CapturedLogs(list):  # type: ignore[type-arg]
    """Parsed log events; ``text`` is what was written, line for line."""

    text = ""


@contextmanager
def captured_logs() -> Iterator[CapturedLogs]:
    """The app's log events written while the block runs, as parsed JSON objects (filled
    in when the block ends; every line must be JSON). The handler configure_logging
    installs writes to a buffer meanwhile, so this is what the log would have said, after
    redaction."""
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "_ai_platform", False))
    buffer = io.StringIO()
    previous = handler.setStream(buffer)  # type: ignore[attr-defined]
    events = CapturedLogs()
    try:
        yield events
    finally:
        handler.setStream(previous)  # type: ignore[attr-defined]
        events.text = buffer.getvalue()
        events.extend(json.loads(line) for line in events.text.splitlines())
