#!/usr/bin/env python3
"""Download binary wheels for one target Python and pack them into one archive.

build-wheelhouse.py ARCHIVE PYVER PLATFORMS(comma) NO_DEPS(0|1) REQS_JSON FILES_JSON WHEELS_JSON [PIP_ARGS_JSON]

Runs on the control node. The archive holds the wheels and a requirements.txt
naming what to install; it is written atomically, so a half-built wheelhouse is
never used.
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

archive, pyver, platforms, no_deps, reqs, files, wheels = sys.argv[1:8]
pip_args = json.loads(sys.argv[8]) if len(sys.argv) > 8 else []
reqs, files, wheels = json.loads(reqs), json.loads(files), json.loads(wheels)
archive = Path(archive)
archive.parent.mkdir(parents=True, exist_ok=True)

with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
    wheel_dir = Path(tmp) / "wheels"
    wheel_dir.mkdir()
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
           "--only-binary=:all:", "--python-version", pyver, "--implementation", "cp",
           "--dest", str(wheel_dir), *pip_args]
    for p in platforms.split(","):
        cmd += ["--platform", p]
    if no_deps == "1":
        cmd.append("--no-deps")
    lines = list(reqs)
    for f in files:
        cmd += ["-r", f]
        lines += [ln.strip() for ln in Path(f).read_text().splitlines()
                  if ln.strip() and not ln.lstrip().startswith(("#", "-"))]
    for w in wheels:
        shutil.copy(w, wheel_dir)
        lines.append("./" + os.path.basename(w))
    cmd += reqs + [str(wheel_dir / os.path.basename(w)) for w in wheels]
    subprocess.run(cmd, check=True)
    (wheel_dir / "requirements.txt").write_text("\n".join(lines) + "\n")
    part = archive.with_suffix(".tar.part")
    with tarfile.open(part, "w") as tar:
        tar.add(wheel_dir, arcname=".")
    part.rename(archive)
print(f"built {archive}")
