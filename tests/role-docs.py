#!/usr/bin/env python3
"""Generated documentation that cannot drift from the code.

  tests/role-docs.py --write   write the tables
  tests/role-docs.py --check   fail (exit 1) when a table differs from what the code says

Two kinds of tables, each between marker comments:
- every role's README.md: its variables, from meta/argument_specs.yml (type, default,
  secret or not, description; every entry point; suboptions as name[].key). A README
  without the markers gets the table appended under "## Variables".
- the top-level README.md: the tags of site.yml, from the plays of the playbooks it
  imports (with their hosts).
`make test` runs --check in its lint stage.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ROLE_START = "<!-- role-variables:start (tests/role-docs.py writes this table from meta/argument_specs.yml) -->"
ROLE_END = "<!-- role-variables:end -->"
TAGS_START = "<!-- site-tags:start (tests/role-docs.py writes this table from site.yml) -->"
TAGS_END = "<!-- site-tags:end -->"
MARKUP = [(r"C\(([^)]*)\)", r"`\1`"), (r"V\(([^)]*)\)", r"`\1`"), (r"O\(([^)]*)\)", r"`\1`"),
          (r"I\(([^)]*)\)", r"*\1*"), (r"B\(([^)]*)\)", r"**\1**"), (r"U\(([^)]*)\)", r"\1"),
          (r"L\(([^,)]*),\s*([^)]*)\)", r"[\1](\2)")]


def text(description) -> str:
    """One table cell from an argument spec description (a string or a list of them)."""
    s = " ".join(description) if isinstance(description, list) else str(description or "")
    for pattern, repl in MARKUP:
        s = re.sub(pattern, repl, s)
    return " ".join(s.split()).replace("|", "\\|")


def default(spec: dict) -> str:
    if "default" not in spec:
        return "required" if spec.get("required") else "see description"
    value = spec["default"]
    if isinstance(value, str):
        shown = value or '""'
    else:
        shown = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    return "`" + shown.replace("|", "\\|") + "`"


def kind(spec: dict) -> str:
    t = spec.get("type", "str")
    return f"{t} of {spec['elements']}" if t == "list" and "elements" in spec else t


def rows(options: dict, prefix: str = "") -> list[str]:
    out = []
    for name, spec in options.items():
        spec = spec or {}
        desc = text(spec.get("description", ""))
        if spec.get("no_log"):
            desc = "**Secret** (never logged). " + desc
        out.append(f"| `{prefix}{name}` | {kind(spec)} | {default(spec)} | {desc} |")
        if spec.get("options"):
            sub = f"{prefix}{name}[]." if spec.get("type") == "list" else f"{prefix}{name}."
            out += rows(spec["options"], sub)
    return out


def role_table(role: Path) -> str:
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    head = "| variable | type | default | description |\n| --- | --- | --- | --- |"
    main = specs.get("main", {}).get("options", {}) or {}
    parts = [ROLE_START, "",
             f"Every variable of the role, from [meta/argument_specs.yml](meta/argument_specs.yml) "
             f"(checked when the role runs); defaults/main.yml has the same with comments."]
    for entry, spec in specs.items():
        opts = spec.get("options", {}) or {}
        if entry != "main":
            opts = {k: v for k, v in opts.items() if main.get(k) != v}
            if not opts:
                continue
            parts += ["", f"Entry point `{entry}` (`tasks_from: {entry}`): {text(spec.get('short_description', ''))} "
                          f"Besides the variables above:"]
        parts += ["", head, *rows(opts)]
    return "\n".join([*parts, "", ROLE_END])


def site_tags() -> str:
    site = yaml.safe_load((REPO / "site.yml").read_text())
    lines = [TAGS_START, "", "| tags | play | hosts | playbook |", "| --- | --- | --- | --- |"]
    for entry in site:
        path = entry["ansible.builtin.import_playbook"]
        for play in yaml.safe_load((REPO / path).read_text()):
            if "hosts" not in play:
                continue
            hosts = str(play["hosts"])
            if "{{" in hosts:
                hosts = "see the playbook"
            tags = ", ".join(f"`{t}`" for t in play.get("tags", [])) or "(none)"
            lines.append(f"| {tags} | {text(play.get('name', ''))} | `{hosts}` | [{path}]({path}) |")
    return "\n".join([*lines, "", TAGS_END])


def replace(doc: str, start: str, end: str, block: str, heading: str) -> str:
    key = start.split(" ", 2)[1]  # the marker's name, whatever its explanation says
    m = re.search(rf"<!-- {re.escape(key)}.*?-->.*?{re.escape(end)}", doc, re.S)
    if m:
        return doc[:m.start()] + block + doc[m.end():]
    return doc.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"


def wanted() -> dict[Path, str]:
    out = {}
    for role in sorted((REPO / "roles").iterdir()):
        if not (role / "meta" / "argument_specs.yml").is_file():
            continue
        readme = role / "README.md"
        doc = readme.read_text() if readme.exists() else f"# {role.name}\n"
        out[readme] = replace(doc, ROLE_START, ROLE_END, role_table(role), "## Variables")
    readme = REPO / "README.md"
    out[readme] = replace(readme.read_text(), TAGS_START, TAGS_END, site_tags(), "## Tags")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="the default")
    group.add_argument("--write", action="store_true")
    mode = "--write" if ap.parse_args().write else "--check"
    stale = []
    for path, doc in wanted().items():
        old = path.read_text() if path.exists() else ""
        if old == doc:
            continue
        if mode == "--write":
            path.write_text(doc)
            print(f"wrote {path.relative_to(REPO)}")
        else:
            stale.append(path)
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), doc.splitlines(True),
                                                       str(path.relative_to(REPO)), "generated", n=1))
    if stale:
        print(f"\n{len(stale)} README(s) differ from what the code says: run python3 tests/role-docs.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
