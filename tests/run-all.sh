#!/usr/bin/env bash
# The whole test suite (`make test`, and what CI runs through .ci/run):
# installs what it needs, builds the lab images, starts every Molecule scenario
# on real systemd lab hosts in the background, lints and runs the app's tests
# against real services meanwhile, waits for the scenarios, takes the lab
# down, and prints per-stage timings, why each failed stage failed, and a
# closing "N passed, N failed" line. Exit status is non-zero when any stage failed.
#   tests/run-all.sh                  # everything
#   AIPL_STAGES="lint molecule" tests/run-all.sh    # a subset
#   AIPL_KEEP_LAB=1 ...               # leave the lab engine up afterwards
#   AIPL_SCENARIOS="common/default" ... # only these Molecule scenarios
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH="$repo/.venv/bin:$PATH" AIPL_REPO="$repo" ANSIBLE_CONFIG="$repo/ansible.cfg"
export PY_COLORS=0 ANSIBLE_NOCOLOR=1 NO_COLOR=1 ANSIBLE_FORCE_COLOR=0
stages=${AIPL_STAGES:-"bootstrap lint app images molecule down"}
names=() times=() results=() reasons=()
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
# Only a run that boots lab hosts takes the lab down on exit: `make lint` (bootstrap
# and lint only) once removed a lab that `make lab` had deployed.
if [[ -z ${AIPL_KEEP_LAB:-} ]] && { want molecule || want images; }; then
  trap 'python3 "$repo/tests/lab/lab.py" down >/dev/null 2>&1 || true' EXIT
fi

want bootstrap && stage bootstrap bash tests/bootstrap.sh
if want images; then
  # Cold on a fresh clone (debootstrap through the apt cache), seconds when warm.
  stage lab-images python3 tests/lab/lab.py image debian12 debian13
fi

# Molecule scenarios run in the background from here on, AIPL_MOLECULE_JOBS at
# a time (default 3), while lint and the app's tests run in the foreground: the
# end-to-end scenario is the longest path of the suite, so it starts first and
# as early as the images allow. Most of a scenario's time is spent waiting on
# apt, systemd and the network, not on the two cores.
logs="$repo/.cache/test-logs"; mkdir -p "$logs"
molecule_all() {  # prints its progress; one "name<TAB>seconds<TAB>result<TAB>why" line per scenario to $1, their names to $2
  local out=$1 scen=() d s name why
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
  if [[ -n ${AIPL_SCENARIOS:-} ]]; then read -r -a scen <<<"$AIPL_SCENARIOS"; fi
  # Longest first, so that the slow multi-host scenarios do not end up last.
  # One ranking orders the scenarios and gives them the CPU: 0 e2e, 1 database, 2 the rest.
  tier() { case $1 in e2e*) echo 0 ;; database*) echo 1 ;; *) echo 2 ;; esac; }
  mapfile -t scen < <(for s in "${scen[@]}"; do echo "$(tier "$s") $s"; done | sort -s -k1,1n | cut -d' ' -f2)
  local jobs_max=${AIPL_MOLECULE_JOBS:-3}
  declare -A pid_of=() start_of=()
  # The machine is CPU-bound while scenarios run, and the suite ends when the
  # end-to-end scenario does: it gets the CPU first (its hosts' CPU weight and its
  # Ansible's nice level), the database scenario next, the short role scenarios
  # last. Without it, e2e's verify ran alone at the end with the CPUs 75 % idle.
  run_one() {
    local t nice_of=(0 5 10) shares_of=(1024 512 256)
    t=$(tier "$1")
    AIPL_LAB_CPU_SHARES=${shares_of[t]} nice -n "${nice_of[t]}" tests/molecule.sh "$1" >"$logs/molecule-${1//\//_}.log" 2>&1
  }
  finish() {  # finish NAME RC
    local t=${start_of[$1]} log="$logs/molecule-${1//\//_}.log" result=passed reason=""
    if (($2 == 0)); then echo "molecule:$1 passed ($((SECONDS - t)) s)"
    else
      result=FAILED; echo "molecule:$1 FAILED ($((SECONDS - t)) s); end of $log:"; tail -n 60 "$log"
      # The first failures again in the summary: CI often shows only its end.
      # (Not Ansible's "FAILED - RETRYING" lines of until-loops: they are progress, not failures.)
      # Up to 40 lines (a test's own diagnosis spans several), kept apart by \037 in the
      # one-line record and printed one per line in the summary.
      reason=$(grep -E '^(fatal|failed): |^FAILED |^E +|^ERROR  ' "$log" | grep -v '^FAILED - RETRYING' | head -n 40 \
        | cut -c1-300 | tr '\t' ' ' | tr '\n' '\037')
    fi
    grep -E '^=+ .*(passed|failed).* in ' "$log" | tail -n 1 | sed "s|^|  $1 testinfra: |"
    printf 'molecule:%s\t%s\t%s\t%s\n' "$1" "$((SECONDS - t))" "$result" "$reason" >>"$out"
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
  echo "################ molecule (${#scen[@]} scenarios, $jobs_max at a time; logs in .cache/test-logs)"
  # The scenarios this run owes a result for: the foreground checks each has one line in $out.
  printf '%s\n' "${scen[@]}" >"$2"
  if ! python3 tests/lab/lab.py engine; then
    printf 'molecule:engine\t0\tFAILED\tthe lab engine did not start\n' >>"$out"; return
  fi
  for s in "${scen[@]}"; do
    reap "$jobs_max"
    run_one "$s" & pid_of[$s]=$!; start_of[$s]=$SECONDS
  done
  reap 1
  return 0  # its caller reads any other status as the runner dying
}
if want molecule; then
  mol_out="$logs/molecule-results.tsv" mol_planned="$logs/molecule-planned.txt"; : >"$mol_out"; : >"$mol_planned"
  echo; echo "################ molecule started in the background (its progress: .cache/test-logs/molecule-run.log)"
  molecule_all "$mol_out" "$mol_planned" >"$logs/molecule-run.log" 2>&1 &
  mol_pid=$!
fi

# Beside the scenarios, lint and the app's tests yield the CPU to the end-to-end one.
fg=(); want molecule && fg=(nice -n 5)
if want lint; then
  stage yamllint "${fg[@]}" yamllint --strict .
  stage ansible-lint "${fg[@]}" ansible-lint --profile production
  stage syntax-check "${fg[@]}" ansible-playbook --syntax-check site.yml playbooks/*.yml
  # Role READMEs' variable tables and the README's tags, generated from the code: no drift.
  stage role-docs "${fg[@]}" python3 tests/role-docs.py --check
  # No task writes a secret into a file with its diff shown (--diff) or its arguments logged (-v).
  stage secret-diffs "${fg[@]}" python3 tests/secret-diffs.py
  # The RHEL-family path, as far as it runs here: every template rendered with EL 9 facts.
  stage el9-render "${fg[@]}" ansible-playbook -i inventories/production.example tests/el9/render.yml \
    -e @inventories/production.example/group_vars/all/main.yml -e @tests/el9/vault.yml
  # Alert rules: promtool check rules + promtool test rules (roles/monitoring/tests).
  stage promtool-rules "${fg[@]}" roles/monitoring/tests/promtool.sh
  # The benchmark report: results.md, the README's table and the numbers its prose quotes
  # are what docs/bench/results.json gives (verdicts computed by bench/*.py rows()).
  stage bench-report "${fg[@]}" python3 -m bench --check
fi
if want app && [[ -x tests/run-app-tests.sh ]]; then
  stage app-tests "${fg[@]}" tests/run-app-tests.sh -q
  # The Python style of the app (app/pyproject.toml [tool.ruff]) and of the benchmarks and
  # drills (bench/ruff.toml), with the test venv's ruff.
  stage app-ruff .cache/venv-app/bin/ruff check app bench
fi
if want molecule; then
  echo; echo "################ molecule (waiting for the background run)"
  mol_rc=0; wait "$mol_pid" || mol_rc=$?
  cat "$logs/molecule-run.log"
  while IFS=$'\t' read -r n secs result reason; do
    names+=("$n"); times+=("$secs"); results+=("$result")
    if [[ $result == passed ]]; then passed=$((passed + 1))
    else failed=$((failed + 1)); reasons+=("$n: $reason"); fi
  done <"$mol_out"
  # A runner that died (killed, out of memory, a bug) or skipped scenarios must not pass:
  # every scenario it set out to run has its result line, and it ran at least one.
  mol_bad() { names+=("$1"); times+=(0); results+=(FAILED); failed=$((failed + 1)); reasons+=("$1: $2"); }
  ((mol_rc == 0)) || mol_bad molecule:runner "the background Molecule runner exited $mol_rc"
  grep -q . "$mol_planned" || mol_bad molecule:runner "the background Molecule runner started no scenario"
  while read -r s; do
    [[ -n $s ]] || continue
    grep -q "^molecule:$s"$'\t' "$mol_out" || mol_bad "molecule:$s" "no result: the background runner did not finish it"
  done <"$mol_planned"
  echo "molecule: $(grep -c . "$mol_planned") scenarios planned, $(grep -c . "$mol_out") results"
fi
want down && stage lab-down lab_down

echo
echo "################ summary"
printf '%-40s %8s  %s\n' stage seconds result
for i in "${!names[@]}"; do
  printf '%-40s %8s  %s\n' "${names[$i]}" "${times[$i]}" "${results[$i]}"
done
printf '%-40s %8s\n' total "$SECONDS"
for r in "${reasons[@]}"; do r=${r%$'\037'}; echo "why ${r//$'\037'/$'\n    '}"; done
echo "stages: $passed passed, $failed failed"
((failed == 0))
