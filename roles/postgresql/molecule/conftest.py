"""Helpers shared by the role's scenarios (pytest loads this file for every tests/ folder below it)."""
import re

import pytest


@pytest.fixture
def exposure(host):
    """systemd-analyze's overall exposure figure of a unit on this host."""
    def measure(unit):
        out = host.check_output(f"systemd-analyze security --no-pager {unit} | tail -1")
        value = float(re.search(r"exposure level for \S+: ([0-9.]+)", out).group(1))
        print(f"{host.backend.get_hostname()} {unit}: exposure {value} ({out})")
        return value
    return measure
