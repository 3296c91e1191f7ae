"""The report: results.json merged section by section, and the table written from it into
docs/bench/results.md and between the README's bench-results markers."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

from bench.lab import OUT, REPO

HEADER = """| benchmark | target | measured |
| --- | --- | --- |
"""
README_START, README_END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"


def markdown(res: dict) -> str:
    from bench.sections import TABLE  # the sections import the lab helpers; the report only needs their rows

    rows = [row for section in TABLE for row in section.rows(res)]
    return HEADER + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)


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


def readme_text(res: dict, text: str) -> str:
    """The README's text with the table between the bench-results markers written from res."""
    if README_START not in text or README_END not in text:
        return text
    block = (f"{README_START}\n<!-- written by bench/ (python3 -m bench) from docs/bench/results.json; do not edit by hand -->\n"
             + failed_lines(res) + markdown(res) + f"\n{README_END}")
    return text[:text.index(README_START)] + block + text[text.index(README_END) + len(README_END):]


def write(res: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    md = results_md(res)
    (OUT / "results.md").write_text(md)
    print(md)
    readme = REPO / "README.md"
    readme.write_text(readme_text(res, readme.read_text()))
