"""The report: results.json merged section by section, and the table written from it into
docs/bench/results.md and between the README's bench-results markers."""
from __future__ import annotations

import argparse
import datetime
import difflib
import json
import os
import platform
import re
from dataclasses import dataclass

from bench.lab import OUT, REPO

HEADER = """| benchmark | target | measured | verdict |
| --- | --- | --- | --- |
"""


@dataclass
class Row:
    """One row of the results table. ok is the verdict, computed by the section's rows() from
    results.json: True (pass), False (miss), None (no target: reported only)."""

    what: str
    target: str
    measured: str
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "**miss**", None: "—"}[self.ok]


def rows(res: dict) -> list[Row]:
    from bench.sections import TABLE  # the sections import Row from here

    return [row for section in TABLE for row in section.rows(res)]


def tally(res: dict) -> str:
    """'N pass, N miss, N reported' over every row of the table."""
    all_rows = rows(res)
    n = {v: sum(1 for r in all_rows if r.ok is v) for v in (True, False, None)}
    return f"{n[True]} pass, {n[False]} miss, {n[None]} reported without a target"
README_START, README_END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"
# A number in the README's prose that comes from results.json: written again from it with
# every report, e.g. <!-- bench indexing.search_large.p99_ms .1f -->20.1<!-- /bench -->
# (a dotted path into results.json, list items by their index, and a format spec, with
# *N to scale the value first: .0f*1000 for seconds shown as milliseconds).
PROSE = re.compile(r"<!-- bench (?P<path>\S+) (?P<spec>\S+) -->(?P<value>.*?)<!-- /bench -->")


def markdown(res: dict) -> str:
    return (f"Verdicts, computed from results.json by each section's rows(): {tally(res)}.\n\n" + HEADER
            + "".join(f"| {r.what} | {r.target} | {r.measured} | {r.verdict} |\n" for r in rows(res)))


def load() -> dict:
    path = OUT / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save(args: argparse.Namespace, results: dict, failed: dict, seconds: int) -> None:
    """Merge one section's results (or its failure) into results.json and write the tables."""
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    machine = {"cores": os.cpu_count(), "kernel": platform.release(), "load_at_end": os.getloadavg()}
    old = load()
    runs = old.get("runs", {})
    inv = args.inventory.resolve()
    for name in results:
        runs[name] = {"when": when, "inventory": str(inv.relative_to(REPO)) if inv.is_relative_to(REPO) else "a Molecule scenario's",
                      "seconds": seconds, "machine": machine}
    merged = {**old, "when": when, "machine": machine, "runs": runs, **results}
    if "serving" in results:  # the note said under which load the lab sections of an earlier run were measured
        merged.pop("note", None)
    merged.pop("seconds", None)  # a whole-run total that earlier versions wrote; each section has its own in runs
    if "memory" in merged:  # the RSS-only section of earlier runs
        merged.pop("memory_mib", None)
        runs.pop("memory_mib", None)
    merged["failed"] = {**merged.get("failed", {}), **{k: {"when": when, "error": v} for k, v in failed.items()}}
    for name in results:
        if name not in failed:  # a failed section may leave part of its results: the failure stays listed
            merged["failed"].pop(name, None)
    if not merged["failed"]:
        merged.pop("failed")
    write(merged)


def failed_lines(res: dict) -> str:
    """The sections whose last run failed, as a Markdown list (and a blank line), or nothing."""
    lines = "".join(f"- **{name}: failed** in the run of {f['when']}: {f['error']}\n" for name, f in res.get("failed", {}).items())
    return lines + "\n" if lines else ""


def results_md(res: dict) -> str:
    where = "".join(f"- {name}: {r['when']} on {r['inventory']} (load average at the end {r['machine']['load_at_end'][0]:.1f})\n"
                    for name, r in res.get("runs", {}).items())
    return (f"# Benchmark results\n\nOn {res['machine']['cores']} cores that every lab host shares. Medians of several runs; "
            "ratios from the same run. Written by `make bench` (bench/, `python3 -m bench`); raw numbers in "
            "[results.json](results.json). Each run replaces only the sections it measured:\n\n" + where + "\n"
            + (f"{res['note']}\n\n" if res.get("note") else "")
            + failed_lines(res) + markdown(res))


def lookup(res: dict, path: str):
    """The value at a dotted path of results.json (KeyError, IndexError when it is not there)."""
    value = res
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, (list, tuple)) else value[part]
    return value


def prose(res: dict, text: str) -> str:
    """Every `<!-- bench PATH SPEC -->` number in text written again from res."""
    def one(m: re.Match) -> str:
        spec, _, scale = m["spec"].partition("*")
        try:
            value = format(lookup(res, m["path"]) * float(scale or 1), spec)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise SystemExit(f"bench: the README quotes {m['path']}, which results.json does not have ({exc!r})") from exc
        return f"<!-- bench {m['path']} {m['spec']} -->{value}<!-- /bench -->"
    return PROSE.sub(one, text)


def readme_text(res: dict, text: str) -> str:
    """The README's text with the table between the bench-results markers and every quoted
    number written from res."""
    if README_START in text and README_END in text:
        block = (f"{README_START}\n<!-- written by bench/ (python3 -m bench) from docs/bench/results.json; do not edit by hand -->\n"
                 + failed_lines(res) + markdown(res) + f"\n{README_END}")
        text = text[:text.index(README_START)] + block + text[text.index(README_END) + len(README_END):]
    return prose(res, text)


def write(res: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    md = results_md(res)
    (OUT / "results.md").write_text(md)
    print(md)
    readme = REPO / "README.md"
    readme.write_text(readme_text(res, readme.read_text()))
    print(f"bench: verdicts {tally(res)}")


def check() -> int:
    """0 when results.md, the README's table and every number the README quotes from
    results.json are what results.json gives; else 1, with the differences."""
    res = load()
    stale = 0
    for path, want in ((OUT / "results.md", results_md(res)), (REPO / "README.md", readme_text(res, (REPO / "README.md").read_text()))):
        have = path.read_text()
        if have != want:
            stale = 1
            print(f"bench: {path.relative_to(REPO)} does not match docs/bench/results.json (python3 -m bench --render writes it):")
            print("".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True), str(path), "from results.json", n=0))[:4000])
    if not stale:
        print(f"bench: results.md and the README match results.json; verdicts {tally(res)}")
    return stale
