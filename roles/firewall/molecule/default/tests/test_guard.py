"""The role refuses a policy that would lock Ansible out, and bad input, before changing anything."""

import os
import subprocess
from pathlib import Path

testinfra_hosts = ["firewall-db"]

SCENARIO = Path(__file__).resolve().parents[1]


def firewall_state(host):
    return host.check_output("ufw show added; iptables-save | grep -v '^#' | sed 's/\\[[0-9:]*\\]//'")


def test_lockout_bad_source_and_bad_rule_refused_nothing_changed(host):
    before = firewall_state(host)
    out = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SCENARIO / "refuse.yml")],
                         env=dict(os.environ, ANSIBLE_NOCOLOR="1"), capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text  # the refusals were rescued by refuse.yml
    lockout = next(line for line in text.splitlines() if "REFUSED-LOCKOUT" in line)
    assert "would lock you out" in lockout and "10.90.7.1 to port 22/tcp" in lockout
    source = next(line for line in text.splitlines() if "REFUSED-SOURCE" in line)
    assert "rule metrics from db.example.org" in source and "firewall_address" in source
    rule = next(line for line in text.splitlines() if "REFUSED-RULE" in line)
    assert "these rules are invalid: too-high, backwards." in rule
    assert firewall_state(host) == before
    assert host.run("true").rc == 0  # still reachable
