#!/usr/bin/python3
"""Starts a new venv as a copy of an existing one made from the same wheelhouse.

Runs on the host (ansible.builtin.script) as
    seed-venv.py SEED TARGET WHEELHOUSE_NAME WHEELHOUSE_ID REQUIREMENTS_TXT
and prints one JSON line: {"seeded": bool, "why": str, "uninstalled": [...]}.

Nothing is done (seeded false) when TARGET exists, when SEED does not, or when
SEED's marker .wheelhouse-NAME does not hold WHEELHOUSE_ID (another lock,
Python or architecture). Otherwise:
  - every regular file is hard-linked into TARGET (no second copy on disk; pip
    replaces files, it never writes into them, and the units cannot write into
    a venv), except the files that name SEED's own path (scripts' #! lines,
    activate, pyvenv.cfg): those are copied with the path replaced, as
    virtualenv-clone does;
  - packages that other wheelhouses put into SEED (the previous release's own
    wheel, say) are uninstalled from the copy: what is left is exactly what
    this wheelhouse's requirements name, plus pip and setuptools;
  - all of it under a temporary name, renamed into place at the end, so a run
    that dies leaves no half venv at TARGET.
Then pip, run by the role as always, finds everything installed and only
checks it.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

KEEP = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wanted_names(requirements: Path) -> set[str]:
    names = set()
    for line in requirements.read_text().splitlines():
        line = line.split(";", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        if line.endswith(".whl"):  # ./name-version-tags.whl
            names.add(canonical(os.path.basename(line).split("-", 1)[0]))
        else:
            names.add(canonical(re.split(r"[=<>!~\[ ]", line, maxsplit=1)[0]))
    return names


def copy_tree(seed: Path, tmp: Path, target: Path) -> None:
    """SEED into TMP, with SEED's path replaced by TARGET's (where TMP is renamed to)."""
    old, new = str(seed).encode(), str(target).encode()
    for root, dirs, files in os.walk(seed):
        rel = Path(root).relative_to(seed)
        dst_dir = tmp / rel
        dst_dir.mkdir(mode=0o755, exist_ok=True)
        shutil.copystat(root, dst_dir)
        for name in dirs + files:
            src, dst = Path(root) / name, dst_dir / name
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
                if name in dirs:
                    dirs.remove(name)  # not walked into: the link is the copy
                continue
            if name in dirs:
                continue
            data = src.read_bytes() if (rel.parts[:1] == ("bin",) or rel == Path(".")) else b""
            if old in data:
                dst.write_bytes(data.replace(old, new))
                shutil.copystat(src, dst)
                st = src.stat()
                os.chown(dst, st.st_uid, st.st_gid)
            else:
                try:
                    os.link(src, dst)
                except OSError:  # another filesystem
                    shutil.copy2(src, dst)


def main() -> None:
    seed, target = Path(os.path.realpath(sys.argv[1])), Path(os.path.abspath(sys.argv[2]))
    name, wheelhouse_id, requirements = sys.argv[3], sys.argv[4], Path(sys.argv[5])
    out = {"seeded": False, "why": "", "uninstalled": []}
    marker = seed / f".wheelhouse-{name}"
    if target.exists():
        out["why"] = "the venv exists"
    elif not (seed / "bin" / "python").exists():
        out["why"] = f"no venv at {seed}"
    elif not marker.exists() or marker.read_text().strip() != wheelhouse_id:
        out["why"] = f"{seed} was not made from {wheelhouse_id}"
    else:
        tmp = target.with_name(target.name + ".seeding")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        copy_tree(seed, tmp, target)
        for other in tmp.glob(".wheelhouse-*"):
            if other.name != marker.name:
                other.unlink()
        # pip run from the copy's own python works on the copy (sys.prefix is where
        # pyvenv.cfg is): the extra packages go before the rename, not after it.
        py, env = str(tmp / "bin" / "python"), dict(os.environ, PIP_CONFIG_FILE="/dev/null")
        listed = subprocess.run([py, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                                check=True, capture_output=True, text=True, env=env).stdout
        keep = wanted_names(requirements) | KEEP
        extra = sorted(p["name"] for p in json.loads(listed) if canonical(p["name"]) not in keep)
        if extra:
            subprocess.run([py, "-m", "pip", "uninstall", "--yes", "--quiet", "--disable-pip-version-check", *extra],
                           check=True, env=env)
        tmp.rename(target)
        out.update(seeded=True, why=f"copied from {seed}", uninstalled=extra)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
