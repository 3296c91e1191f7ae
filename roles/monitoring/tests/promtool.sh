#!/usr/bin/env bash
# Unit tests of the alert rules: renders templates/ai-platform.rules.yml.j2
# with the role's defaults (and a Redis of three sentinels and one replica),
# checks it (promtool check rules) and runs
# rules.test.yml (promtool test rules). promtool comes from Debian's
# `prometheus` package (tests/bootstrap.sh puts it in .cache/bin).
#   roles/monitoring/tests/promtool.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
export PATH="$repo/.cache/bin:$repo/.venv/bin:$PATH"
command -v promtool >/dev/null || { echo "promtool not found: run tests/bootstrap.sh" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
ANSIBLE_CONFIG="$repo/ansible.cfg" ansible-playbook -i localhost, "$here/render-rules.yml" -e ansible_python_interpreter="$repo/.venv/bin/python" \
  -e rules_out="$work/ai-platform.rules.yml" -e monitoring_redis_sentinel_quorum=2 -e monitoring_redis_replicas=1 \
  >"$work/render.log" || { cat "$work/render.log"; exit 1; }
cp "$here/rules.test.yml" "$work/"
promtool check rules "$work/ai-platform.rules.yml"
promtool test rules "$work/rules.test.yml"
