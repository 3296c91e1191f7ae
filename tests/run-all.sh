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
  # Alert rules: promtool check rules + promtool test rules (roles/monitoring/tests).
  stage promtool-rules roles/monitoring/tests/promtool.sh
fi
if want app && [[ -x tests/run-app-tests.sh ]]; then
  stage app-tests tests/run-app-tests.sh -q
fi
if want images; then
  # Cold on a fresh clone (debootstrap through the apt cache), seconds when warm.
  stage lab-images python3 tests/lab/lab.py image debian12 debian13
fi
if want molecule; then
  # Scenarios run AIPL_MOLECULE_JOBS at a time (default 3): most of their time is
  # spent waiting on apt, systemd and the network, not on the two cores.
  logs="$repo/.cache/test-logs"; mkdir -p "$logs"
  scen=()
  for d in roles/*/molecule/*/ molecule/*/; do
    [[ -f $d/molecule.yml ]] || continue
    d=${d%/}; s=$(basename "$d")
    name=${d#roles/}; name=${name#molecule/}; name=${name/\/molecule\//\/}
    why=$(awk -v n="$name" '$1 == n { $1 = ""; print substr($0, 2) }' tests/molecule-optin.txt)
    if [[ -n $why && -z ${AIPL_ALL_SCENARIOS:-} ]]; then
      echo "molecule:$name not run by default: $why (AIPL_ALL_SCENARIOS=1 runs it)"; continue
    fi
    if [[ $d == roles/* ]]; then scen+=("$(cut -d/ -f2 <<<"$d")/$s"); else scen+=("$s"); fi
  done
  # Longest first, so that the slow multi-host scenarios do not end up last.
  mapfile -t scen < <(printf '%s\n' "${scen[@]}" | awk '{print (($0 ~ /^e2e|postgresql|monitoring/) ? 0 : 1) " " $0}' | sort -s -k1,1n | cut -d' ' -f2)
  jobs_max=${AIPL_MOLECULE_JOBS:-3}
  declare -A pid_of=() start_of=()
  run_one() { tests/molecule.sh "$1" >"$logs/molecule-${1//\//_}.log" 2>&1; }
  finish() {  # finish NAME RC
    local t=${start_of[$1]} log="$logs/molecule-${1//\//_}.log"
    names+=("molecule:$1"); times+=($((SECONDS - t)))
    if (($2 == 0)); then results+=(passed); passed=$((passed + 1)); echo "molecule:$1 passed ($((SECONDS - t)) s)"
    else results+=(FAILED); failed=$((failed + 1)); echo "molecule:$1 FAILED ($((SECONDS - t)) s); end of $log:"; tail -n 60 "$log"; fi
    grep -E '^=+ .*(passed|failed).* in ' "$log" | tail -n 1 | sed "s|^|  $1 testinfra: |"
  }
  reap() {  # reap LIMIT: collect finished scenarios until fewer than LIMIT run
    while ((${#pid_of[@]} >= $1)); do
      for n in "${!pid_of[@]}"; do
        if ! kill -0 "${pid_of[$n]}" 2>/dev/null; then
          local rc=0; wait "${pid_of[$n]}" || rc=$?; finish "$n" "$rc"; unset "pid_of[$n]"
        fi
      done
      ((${#pid_of[@]} >= $1)) && sleep 1
    done
  }
  echo; echo "################ molecule (${#scen[@]} scenarios, $jobs_max at a time; logs in .cache/test-logs)"
  python3 tests/lab/lab.py engine
  for s in "${scen[@]}"; do
    reap "$jobs_max"
    run_one "$s" & pid_of[$s]=$!; start_of[$s]=$SECONDS
  done
  reap 1
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
