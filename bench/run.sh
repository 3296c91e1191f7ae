#!/usr/bin/env bash
# `make bench`: deploy the lab as `make lab` does (skip with AIPL_BENCH_NO_DEPLOY=1
# when it is already up), then run the benchmarks (`python3 -m bench`, the bench/ package; its options
# pass through) and write docs/bench/results.{json,md}.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
if [[ -z ${AIPL_BENCH_NO_DEPLOY:-} ]]; then bash tests/lab/deploy.sh; fi
export PATH="$repo/.venv/bin:$PATH" ANSIBLE_CONFIG="$repo/ansible.cfg" AIPL_REPO="$repo"
python3 -m bench "$@"
