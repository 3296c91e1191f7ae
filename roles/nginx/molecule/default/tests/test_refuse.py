"""A variable that breaks nginx -t is refused; the previous files stay and the site keeps serving."""

import os
import subprocess
from pathlib import Path

from conftest import curl

testinfra_hosts = ["nginx-lb"]
SCENARIO = Path(__file__).resolve().parents[1]
FILES = "/etc/nginx/nginx.conf /etc/nginx/conf.d/*"


def test_bad_config_refused_site_stays_up(host, client):
    before = host.check_output(f"sha256sum {FILES}")
    master = host.check_output("systemctl show -p MainPID --value nginx")
    out = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SCENARIO / "bad_config.yml")],
                         env=dict(os.environ, ANSIBLE_NOCOLOR="1"), capture_output=True, text=True, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "nginx -t refused the new configuration" in text
    assert "proxy_buffering" in text  # nginx's own message is passed on
    assert host.check_output(f"sha256sum {FILES}") == before  # previous files back, no leftovers
    assert host.check_output("systemctl show -p MainPID --value nginx") == master
    assert "proxy_buffering maybe" not in host.check_output("nginx -T 2>/dev/null")
    assert curl(client, "-o", "/dev/null", "-w", "%{http_code}", path="/api/v1/ping").stdout == "200"
