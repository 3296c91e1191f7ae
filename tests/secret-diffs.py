#!/usr/bin/env python3
"""No secret in --diff or -v output: every task that writes a file from a secret hides it.

Secrets are the role variables marked no_log in any meta/argument_specs.yml (a list or
dict whose suboption is no_log counts whole), and every variable of defaults/ or vars/
whose value uses one. A task that writes a file (template, copy, lineinfile,
blockinfile) whose template or content uses a secret must say `no_log: true` or
`diff: false`: Ansible prints a file's diff with --diff, and a task's arguments and
result with -v. Run by `make test` (lint stage); exit 1 lists the offending tasks.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WRITERS = ("template", "copy", "lineinfile", "blockinfile")


def no_log_options(options: dict) -> set[str]:
    out = set()
    for name, spec in (options or {}).items():
        spec = spec or {}
        if spec.get("no_log") or no_log_options(spec.get("options", {})):
            out.add(name)
    return out


def secret_names() -> set[str]:
    names: set[str] = set()
    for spec in REPO.glob("roles/*/meta/argument_specs.yml"):
        for entry in (yaml.safe_load(spec.read_text()).get("argument_specs") or {}).values():
            names |= no_log_options(entry.get("options", {}))
    values = {}
    for f in list(REPO.glob("roles/*/defaults/*.yml")) + list(REPO.glob("roles/*/vars/*.yml")):
        values.update({k: str(v) for k, v in (yaml.safe_load(f.read_text()) or {}).items()})
    while True:  # variables built from secrets are secrets
        more = {k for k, v in values.items() if k not in names and uses(v, names)}
        if not more:
            return names
        names |= more


def uses(text: str, names: set[str]) -> bool:
    return any(re.search(rf"(?<![\w.]){re.escape(n)}\b", text) for n in names)


def tasks(data) -> list[dict]:
    out = []
    for t in data or []:
        if isinstance(t, dict):
            out.append(t)
            for key in ("block", "rescue", "always"):
                out += tasks(t.get(key))
    return out


def main() -> int:
    secrets = secret_names()
    bad = []
    for f in sorted(REPO.glob("roles/*/tasks/*.yml")) + sorted(REPO.glob("roles/*/handlers/*.yml")):
        role = f.parents[1]
        for t in tasks(yaml.safe_load(f.read_text())):
            module = next((k for k in t if k.split(".")[-1] in WRITERS), None)
            if module is None or t.get("no_log") is True or t.get("diff") is False:
                continue
            args = t[module] if isinstance(t[module], dict) else {}
            text = yaml.safe_dump(args)
            src = str(args.get("src", ""))
            if module.endswith("template") and src and "{{" not in src:
                path = role / "templates" / src
                text += path.read_text() if path.exists() else ""
            if uses(text, secrets):
                bad.append(f"{f.relative_to(REPO)}: {t.get('name', module)}")
    for b in bad:
        print(f"writes a secret without no_log or diff: false: {b}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
