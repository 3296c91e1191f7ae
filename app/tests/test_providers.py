"""Answer providers on the open internet: SSRF-safe URLs (https only, http only for the
operator's allowlist, no private or local address, checked at connect time), no redirects
followed, a capped response (streamed or not) and one generic error for the user, the
reason in the log; streamed answers (Server-Sent Events)."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from helpers import FakeLLM, Listener, add_provider, captured_logs, upload, wait_for_status

QUESTION = {"question": "Where is the largest tokamak being built?"}
TEXT = (b"The ITER project in France is building the largest tokamak in the world. "
        b"Tokamaks confine hot plasma with magnetic fields.")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379/v1",                 # plain http, not on the allowlist
    "https://127.0.0.1:6379/v1#",               # loopback
    "https://127.1/v1",                         # loopback, short form
    "https://0x7f000001/v1",                    # loopback, hex
    "https://2130706433/v1",                    # loopback, decimal
    "https://[::1]/v1",                         # loopback v6
    "https://[::ffff:127.0.0.1]/v1",            # v4-mapped loopback
    "https://169.254.169.254/latest/meta-data",  # link-local metadata service
    "https://10.0.0.5/v1",                      # private
    "https://100.64.0.1/v1",                    # shared (CGNAT)
    "https://224.0.0.1/v1",                     # multicast
    "https://0.0.0.0/v1",                       # unspecified
    "https://user:pw@api.example.com/v1",       # userinfo
    "https://api.example.com/v1?x=1",           # query
    "https://api.example.com/v1#frag",          # fragment
    "ftp://api.example.com/v1",                 # scheme
    "https://api.example.com:99999/v1",         # port
    "http://localhost.evil.example/v1",         # http: only exact allowlisted names
    "https://ex\u00e4mple.com/v1",              # non-ASCII (IDN hosts go punycoded)
    "https://example.com/v1\u0000",             # NUL (PostgreSQL text cannot hold it)
])
def test_unsafe_provider_urls_are_422(client: Any, user: dict[str, Any], url: str) -> None:
    r = add_provider(client, user, url)
    assert r.status_code == 422, (url, r.status_code, r.text)
    assert r.json()["error"]["code"] in ("invalid_url", "validation_error")


@pytest.fixture(scope="module")
def ready_project(client: Any, worker: Any) -> dict[str, Any]:
    import uuid

    email = f"prov-{uuid.uuid4().hex[:8]}@example.com"
    client.post("/api/v1/auth/register", json={"email": email, "password": "provider-pw"})
    tok = client.post("/api/v1/auth/login", json={"email": email, "password": "provider-pw"})
    u = {"email": email, "headers": {"Authorization": f"Bearer {tok.json()['access_token']}"}}
    p = client.post("/api/v1/projects", json={"name": "prov"}, headers=u["headers"]).json()
    doc = upload(client, u, p["id"], "iter.txt", TEXT).json()
    wait_for_status(client, u, p["id"], doc["id"], {"ready"})
    return {"user": u, "project": p}


def _ask(client: Any, rp: dict[str, Any], **extra: Any) -> Any:
    return client.post(f"/api/v1/projects/{rp['project']['id']}/ask",
                       json={**QUESTION, **extra}, headers=rp["user"]["headers"])


def _fresh_provider(client: Any, rp: dict[str, Any], url: str, **extra: Any) -> str:
    r = add_provider(client, rp["user"], url, **extra)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_dns_rebinding_is_refused_at_connect_time(client: Any, ready_project: Any,
                                                  monkeypatch: Any) -> None:
    """The name resolved to a public address when the provider was made; at ask time it
    resolves to loopback. Nothing may connect there."""
    listener = Listener(hold=False)
    try:
        pid = _fresh_provider(client, ready_project,
                              f"https://rebind.example.com:{listener.port}/v1")
        real = socket.getaddrinfo

        def rebound(host: Any, *args: Any, **kw: Any) -> Any:
            if host == "rebind.example.com":
                return real("127.0.0.1", *args, **kw)
            return real(host, *args, **kw)

        monkeypatch.setattr(socket, "getaddrinfo", rebound)
        r = _ask(client, ready_project, provider_id=pid)
    finally:
        listener.close()
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "extractive"
    assert listener.connects == 0


def test_provider_errors_look_alike(client: Any, ready_project: Any, dead_port: int) -> None:
    """Unreachable, HTTP 404, HTTP 500 and garbage are one message: the answer cannot be
    used to scan ports or hosts. The reasons go to the log."""
    errors = set()
    with FakeLLM(status=404) as e404, FakeLLM(status=500) as e500, \
            FakeLLM(body=b"not json") as garbage:
        for url in (f"http://localhost:{dead_port}/v1", e404.url, e500.url, garbage.url):
            pid = _fresh_provider(client, ready_project, url)
            body = _ask(client, ready_project, provider_id=pid).json()
            assert body["mode"] == "extractive", body
            errors.add(body["provider_error"])
    assert len(errors) == 1, errors
    (message,) = errors
    assert "HTTP" not in message and "unreachable" not in message


def test_provider_response_is_capped(client: Any, ready_project: Any, settings: Any) -> None:
    huge = json.dumps({"choices": [{"message": {"content": "x" * (
        settings.provider_max_response_bytes + 10)}}]}).encode()
    with FakeLLM(body=huge) as llm:
        pid = _fresh_provider(client, ready_project, llm.url)
        body = _ask(client, ready_project, provider_id=pid).json()
    assert body["mode"] == "extractive" and body["provider_error"]


def test_allowlisted_provider_gets_the_host_header(client: Any, ready_project: Any) -> None:
    with FakeLLM() as llm:
        pid = _fresh_provider(client, ready_project, llm.url)
        body = _ask(client, ready_project, provider_id=pid).json()
        assert body["mode"] == "generative", body
        assert llm.requests[-1]["host"] == f"localhost:{llm.port}"


def _events(text: str) -> list[tuple[str, Any]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_ask_streams_from_the_provider(client: Any, ready_project: Any) -> None:
    with FakeLLM(answer="The largest tokamak is ITER in France [1].") as llm:
        pid = _fresh_provider(client, ready_project, llm.url)
        r = _ask(client, ready_project, provider_id=pid, stream=True)
        assert llm.requests[-1]["body"]["stream"] is True
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-accel-buffering"] == "no"
    events = _events(r.text)
    assert events[0][0] == "sources" and events[0][1][0]["filename"] == "iter.txt"
    tokens = [d["text"] for e, d in events if e == "token"]
    assert len(tokens) > 3
    assert "".join(tokens).strip() == "The largest tokamak is ITER in France [1]."
    assert events[-1] == ("done", {"mode": "generative", "provider": "local",
                                   "provider_error": None})


def test_ask_streams_the_extractive_fallback(client: Any, ready_project: Any,
                                             dead_port: int) -> None:
    pid = _fresh_provider(client, ready_project, f"http://localhost:{dead_port}/v1")
    r = _ask(client, ready_project, provider_id=pid, stream=True)
    events = _events(r.text)
    tokens = [d["text"] for e, d in events if e == "token"]
    assert len(tokens) > 3 and "ITER" in "".join(tokens)
    done = events[-1]
    assert done[0] == "done" and done[1]["mode"] == "extractive" and done[1]["provider_error"]


def _failures(logs: list[dict[str, Any]], provider: str = "local") -> list[str]:
    """The reasons of the provider_failed events the app logged for ``provider``."""
    return [e["error"] for e in logs
            if e.get("event") == "provider_failed" and e.get("provider") == provider]


_TOKEN = b'data: {"choices": [{"delta": {"content": "' + b"x" * 1000 + b' "}}]}\n\n'


@pytest.mark.parametrize(("flood", "piece", "stream"), [
    ("tokens", _TOKEN, True),                 # valid SSE chunks, for ever
    ("endless line", b"y" * 16384, True),     # one line that never ends
    ("endless json", b" " * 16384, False),    # a JSON body of blanks, for ever
])
def test_endless_provider_response_is_cut_at_the_cap(client: Any, ready_project: Any,
                                                     settings: Any, flood: str, piece: bytes,
                                                     stream: bool) -> None:
    """A provider that never stops sending: the app stops reading once more than
    PROVIDER_MAX_RESPONSE_BYTES arrived and hangs up; the fake provider sees the
    connection go away long before its own limit (a line that never ends is not buffered
    either). The user gets the generic error, after the tokens already streamed (marked
    incomplete) or with the extractive answer; the log says the response was too large."""
    from app.answer import PROVIDER_FAILED

    cap = settings.provider_max_response_bytes
    with captured_logs() as logs, FakeLLM(flood=piece) as llm:
        pid = _fresh_provider(client, ready_project, llm.url)
        r = _ask(client, ready_project, provider_id=pid, stream=stream)
        assert llm.flood_over.wait(60), "the provider is still sending"
    # It read past the cap (the server wrote more), then hung up; what went out beyond the
    # cap sat in the sockets' buffers (tens of MiB at most on loopback).
    assert llm.hung_up, (flood, llm.flooded)
    assert cap < llm.flooded < FakeLLM.FLOOD_LIMIT // 2, (flood, llm.flooded)
    assert r.status_code == 200, r.text
    if not stream:
        body = r.json()
        assert body["mode"] == "extractive" and body["provider_error"] == PROVIDER_FAILED
        assert "ITER" in body["answer"]
    else:
        events = _events(r.text)
        text = "".join(d["text"] for e, d in events if e == "token")
        if flood == "tokens":
            assert events[-1] == ("done", {"mode": "generative", "provider": "local",
                                           "provider_error": PROVIDER_FAILED,
                                           "incomplete": True})
            assert 0 < len(text) <= cap and set(text) <= {"x", " "}
        else:
            assert events[-1] == ("done", {"mode": "extractive", "provider": "local",
                                           "provider_error": PROVIDER_FAILED})
            assert "ITER" in text and "y" * 100 not in text
    assert _failures(logs) == [f"response larger than {cap} bytes"]
    assert "larger than" not in r.text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [302, 307])
def test_provider_redirects_are_not_followed(client: Any, ready_project: Any, status: int,
                                             stream: bool) -> None:
    """A provider that answers with a redirect, here to a loopback port (an address no
    provider URL may name): the redirect is not followed, its target is never contacted,
    the user gets the generic error and the log says which status came back."""
    from app.answer import PROVIDER_FAILED

    target = Listener(hold=False)
    location = f"http://127.0.0.1:{target.port}/v1/chat/completions"
    try:
        with captured_logs() as logs, \
                FakeLLM(status=status, headers={"Location": location}) as llm:
            pid = _fresh_provider(client, ready_project, llm.url)
            r = _ask(client, ready_project, provider_id=pid, stream=stream)
            assert len(llm.requests) == 1
    finally:
        target.close()
    assert target.connects == 0
    assert r.status_code == 200, r.text
    done = _events(r.text)[-1][1] if stream else r.json()
    assert done["mode"] == "extractive" and done["provider_error"] == PROVIDER_FAILED
    assert _failures(logs) == [f"provider answered HTTP {status}"]
    assert "127.0.0.1" not in r.text and f"HTTP {status}" not in r.text


@pytest.mark.parametrize("stream", [False, True])
def test_provider_failure_reason_is_logged_not_shown(client: Any, ready_project: Any,
                                                     dead_port: int, stream: bool) -> None:
    """Why a provider failed (its HTTP status, the connection error's type) is in the
    log's provider_failed event, for the operator; the user's answer carries only the
    generic error, and nothing the provider said."""
    from app.answer import PROVIDER_FAILED

    with FakeLLM(status=500, body=b'{"error": "model overloaded on node gpu-7"}') as e500:
        cases = [("broken", e500.url, "provider answered HTTP 500"),
                 ("gone", f"http://localhost:{dead_port}/v1",
                  "provider unreachable: ConnectError")]
        for name, url, reason in cases:
            pid = _fresh_provider(client, ready_project, url, name=name)
            with captured_logs() as logs:
                r = _ask(client, ready_project, provider_id=pid, stream=stream)
            assert r.status_code == 200, r.text
            done = _events(r.text)[-1][1] if stream else r.json()
            assert done["mode"] == "extractive" and done["provider"] == name, done
            assert done["provider_error"] == PROVIDER_FAILED
            assert _failures(logs, name) == [reason], logs
            for secret in (reason, "HTTP 500", "ConnectError", "gpu-7", "localhost"):
                assert secret not in r.text, (secret, r.text)
