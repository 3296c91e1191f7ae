#!/usr/bin/env python3
"""Build the app's wheel once on the control node, keyed by a hash of its source.

build-app.py SOURCE_DIR BUILD_DIR  ->  prints JSON {version, release, wheel, built}
A release is VERSION-HASH; an unchanged source reuses the wheel already built.
"""
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

src, build = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
h = hashlib.sha256()
files = [src / "pyproject.toml", src / "requirements.lock"]
files += sorted(p for p in (src / "app").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
for p in files:
    h.update(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes() + b"\0")
version = re.search(r'__version__\s*=\s*"([^"]+)"', (src / "app" / "__init__.py").read_text()).group(1)
release = f"{version}-{h.hexdigest()[:12]}"
dest = build / release
built = False
if not list(dest.glob("*.whl")):
    build.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build) as tmp:
        # Build from a copy, so that no build/ or egg-info lands in the source tree.
        work = Path(tmp) / "src"
        shutil.copytree(src, work, ignore=shutil.ignore_patterns(
            "build", "*.egg-info", "__pycache__", "tests", "bench", ".pytest_cache"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--disable-pip-version-check", "-w", str(Path(tmp) / "out"), str(work)],
                       check=True, stdout=subprocess.DEVNULL)
        shutil.rmtree(dest, ignore_errors=True)
        (Path(tmp) / "out").rename(dest)
    built = True
wheel = next(dest.glob("*.whl"))
print(json.dumps({"version": version, "release": release, "wheel": str(wheel), "built": built}))
