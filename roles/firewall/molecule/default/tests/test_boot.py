"""The rules survive a power cycle: ufw loads them at boot (run first, the scans then see the rebooted host)."""

import os
import subprocess

testinfra_hosts = ["firewall-db"]


def test_rules_active_after_reboot(host):
    lab = [os.environ.get("PYTHON", "python3"), os.path.join(os.environ["AIPL_REPO"], "tests/lab/lab.py")]
    subprocess.run(lab + ["stop", "firewall-db"], check=True, timeout=300)
    subprocess.run(lab + ["start", "firewall-db"], check=True, timeout=300)
    assert "Status: active" in host.check_output("ufw status")
    assert "--dport 5432" in host.check_output("iptables -S ufw-user-input")
