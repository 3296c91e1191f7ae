"""release: a rolling deploy of new app code (playbooks/deploy.yml), the new release's venv
seeded from the running one vs installed from the wheelhouse."""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.lab import REPO, Lab, log
from bench.report import Row

NAME = "release"


def options(ap) -> None:
    ap.add_argument("--release-runs", type=int, default=1, help="rolling deploys of new code per venv mode (median reported)")


def measure(lab: Lab) -> dict:
    """A rolling deploy of new app code (playbooks/deploy.yml: one app host at a time,
    build, install, migrate, switch, health gate) with the new release's venv installed
    from the wheelhouse (wheelhouse_seed_venv off) and started as a hard-linked copy of
    the running release's venv (the default, the lock being unchanged), alternately,
    --release-runs times each, in one run. Each deploy's source is the app with one
    comment line changed: a new release id, the same locked dependencies."""
    runs: dict[str, list[float]] = {"fresh_venv": [], "seeded_venv": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench-release-"))
    try:
        for i in range(lab.args.release_runs):
            for label, extra in (("fresh_venv", ["-e", "wheelhouse_seed_venv="]), ("seeded_venv", [])):
                src = tmp / f"{label}-{i}"
                shutil.copytree(REPO / "app", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
                init = src / "app" / "__init__.py"
                init.write_text(init.read_text() + f"# bench release {time.time_ns()}\n")
                secs, _ = lab.playbook("playbooks/deploy.yml", "-e", f"app_source_dir={src}", *extra)
                runs[label].append(secs)
                log(f"release: rolling deploy over {len(lab.app_hosts)} app hosts, {label}: {secs} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Back to the repository's own release, the one site.yml deploys: otherwise the lab runs
    # a copy whose source is gone, and the next site.yml switches back and reports changes.
    secs, _ = lab.playbook("playbooks/deploy.yml")
    log(f"release: the repository's own release deployed again in {secs} s")
    fresh, seeded = statistics.median(runs["fresh_venv"]), statistics.median(runs["seeded_venv"])
    return {"runs": runs, "fresh_venv_s": fresh, "seeded_venv_s": seeded, "speedup": fresh / seeded,
            "app_hosts": len(lab.app_hosts)}


def rows(res: dict) -> list[Row]:
    rl = res.get(NAME)
    if not rl:
        return []
    return [Row(f"rolling deploy of new app code (playbooks/deploy.yml, {rl['app_hosts']} app hosts): the new release's venv "
                "started as a hard-linked copy of the running one (lock unchanged) vs installed from the wheelhouse",
                "faster (ratio > 1)", f"{rl['seeded_venv_s']:.0f} s vs {rl['fresh_venv_s']:.0f} s = {rl['speedup']:.2f}× faster",
                rl["speedup"] > 1)]
