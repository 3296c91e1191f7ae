"""Zero-downtime operations: a rolling deploy of a new release and then rollback.yml, under a
steady mixed load through Nginx (GETs, searches, upload POSTs), fail no request.

Each app host is drained from Nginx before its API restarts (roles/app/tasks/restart.yml,
roles/nginx's ai-platform-upstream), so no request is in flight on it when it stops; the
client is exempt from Nginx's rate limits meanwhile so that the load is steady."""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from conftest import INVENTORY, REPO, on
from steady import SteadyLoad

from bench.lab import run_playbook


def release_source(version: str) -> Path:
    """A copy of the app's source as a release of its own (another version, another wheel)."""
    dst = Path(tempfile.mkdtemp(prefix="drill-release-")) / "app"
    shutil.copytree(REPO / "app", dst, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"))
    init = dst / "app" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
    return dst


def invocations(hosts) -> dict[str, str]:
    return {h: on(h, "systemctl show -p InvocationID --value ai-platform-api").strip() for h in hosts}


def exempt(the_lab, on_: bool) -> None:
    """The client out of Nginx's rate limits (the nginx role's own variable), or back under them."""
    extra = ["-e", json.dumps({"nginx_rate_limit_exempt": [f"{the_lab.addr[the_lab.client]}/32"]})] if on_ else []
    run_playbook(INVENTORY, "playbooks/loadbalancer.yml", *extra)


def drained(out: str) -> int:
    """How many times a deploy's output shows a host taken out of rotation."""
    return len(re.findall(r'TASK \[app : Take this host out[^\n]*\n[^\n]*\nchanged: ', out))


def test_rolling_deploy_and_rollback_fail_no_request(the_lab, record):
    """deploy.yml (a new release) then rollback.yml under a steady mixed load through Nginx: 0 failed requests."""
    token, project = the_lab.account()
    source = release_source("9.9.1")
    load = SteadyLoad(the_lab, "deploy", token, project)
    exempt(the_lab, True)
    summary = None
    try:
        before = invocations(the_lab.apps)
        load.start()
        deploy_s, deploy_out = run_playbook(INVENTORY, "playbooks/deploy.yml", "-e", f"app_source_dir={source}")
        middle = invocations(the_lab.apps)
        on_new = {h: on(h, "readlink /opt/ai-platform/current") for h in the_lab.apps}
        rollback_s, rollback_out = run_playbook(INVENTORY, "playbooks/rollback.yml")
        after = invocations(the_lab.apps)
        summary = load.stop()
    finally:
        if summary is None:
            load.stop()
        exempt(the_lab, False)
        shutil.rmtree(source.parent, ignore_errors=True)
    record(deploy_s=deploy_s, rollback_s=rollback_s, requests=summary["requests"], failed=summary["failed"],
           requests_per_second=summary["per_second"], by_kind=summary["by_kind"],
           drained=drained(deploy_out) + drained(rollback_out), failures=summary["failures"] or "none",
           ok_per_second=summary["ok_per_second"])
    # The operations did what they say: every API restarted twice, on the new release, then back.
    assert all("/releases/9.9.1-" in r for r in on_new.values()), on_new
    assert all(before[h] != middle[h] != after[h] for h in the_lab.apps), (before, middle, after)
    assert drained(deploy_out) == drained(rollback_out) == len(the_lab.apps)
    # A steady load all along (several requests a second), uploads among them.
    assert summary["by_kind"]["upload"]["requests"] > 0 and summary["requests"] >= 5 * summary["seconds"], summary["per_second"]
    assert summary["failed"] == 0, summary["failures"]
