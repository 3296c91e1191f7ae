#!/usr/bin/env bash
# The whole test suite (`make test`, and what CI runs through .ci/run):
# installs what it needs, lints, runs the app's tests against real services,
# builds the lab images, runs every Molecule scenario on real systemd lab hosts,
# takes the lab down again, and prints per-stage timings and a closing
# "N passed, N failed" line. Exit status is non-zero when any stage failed.
#   tests/run-all.sh                  # everything
#   AIPL_STAGES="lint molecule" tests/run-all.sh    # a subset
#   AIPL_KEEP_LAB=1 ...               # leave the lab engine up afterwards
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH="$repo/.venv/bin:$PATH" AIPL_REPO="$repo" ANSIBLE_CONFIG="$repo/ansible.cfg"
export PY_COLORS=0 ANSIBLE_NOCOLOR=1 NO_COLOR=1 ANSIBLE_FORCE_COLOR=0
stages=${AIPL_STAGES:-"bootstrap lint app images molecule down"}
names=() times=() results=()
passed=0 failed=0

stage() {  # stage NAME CMD...: run, time and record one stage
  local name=$1; shift
  echo; echo "################ $name"
  local t0=$SECONDS
  if "$@"; then results+=(passed); passed=$((passed + 1))
  else results+=(FAILED); failed=$((failed + 1)); fi
  names+=("$name"); times+=($((SECONDS - t0)))
}
want() { [[ " $stages " == *" $1 "* ]]; }

lab_down() { python3 "$repo/tests/lab/lab.py" down; }
if [[ -z ${AIPL_KEEP_LAB:-} ]]; then
  trap 'python3 "$repo/tests/lab/lab.py" down >/dev/null 2>&1 || true' EXIT
fi

want bootstrap && stage bootstrap bash tests/bootstrap.sh
if want lint; then
  stage yamllint yamllint --strict .
  stage ansible-lint ansible-lint --profile production
  stage syntax-check ansible-playbook --syntax-check site.yml playbooks/*.yml
fi
if want app && [[ -x tests/run-app-tests.sh ]]; then
  stage app-tests tests/run-app-tests.sh -q
fi
if want images; then
  # Cold on a fresh clone (debootstrap through the apt cache), seconds when warm.
  stage lab-images python3 tests/lab/lab.py image debian12 debian13
fi
if want molecule; then
  for d in roles/*/molecule/*/ molecule/*/; do
    [[ -f $d/molecule.yml ]] || continue
    d=${d%/}; s=$(basename "$d")
    if [[ $d == roles/* ]]; then t=$(cut -d/ -f2 <<<"$d")/$s; else t=$s; fi
    stage "molecule:$t" tests/molecule.sh "$t"
  done
fi
want down && stage lab-down lab_down

echo
echo "################ summary"
printf '%-40s %8s  %s\n' stage seconds result
for i in "${!names[@]}"; do
  printf '%-40s %8s  %s\n' "${names[$i]}" "${times[$i]}" "${results[$i]}"
done
printf '%-40s %8s\n' total "$SECONDS"
echo "stages: $passed passed, $failed failed"
((failed == 0))
