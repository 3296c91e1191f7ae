"""lynis on one host of each host type of the deployed lab (issue 23): the hardening
index, warnings and suggestions that `lynis audit system` gives a host that site.yml
deployed, with the hardening role in it. Target: index >= 80 and no warning on every
host type. lynis is Debian's package, installed for the audit and purged after it."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import on

TARGET = 80
# Host type -> the inventory groups whose first host is audited.
TYPES = {"lb": ("lb",), "app": ("app",), "db": ("db_primary",), "redis/vector": ("redis", "vector"),
         "monitoring": ("monitoring",)}
REPORT = "/var/lib/lynis-drill.dat"


def audit(host: str) -> dict:
    """lynis audit system --quick on host: index, lynis version, warnings and suggestions ([id, text])."""
    on(host, "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lynis >/dev/null", timeout=900)
    try:
        on(host, f"rm -f {REPORT}; lynis audit system --quick --no-colors --report-file {REPORT} >/dev/null",
           timeout=1800)
        data: dict = {"host": host, "warnings": [], "suggestions": []}
        for line in on(host, f"cat {REPORT}").splitlines():
            key, _, value = line.partition("=")
            if key == "hardening_index":
                data["index"] = int(value)
            elif key == "lynis_version":
                data["lynis"] = value
            elif key == "tests_executed":
                data["tests"] = len(value.strip("|").split("|"))
            elif key in ("warning[]", "suggestion[]"):
                test, text = value.split("|")[:2]
                data[key[:-3] + "s"].append(f"{test} {text}")
        return data
    finally:
        on(host, f"DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq lynis >/dev/null; rm -f {REPORT}",
           check=False)


@pytest.fixture(scope="module")
def audits(the_lab) -> dict[str, dict]:
    hosts = {kind: next(the_lab.groups[g][0] for g in groups if the_lab.groups.get(g)) for kind, groups in TYPES.items()}
    with ThreadPoolExecutor(len(hosts)) as pool:
        return dict(zip(hosts, pool.map(audit, hosts.values())))


@pytest.mark.parametrize("kind", list(TYPES))
def test_lynis_hardening_index_of_each_host_type(audits, record, kind):
    """lynis audit system on one host of the type: hardening index >= 80, no warning."""
    a = audits[kind]
    record(host=a["host"], lynis=a.get("lynis"), index=a.get("index"), target=TARGET, tests=a.get("tests"),
           warnings=a["warnings"], suggestions=a["suggestions"])
    assert a.get("tests", 0) > 100, f"lynis ran almost no test on {a['host']}: {a}"
    assert not a["warnings"], a["warnings"]
    assert a["index"] >= TARGET, f"{a['host']}: hardening index {a['index']} < {TARGET}; left: {a['suggestions']}"
