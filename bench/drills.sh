#!/usr/bin/env bash
# `make drills`: deploy the lab as `make lab` does (skip with AIPL_BENCH_NO_DEPLOY=1
# when it is already up), then run the fault drills and security checks
# (bench/drills/, pytest; its options pass through, e.g. -k tls) and write
# docs/bench/drills.{json,md}. The drills power hosts off, kill processes and cut
# the network: run them on a lab, never on production.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
if [[ -z ${AIPL_BENCH_NO_DEPLOY:-} ]]; then bash tests/lab/deploy.sh; fi
# The API fuzzer (bench/drills/test_fuzz.py): schemathesis, pinned, in a venv of its own,
# made again when bench/requirements-fuzz.txt changes.
fuzz=$repo/.cache/venv-fuzz
if ! cmp -s bench/requirements-fuzz.txt "$fuzz/requirements-fuzz.txt"; then
    rm -rf "$fuzz" && python3 -m venv "$fuzz"
    "$fuzz/bin/pip" install -q --disable-pip-version-check -r bench/requirements-fuzz.txt
    cp bench/requirements-fuzz.txt "$fuzz/"
fi
export PATH="$repo/.venv/bin:$PATH" ANSIBLE_CONFIG="$repo/ansible.cfg" AIPL_REPO="$repo"
exec python3 -m pytest -v -p no:cacheprovider --durations=0 bench/drills "$@"
