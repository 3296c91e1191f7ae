#!/usr/bin/python3
"""Replication settings that Redis and Sentinel read at start (redis role).

    redis-ha-config replication NAME   before redis@NAME starts: writes
                                       /run/redis-NAME/replication.conf, which
                                       redis-NAME.conf includes
    redis-ha-config sentinel           before redis-sentinel starts: writes its
                                       runtime file /var/lib/redis/sentinel/sentinel.conf

Ansible owns the settings (/etc/redis/*.conf, read-only to Redis); Sentinel owns the
state (who is primary now, epochs, known replicas and sentinels). So neither file
that Ansible writes names the current primary:

* an instance asks the sentinels which host is the primary of its name and starts
  as that primary or as its replica. Only when no sentinel answers (the first
  deployment, before any sentinel runs) it follows the inventory's bootstrap
  primary. A host that was primary before a failover therefore comes back as a
  replica of the new primary instead of as a second primary with old data;
* Sentinel rewrites its own file at every change of state. It starts from
  Ansible's settings plus the state lines of its last runtime file; a sentinel
  without one (new host) asks its peers for the current primaries.

Settings come from /etc/redis/ha.json (root:redis 0640). Python's standard library
only: this runs as the service user inside the units' sandbox.
"""
from __future__ import annotations

import collections
import json
import os
import socket
import sys
import tempfile

CONFIG = "/etc/redis/ha.json"
SENTINEL_SEED = "/etc/redis/redis-sentinel.conf"
SENTINEL_RUNTIME = "/var/lib/redis/sentinel/sentinel.conf"
# Lines of Sentinel's own file that are state, not settings: kept across restarts.
STATE_KEYS = ("myid", "current-epoch", "config-epoch", "leader-epoch",
              "known-replica", "known-sentinel")


def log(msg: str) -> None:
    print(f"redis-ha-config: {msg}", file=sys.stderr, flush=True)


def command(addr: str, port: int, args: list[str], user: str, password: str,
            timeout: float) -> object:
    """One command to a Redis or Sentinel server (RESP 2) after AUTH; its reply."""
    with socket.create_connection((addr, port), timeout=timeout) as s:
        f = s.makefile("rb")
        for cmd in (["AUTH", user, password], args):
            parts = [a.encode() for a in cmd]
            s.sendall(b"*%d\r\n" % len(parts)
                      + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
            reply = _read(f)
            if isinstance(reply, Exception):
                raise reply
        return reply


def _read(f) -> object:
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:].rstrip(b"\r\n").decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        return RuntimeError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        return None if rest == "-1" else f.read(int(rest) + 2)[:-2].decode()
    if kind == b"*":
        return None if rest == "-1" else [_read(f) for _ in range(int(rest))]
    raise ConnectionError(f"unexpected reply {line!r}")


def current_primary(conf: dict, name: str, exclude: str | None = None) -> tuple[str, int] | None:
    """The primary of `name` that most answering sentinels report; None if none answers."""
    votes: collections.Counter = collections.Counter()
    for addr, port in conf["sentinels"]:
        if addr == exclude:
            continue
        try:
            reply = command(addr, int(port), ["SENTINEL", "get-master-addr-by-name", name],
                            conf["sentinel_user"], conf["sentinel_password"], conf["timeout"])
        except (OSError, RuntimeError) as exc:
            log(f"sentinel {addr}:{port}: {type(exc).__name__}: {exc}")
            continue
        if isinstance(reply, list) and len(reply) == 2:
            votes[(reply[0], int(reply[1]))] += 1
    return votes.most_common(1)[0][0] if votes else None


def write(path: str, text: str, mode: int = 0o640) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def replication(conf: dict, name: str) -> None:
    port = int(conf["instances"][name])
    me = conf["self"]
    primary = current_primary(conf, name)
    source = "the sentinels"
    if primary is None:
        primary, source = (conf["bootstrap_primary"], port), "the inventory (no sentinel answered)"
    if primary == (me, port):
        text, said = "# primary\n", f"primary (said {source})"
    else:
        text, said = f"replicaof {primary[0]} {primary[1]}\n", \
            f"replica of {primary[0]}:{primary[1]} (said {source})"
    write(f"/run/redis-{name}/replication.conf",
          "# Written by redis-ha-config at the start of redis@%s.\n%s" % (name, text))
    log(f"redis@{name} starts as {said}")


def sentinel(conf: dict) -> None:
    with open(SENTINEL_SEED) as f:
        seed = f.read().splitlines()
    names = [ln.split()[2] for ln in seed if ln.startswith("sentinel monitor ")]
    state: list[str] = []
    monitors: dict[str, tuple[str, str]] = {}
    try:
        with open(SENTINEL_RUNTIME) as f:
            for ln in f.read().splitlines():
                words = ln.split()
                if len(words) >= 5 and words[:2] == ["sentinel", "monitor"]:
                    monitors[words[2]] = (words[3], words[4])
                elif len(words) >= 2 and words[0] == "sentinel" and words[1] in STATE_KEYS:
                    # per-primary state only for the names still monitored
                    if words[1] in ("myid", "current-epoch") or words[2] in names:
                        state.append(ln)
        origin = "its last runtime file"
    except FileNotFoundError:
        origin = "its peers"
        for name in names:
            found = current_primary(conf, name, exclude=conf["self"])
            if found:
                monitors[name] = (found[0], str(found[1]))
    out = []
    for ln in seed:
        words = ln.split()
        if len(words) == 6 and words[:2] == ["sentinel", "monitor"] and words[2] in monitors:
            addr, port = monitors[words[2]]
            ln = f"sentinel monitor {words[2]} {addr} {port} {words[5]}"
            log(f"{words[2]}: primary {addr}:{port} (from {origin})")
        out.append(ln)
    out += ["", "# State kept from the last runtime file (Sentinel rewrites this file)."] + state
    write(SENTINEL_RUNTIME, "\n".join(out) + "\n")


def main() -> None:
    with open(CONFIG) as f:
        conf = json.load(f)
    conf.setdefault("timeout", 1.0)
    if len(sys.argv) == 3 and sys.argv[1] == "replication" and sys.argv[2] in conf["instances"]:
        replication(conf, sys.argv[2])
    elif len(sys.argv) == 2 and sys.argv[1] == "sentinel":
        sentinel(conf)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
