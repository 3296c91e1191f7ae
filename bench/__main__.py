"""Benchmarks on the lab that `make lab` deployed (`make bench` runs this after
deploying it). Writes docs/bench/results.json and docs/bench/results.md.

Every lab host shares this machine's cores, so absolute numbers say little:
each benchmark reports the median of several runs and the ratios it was built
for, measured in the same run.

    python3 -m bench [--runs 3] [--seconds 10] [--only converge,serving,ratelimits,failover,memory,deploy,release,indexing,database]
    python3 -m bench --only release [--release-runs 1]
    python3 -m bench --only database [--inventory INVENTORY] [--scale 70]
    python3 -m bench --only indexing [--chunks 10000] [--chunks-large 100000]
    python3 -m bench --render          # only write results.md and the README's table again
    python3 -m bench --check           # are they what results.json gives? (make test)

Each run replaces the sections it measured in results.json and keeps the others.
One module per section (bench/sections.py lists them); bench/lab.py has the lab
helpers, bench/report.py the table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import report
from bench.lab import INVENTORY, Lab, Partial, log
from bench.sections import BY_NAME, RUN


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per serving case (median reported)")
    ap.add_argument("--seconds", type=int, default=10, help="length of each load run")
    ap.add_argument("--conns", type=int, default=32, help="wrk connections")
    ap.add_argument("--only", default=",".join(s.NAME for s in RUN), help="sections to run, comma-separated, in this order")
    ap.add_argument("--inventory", type=Path, default=INVENTORY, help="inventory of the lab to measure (database: any with db_primary)")
    ap.add_argument("--render", action="store_true", help="only write results.md and the README's table again from results.json")
    ap.add_argument("--check", action="store_true",
                    help="only check that results.md, the README's table and the numbers it quotes match results.json (make test)")
    for section in RUN:
        if hasattr(section, "options"):
            section.options(ap)
    args = ap.parse_args(argv)
    unknown = [n for n in args.only.split(",") if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return args


def main() -> None:
    args = parse_args()
    if args.render:
        report.write(report.load())
        return
    if args.check:
        sys.exit(report.check())
    lab = Lab(args)
    failed: dict = {}
    for name in args.only.split(","):
        log(f"--- {name}")
        t0 = time.time()
        result: dict = {}
        try:
            result[name] = BY_NAME[name].measure(lab)
        except Partial as exc:  # what it measured before it failed is kept
            result[name] = exc.results
            failed[name] = f"{type(exc.__cause__).__name__}: {str(exc.__cause__)[:300]}"
            log(f"{name} FAILED: {exc.__cause__}")
        except Exception as exc:  # one section's failure must not lose the others' results
            failed[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
            log(f"{name} FAILED: {exc}")
        # Written after every section: a run stopped midway keeps what it measured.
        report.save(args, result, {name: failed[name]} if name in failed else {}, round(time.time() - t0))
    if failed:
        sys.exit(f"bench: sections failed: {', '.join(failed)} (the others were written)")


if __name__ == "__main__":
    main()
