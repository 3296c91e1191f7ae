#!/usr/bin/python3
"""Test backend for the nginx scenario (scaffolding, not a mock of nginx).

A small HTTP/1.1 server with keep-alive, as an app server behind nginx:
  GET  /health                -> 200 {"status": "ok", "hits": N} (N counts /health requests)
  GET  /health/live           -> 200 {"status": "ok"}
  GET  anything else          -> 200 JSON: backend name, path, the peer's port and the
                                 headers nginx passed (/big... adds 8 KiB of padding)
  POST .../ask               -> Server-Sent Events: 8 "token" events 0.3 s apart, then "done"
  POST anything else          -> reads the whole body (Content-Length or chunked) and
                                 answers 200 {"length": N}
Usage: nginx-test-backend ADDRESS PORT
"""
import json
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = socket.gethostname()
HEALTH_HITS = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send_json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            HEALTH_HITS[0] += 1
            self.send_json({"status": "ok", "hits": HEALTH_HITS[0]})
            return
        if self.path == "/health/live":
            self.send_json({"status": "ok"})
            return
        obj = {"backend": NAME, "path": self.path, "peer_port": self.client_address[1],
               "headers": dict(self.headers.items())}
        if self.path.startswith("/api/v1/big"):
            obj["padding"] = "x" * 8192
        self.send_json(obj)

    def read_body(self):
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return n
                n += self.drain(size)
                self.rfile.readline()
        return self.drain(int(self.headers.get("Content-Length", "0")))

    def drain(self, remaining):
        n = 0
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)
            n += len(chunk)
        return n

    def do_POST(self):
        length = self.read_body()
        if self.path.endswith("/ask"):
            self.stream_events()
            return
        self.send_json({"backend": NAME, "path": self.path, "length": length})

    def stream_events(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(9):
            event = f"event: token\ndata: {json.dumps({'text': f'w{i} '})}\n\n" if i < 8 \
                else 'event: done\ndata: {"mode": "generative"}\n\n'
            data = event.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            time.sleep(0.3)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *args):
        pass


ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
