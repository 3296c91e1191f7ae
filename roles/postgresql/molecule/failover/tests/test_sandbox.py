"""After switchover, failover and rejoin with pg_rewind, every server still runs in the sandbox of its
unit (Debian 13, PostgreSQL 17)."""
import re

UNIT = "postgresql@17-main.service"
# Measured on the Debian 13 lab hosts (9.6 without the drop-in).
MAX_EXPOSURE = 1.3


def test_exposure(exposure):
    assert exposure(UNIT) <= MAX_EXPOSURE


def test_server_sandboxed(host):
    assert host.service(UNIT).is_running
    props = host.check_output(f"systemctl show -p User,ProtectSystem,CapabilityBoundingSet,NoNewPrivileges {UNIT}")
    assert sorted(props.splitlines()) == ["CapabilityBoundingSet=", "NoNewPrivileges=yes", "ProtectSystem=strict",
                                          "User=postgres"]
    postmaster = host.check_output(f"systemctl show -p MainPID --value {UNIT}")
    status = host.file(f"/proc/{postmaster}/status").content_string
    assert int(re.search(r"^CapBnd:\s+([0-9a-f]+)", status, re.M).group(1), 16) == 0
    assert host.check_output(f"ps -o user= -p {postmaster}") == "postgres"
