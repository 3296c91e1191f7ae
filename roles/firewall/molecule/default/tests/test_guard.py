"""The role refuses bad input and a policy that would lock Ansible out, before changing anything."""

import os
import subprocess
from pathlib import Path

testinfra_hosts = ["firewall-db"]

SCENARIO = Path(__file__).resolve().parents[1]


def run_refused(playbook):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    result = subprocess.run(["ansible-playbook", "-i", inventory, str(SCENARIO / playbook)],
                            env=env, capture_output=True, text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr


def firewall_state(host):
    return host.check_output("ufw show added; iptables-save | grep -v '^#' | sed 's/\\[[0-9:]*\\]//'")


def test_lockout_refused_and_nothing_changed(host):
    before = firewall_state(host)
    rc, out = run_refused("lockout.yml")
    assert rc != 0
    assert "would lock you out" in out
    assert "10.90.7.1 to port 22/tcp" in out
    assert firewall_state(host) == before
    assert host.run("true").rc == 0  # still reachable


def test_bad_source_refused(host):
    before = firewall_state(host)
    rc, out = run_refused("bad_source.yml")
    assert rc != 0
    assert "rule metrics from db.example.org" in out
    assert "Give such hosts a firewall_address" in out
    assert firewall_state(host) == before
