#!/usr/bin/python3
"""TCP connect scan, test scaffolding for the firewall scenario.

Usage: scan.py ADDRESS FIRST LAST [TIMEOUT]
Prints, space-separated, the ports of ADDRESS in FIRST..LAST that the firewall
lets through: open (the connection was made) or closed (the host answered with a
reset). Ports whose SYN goes unanswered (dropped by the firewall) are left out;
within TIMEOUT seconds (default 2) the kernel retransmits an unanswered SYN once,
so a single lost packet does not make a port look filtered.
"""
import errno
import resource
import selectors
import socket
import sys
import time

address, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
batch = max(100, min(hard - 64, 5000))
THROUGH = (0, errno.ECONNREFUSED)

through = []
ports = list(range(first, last + 1))
for start in range(0, len(ports), batch):
    sel = selectors.DefaultSelector()
    pending = 0
    for port in ports[start:start + batch]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex((address, port))
        if rc == errno.EINPROGRESS:
            sel.register(s, selectors.EVENT_WRITE, port)
            pending += 1
        else:
            if rc in THROUGH:
                through.append(port)
            s.close()
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
            if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in THROUGH:
                through.append(key.data)
            sel.unregister(key.fileobj)
            key.fileobj.close()
            pending -= 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    sel.close()
print(" ".join(str(p) for p in sorted(through)))
