#!/usr/bin/env python3
"""Download binary wheels for one target Python and pack them into one archive.

build-wheelhouse.py ARCHIVE PYVER PLATFORMS(comma) NO_DEPS(0|1) REQS_JSON FILES_JSON WHEELS_JSON [PIP_ARGS_JSON]

Runs on the control node. The archive holds the wheels and a requirements.txt
naming what to install; it is written atomically, so a half-built wheelhouse is
never used.

pip evaluates environment markers (`; python_full_version < "3.11.3"`) against
the Python that runs it, not against --python-version, so a control node on
3.11.7 would leave out a wheel that a Debian 12 host (3.11.2) needs. Markers of
pinned requirements are therefore evaluated here for the target X.Y at every
patch level, and a requirement is fetched when it holds for any of them; the
host's pip still evaluates the markers in requirements.txt when installing.
"""
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

archive, pyver, platforms, no_deps, reqs, files, wheels = sys.argv[1:8]
pip_args = json.loads(sys.argv[8]) if len(sys.argv) > 8 else []
reqs, files, wheels = json.loads(reqs), json.loads(files), json.loads(wheels)
archive = Path(archive)
archive.parent.mkdir(parents=True, exist_ok=True)


def wanted(line: str) -> bool:
    """Whether a requirement line's marker holds for the target Python at some patch level."""
    req = Requirement(line)
    if req.marker is None:
        return True
    env = default_environment() | {"python_version": pyver, "implementation_name": "cpython",
                                   "platform_python_implementation": "CPython",
                                   "sys_platform": "linux", "os_name": "posix"}
    return any(req.marker.evaluate(env | {"python_full_version": f"{pyver}.{patch}"})
               for patch in range(0, 40))


def unmarked(line: str) -> str:
    return line.split(";", 1)[0].strip()


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
    fetch = [unmarked(r) for r in reqs if wanted(r)]
    for f in files:
        file_lines = [ln.strip() for ln in Path(f).read_text().splitlines()
                      if ln.strip() and not ln.lstrip().startswith(("#", "-"))]
        lines += file_lines
        fetch += [unmarked(ln) for ln in file_lines if wanted(ln)]
    for w in wheels:
        shutil.copy(w, wheel_dir)
        lines.append("./" + os.path.basename(w))
    cmd += fetch + [str(wheel_dir / os.path.basename(w)) for w in wheels]
    subprocess.run(cmd, check=True)
    (wheel_dir / "requirements.txt").write_text("\n".join(lines) + "\n")
    part = archive.with_suffix(".tar.part")
    with tarfile.open(part, "w") as tar:
        tar.add(wheel_dir, arcname=".")
    part.rename(archive)
print(f"built {archive}")
