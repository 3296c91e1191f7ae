"""Requests to user-supplied URLs (answer providers), safe against SSRF.

* The URL is https, or plain http only for a host on PROVIDER_HTTP_ALLOWLIST; it carries
  no user name or password, no query and no fragment.
* For any host not on the allowlist the name is resolved once, at connect time, and the
  request goes to that very address (Host header and TLS SNI keep the name, so the
  certificate is still checked against it): every address the name resolves to must be
  public (not loopback, private, link-local, shared, reserved or multicast). A DNS answer
  that changes between the check and the connection (DNS rebinding) cannot redirect it.
* No redirects are followed, no proxy from the environment is used, and a response body
  is read only up to PROVIDER_MAX_RESPONSE_BYTES.
"""

from __future__ import annotations

import codecs
import ipaddress
import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx


class UnsafeURL(ValueError):
    """The URL is not allowed (the message says why; safe to show the user)."""


class ResponseTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    port: int
    trusted: bool  # on the operator's allowlist: no address check


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _literal_address(host: str) -> str | None:
    """The address a host name that is a numeric literal stands for, in any of the forms
    resolvers accept (127.1, 0x7f000001, 2130706433 ...); None for a real name."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, ValueError):  # not a literal; ValueError: NUL or non-ASCII
        return None


def check_url(url: str, allowlist: Sequence[str]) -> Target:
    """Validate a provider base URL; raises UnsafeURL with the reason."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UnsafeURL("the URL is malformed") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeURL("the URL must be https://host/...")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeURL("the URL must not contain a user name or password")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise UnsafeURL("the URL must not contain a query or a fragment")
    host = parts.hostname.lower().rstrip(".")
    port = port or (443 if parts.scheme == "https" else 80)
    trusted = host in allowlist or f"{host}:{port}" in allowlist
    if parts.scheme == "http" and not trusted:
        raise UnsafeURL("the URL must be https (plain http only for hosts the operator "
                        "allows)")
    if not trusted:
        literal = _literal_address(host)
        if literal is not None and not is_public(literal):
            raise UnsafeURL("the URL points to a private or local address")
    return Target(urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")),
                  host, port, trusted)


def _public_address(host: str, port: int) -> str:
    """Resolve now; every address must be public. Returns the one to connect to."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeURL(f"cannot resolve {host}") from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses or not all(is_public(a) for a in addresses):
        raise UnsafeURL(f"{host} resolves to a private or local address")
    return addresses[0]


@contextmanager
def post_stream(target: Target, path: str, body: dict[str, Any], headers: dict[str, str],
                timeout: float) -> Iterator[httpx.Response]:
    """POST ``body`` as JSON to ``target.url + path``; yields the streaming response."""
    parts = urlsplit(target.url + path)
    extensions: dict[str, Any] = {}
    url = target.url + path
    headers = dict(headers)
    if not target.trusted:
        address = _public_address(target.host, target.port)
        literal = f"[{address}]" if ":" in address else address
        url = urlunsplit((parts.scheme, f"{literal}:{target.port}", parts.path, "", ""))
        headers["Host"] = parts.netloc
        extensions["sni_hostname"] = target.host
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=3.0), follow_redirects=False,
                      trust_env=False) as client, \
            client.stream("POST", url, json=body, headers=headers,
                          extensions=extensions) as resp:
        yield resp


def read_capped(resp: httpx.Response, limit: int) -> bytes:
    data = bytearray()
    for chunk in resp.iter_bytes():
        data += chunk
        if len(data) > limit:
            raise ResponseTooLarge(f"response larger than {limit} bytes")
    return bytes(data)


_EOL = re.compile(r"\r\n|\r|\n")  # Server-Sent Events end lines with any of these


def iter_lines_capped(resp: httpx.Response, limit: int) -> Iterator[str]:
    """The body's lines (UTF-8), ResponseTooLarge once more than ``limit`` bytes arrived.
    The bytes are counted as they arrive, not per line: httpx's iter_lines() buffers a
    line until it ends, so a provider that never sent a line break was read without end."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    seen = 0
    pending = ""
    for chunk in resp.iter_bytes():
        seen += len(chunk)
        if seen > limit:
            raise ResponseTooLarge(f"response larger than {limit} bytes")
        text = pending + decoder.decode(chunk)
        cut = len(text) - 1 if text.endswith("\r") else len(text)  # "\r" may start "\r\n"
        *lines, pending = _EOL.split(text[:cut])
        pending += text[cut:]
        yield from lines
    lines = _EOL.split(pending + decoder.decode(b"", final=True))
    if lines[-1] == "":
        lines.pop()
    yield from lines
