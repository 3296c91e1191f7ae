"""Copies Molecule's output through and ends it with how long each step took.

Molecule announces a step as ``INFO [SCENARIO > STEP] Executing``; the step
runs until the next one starts. The closing table tells where a scenario's
time goes (create, converge, idempotence, side_effect, verify ...) without
changing a line of the log itself.
    molecule test -s NAME 2>&1 | python3 tests/molecule-phases.py
"""
import re
import sys
import time

STEP = re.compile(r"\[(?P<scenario>[^\]>]+) > (?P<step>[\w-]+)\] Executing\b")


def main() -> None:
    t0 = time.monotonic()
    steps: list[list] = []  # [label, start]
    for line in sys.stdin:
        sys.stdout.write(line)
        sys.stdout.flush()
        m = STEP.search(line)
        if m:
            label = f"{m['scenario'].strip()} > {m['step']}"
            if not steps or steps[-1][0] != label:  # verify announces itself twice
                steps.append([label, time.monotonic()])
    end = time.monotonic()
    if steps:
        print(f"molecule steps (s), {end - t0:.0f} s in all:")
        for i, (label, start) in enumerate(steps):
            stop = steps[i + 1][1] if i + 1 < len(steps) else end
            print(f"  {label:<40} {stop - start:7.0f}")


if __name__ == "__main__":
    main()
