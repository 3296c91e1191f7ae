"""Port scans between the lab hosts: exactly the expected ports get through.

A TCP connect scan (scan.py, installed by prepare.yml) tells apart ports the
firewall lets through (open: something listens; closed: the host answered with
a reset) from ports it drops (no answer). What gets through must be exactly what
the model allows for the scanning host."""

import pytest

testinfra_hosts = ["firewall-app", "firewall-lb"]

ADDR = {"firewall-db": "10.90.7.31", "firewall-app": "10.90.7.21", "firewall-lb": "10.90.7.10"}
PORTS = "1-10000"
# (scanner, target) -> TCP ports that must get through; every other port is filtered.
EXPECTED = {
    # app hosts reach PostgreSQL and both Redis instances, not SSH (not an admin address).
    ("firewall-app", "firewall-db"): {5432, 6379, 6380},
    # any client reaches HTTP(S) on the load balancer.
    ("firewall-app", "firewall-lb"): {80, 443},
    # the load balancer is in the admin network (SSH) and is the source of the operator's own rule (9999).
    ("firewall-lb", "firewall-db"): {22, 9999},
    # the load balancer reaches the app port.
    ("firewall-lb", "firewall-app"): {22, 8000},
}


def reachable(host, target):
    first, last = PORTS.split("-")
    return {int(p) for p in host.check_output(f"scan {ADDR[target]} {first} {last}").split()}


@pytest.mark.parametrize("target", ["firewall-db", "firewall-app", "firewall-lb"])
def test_exactly_the_expected_ports_get_through(host, target):
    scanner = host.backend.get_hostname()
    if (scanner, target) not in EXPECTED:
        pytest.skip("not a pair this scenario checks")
    assert reachable(host, target) == EXPECTED[(scanner, target)]


def test_ssh_rate_limited_per_source(host):
    """ufw limit: from one address, the 6th new SSH connection within 30 s is refused."""
    if host.backend.get_hostname() != "firewall-lb":
        pytest.skip("checked from the admin-network host")
    results = host.check_output(
        "for i in 1 2 3 4 5 6 7 8 9 10; do if timeout 3 bash -c 'exec 3<>/dev/tcp/10.90.7.31/22'; "
        "then echo ok; else echo refused; fi; done").split()
    assert len(results) == 10
    assert results[0] == "ok"
    assert results.count("ok") <= 6
    assert results[-4:] == ["refused"] * 4
