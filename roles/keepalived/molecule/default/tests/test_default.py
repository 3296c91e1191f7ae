"""keepalived: one virtual IP for the two load balancers, moved when Nginx or the
host that holds it fails, VRRP accepted from the peer only, one certificate.

Cluster checks run once, from ka-client; each lb is checked for itself.
"""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import testinfra

LBS = {"ka-lb1": "10.90.12.11", "ka-lb2": "10.90.12.12"}
CLIENT = "ka-client"
VIP = "10.90.12.100"
CA = "/usr/local/share/ka-ca.crt"
REPO = Path(os.environ.get("AIPL_REPO", Path(__file__).resolve().parents[5]))
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")

# A VRRP v3 advert for the VIP's router id with priority 254, sent from the client
# straight to a load balancer: what a rogue host on the network would send.
ROGUE = r"""
import socket, struct, sys
dst, vip = sys.argv[1], sys.argv[2]
src = socket.gethostbyname(socket.gethostname())
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
body = lambda c: struct.pack("!BBBBHH", 0x31, 51, 254, 1, 100, c) + socket.inet_aton(vip)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 112, len(body(0)))
pkt = body(csum(pseudo + body(0)))
import time
for _ in range(8):
    s.sendto(pkt, (dst, 0)); time.sleep(0.5)
print("sent")
"""


def name_of(host):
    return host.backend.get_hostname()


def get(name):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)


@pytest.fixture
def lb(host):
    if name_of(host) not in LBS:
        pytest.skip("load balancer check")
    return host


@pytest.fixture
def client(host):
    if name_of(host) != CLIENT:
        pytest.skip("cluster check (runs once, from the client)")
    return host


def holders(among=tuple(LBS)):
    """The load balancers (of those that are up) that hold the VIP."""
    return [n for n in among if f" {VIP}/24 " in get(n).check_output("ip -o -4 addr show") + " "]


def wait_for(what, check, timeout, step=0.5):
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout} s"
        time.sleep(step)
    return time.monotonic() - t0


def lab(*args):
    subprocess.run(["python3", str(REPO / "tests" / "lab" / "lab.py"), *args], check=True, timeout=600)


def http_code(client, url):
    """The status of a GET; with the answer's first lines when it is not a redirect or 502."""
    out = client.check_output(f"curl -s -D - -o /dev/null -m 5 -w '%{{http_code}}' --cacert {CA} {url} || true")
    code = out.splitlines()[-1] if out else "000"
    if code not in ("301", "502"):
        print(url, out[:500])
    return code


# --- each load balancer ---------------------------------------------------------------


def test_keepalived_runs_sandboxed_with_a_valid_config(lb):
    svc = lb.service("keepalived")
    assert svc.is_running and svc.is_enabled
    version = lb.run("keepalived --version").stderr.split()[1]
    if version >= "v2.3":  # 2.2 hangs in --config-test with a vrrp_script (see tasks/configure.yml)
        assert lb.run("keepalived --config-test --use-file /etc/keepalived/keepalived.conf").rc == 0
    log = lb.check_output("journalctl -u keepalived -b --no-pager -o cat")
    assert not [ln for ln in log.splitlines() if "Unknown keyword" in ln or "invalid" in ln.lower()], log
    conf = lb.file("/etc/keepalived/keepalived.conf")
    assert (conf.user, conf.mode) == ("root", 0o640)
    other = next(a for n, a in LBS.items() if n != name_of(lb))
    assert re.search(r"unicast_peer \{\s*" + re.escape(other) + r"\s*\}", conf.content_string)
    out = lb.check_output("systemd-analyze security --no-pager keepalived.service | tail -1")
    exposure = float(re.search(r"exposure level for \S+: ([0-9.]+)", out).group(1))
    print(f"{name_of(lb)} keepalived.service: exposure {exposure}")
    assert exposure <= 5.0, out
    # The health check runs unprivileged.
    assert lb.user("keepalived_script").exists
    assert "script_user keepalived_script" in conf.content_string


def test_the_firewall_admits_vrrp_from_the_load_balancers_only(lb):
    other = next(a for n, a in LBS.items() if n != name_of(lb))
    rules = lb.check_output("ufw status")
    sources = {ln.split("ALLOW")[-1].split()[0] for ln in rules.splitlines() if "/vrrp" in ln}
    assert other + "/vrrp" in sources, rules
    assert sources <= {a + "/vrrp" for a in LBS.values()}, rules


# --- the pair -----------------------------------------------------------------------


def _master_metric(name):
    prom = get(name).file("/var/lib/prometheus/node-exporter/keepalived.prom").content_string
    return re.search(r'^keepalived_vrrp_master\{vrrp_instance="VI_51",vip="10.90.12.100"\} (\d)$', prom, re.M).group(1)


def test_exactly_one_load_balancer_holds_the_vip(client):
    assert len(holders()) == 1, holders()
    holder = holders()[0]
    log = get(holder).check_output("journalctl -t keepalived-notify --no-pager -o cat")
    assert "is now MASTER" in log, log
    # The state for node exporter's textfile collector: 1 on the holder, 0 on the other.
    assert {n: _master_metric(n) for n in LBS} == {n: "1" if n == holder else "0" for n in LBS}


def test_one_certificate_on_both_with_the_vip_in_it(client):
    fingerprints = {}
    for name, addr in LBS.items():
        pem = client.check_output(
            f"openssl s_client -connect {addr}:443 -servername api.ka.example </dev/null 2>/dev/null "
            "| openssl x509 -noout -fingerprint -sha256 -ext subjectAltName")
        fingerprints[name] = pem.splitlines()[0]
        assert f"IP Address:{VIP}" in pem, pem
        assert "DNS:ka-lb1" in pem and "DNS:ka-lb2" in pem and "DNS:api.ka.example" in pem, pem
    assert len(set(fingerprints.values())) == 1, fingerprints
    # Clients verify it through the VIP (the upstream is down here: 502 from Nginx).
    assert http_code(client, f"https://{VIP}/health/live") == "502"
    assert http_code(client, f"http://{VIP}/") == "301"


def test_vip_moves_when_nginx_stops_and_stays_when_it_is_back(client):
    holder = holders()[0]
    other = next(n for n in LBS if n != holder)
    get(holder).check_output("systemctl stop nginx")
    try:
        took = wait_for("the VIP on the other load balancer", lambda: holders() == [other], 30)
        print(f"VIP moved {took:.1f} s after nginx stopped on {holder}")
        assert http_code(client, f"http://{VIP}/") == "301"
    finally:
        get(holder).check_output("systemctl start nginx")
    time.sleep(8)  # rise checks pass on the old holder; without preemption it stays backup
    assert holders() == [other]
    log = get(other).check_output("journalctl -t keepalived-notify --no-pager -o cat")
    assert "is now MASTER" in log
    assert _master_metric(other) == "1" and _master_metric(holder) == "0"


def test_vip_moves_when_its_host_is_powered_off_and_the_host_rejoins(client):
    holder = holders()[0]
    other = next(n for n in LBS if n != holder)
    lab("stop", holder)
    try:
        took = wait_for("the VIP on the other load balancer", lambda: holders([other]) == [other], 30)
        print(f"VIP moved {took:.1f} s after {holder} was powered off")
        codes = [http_code(client, f"http://{VIP}/") for _ in range(5)]
        assert set(codes) == {"301"}, codes
    finally:
        lab("start", holder)
    back = get(holder)
    wait_for("keepalived back on the rebooted host", lambda: back.service("keepalived").is_running, 120)
    time.sleep(6)
    assert holders() == [other]  # it rejoined as backup
    assert "BACKUP" in back.check_output("journalctl -b -t keepalived-notify --no-pager -o cat")


def test_a_rogue_vrrp_advert_is_dropped(client):
    """A host outside the lb group claims the VIP's router id with a higher priority:
    the firewall drops it before keepalived sees it; the holder keeps the VIP."""
    holder = holders()[0]
    since = get(holder).check_output("date +%s")
    assert client.check_output("python3 -c %s %s %s", ROGUE, LBS[holder], VIP) == "sent"
    time.sleep(3)
    assert holders() == [holder]
    log = get(holder).check_output(f"journalctl -u keepalived --since @{since} --no-pager -o cat")
    assert "10.90.12.99" not in log, log


# --- a changed unit: one load balancer at a time, the VIP holder last ------------------


def _since_boot(host, unit, prop):
    """A unit's timestamp on the kernel's monotonic clock, which every lab host shares."""
    return int(host.check_output(f"systemctl show -p {prop}Monotonic --value {unit}"))


def _stop_start(unit):
    hosts = {n: get(n) for n in LBS}
    return {n: (_since_boot(h, unit, "InactiveEnterTimestamp"), _since_boot(h, unit, "ActiveEnterTimestamp"))
            for n, h in hosts.items()}


def test_a_changed_unit_restarts_one_load_balancer_at_a_time_the_vip_holder_last(client):
    """Both units' sandbox drop-ins get a line and lose it again (two runs of the roles):
    each restart waits until the host answers again before the next host stops, the
    holder of the VIP goes last, and a client polling the VIP meanwhile is never
    without an answer for long."""
    holder = holders()[0]
    other = next(n for n in LBS if n != holder)
    probe = "/tmp/ka-rolling-probe.log"
    pid = client.check_output(
        f"rm -f {probe}; end=$(($(date +%s) + 1200)); nohup sh -c 'while [ $(date +%s) -lt '$end' ]; do "
        f"curl -s -o /dev/null -m 1 -w \"%{{http_code}} \" http://{VIP}/; date +%s.%N; sleep 0.1; done' "
        f"> {probe} 2>&1 & echo $!")
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_ROLES_PATH=str(REPO / "roles"))
    # The two roles alone (converge.yml also runs the firewall role and the client's play).
    converge = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "rolling.yml"
    converge.write_text("- hosts: lb\n  become: true\n  roles: [nginx, keepalived]\n")
    try:
        lines = '{"nginx_systemd_hardening_extra": ["Environment=AIPL_ROLL=1"], "keepalived_systemd_hardening_extra": ["Environment=AIPL_ROLL=1"]}'
        for extra in (["-e", lines], []):
            run = subprocess.run(["ansible-playbook", "-i", INVENTORY, str(converge), *extra], env=env, cwd=REPO,
                                 capture_output=True, text=True, timeout=1200)
            assert run.returncode == 0, run.stdout[-3000:]
            for unit in ("keepalived", "nginx"):
                stamps = _stop_start(unit)
                first, second = sorted(stamps, key=lambda n: stamps[n][0])
                # The first host was running again before the second one stopped.
                assert stamps[first][1] < stamps[second][0], (unit, stamps)
                if unit == "keepalived":
                    assert (first, second) == (other, holder), stamps
            holder = holders()[0]
            other = next(n for n in LBS if n != holder)
    finally:
        client.run(f"kill {int(pid)}")
    samples = [ln.split() for ln in client.check_output(f"cat {probe}").splitlines() if len(ln.split()) == 2]
    assert len(samples) > 100, samples[-5:]
    longest = streak = 0.0
    last_ok = float(samples[0][1])
    for code, at in samples:
        if code == "301":
            last_ok = float(at)
        else:
            streak = float(at) - last_ok
            longest = max(longest, streak)
    failed = sum(1 for code, _ in samples if code != "301")
    print(f"rolling restarts: {failed} of {len(samples)} probes of the VIP failed; longest gap {longest:.1f} s")
    assert longest < 3, f"{failed} of {len(samples)} failed; longest gap {longest:.1f} s"
