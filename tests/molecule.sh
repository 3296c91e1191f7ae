#!/usr/bin/env bash
# Runs Molecule scenarios on the lab: every one (no argument), or those named
# as ROLE[/SCENARIO] or a scenario folder. Extra molecule arguments after --.
#   tests/molecule.sh                      # all scenarios, `molecule test`
#   tests/molecule.sh common               # roles/common, every scenario
#   tests/molecule.sh database -- converge
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export AIPL_REPO=$repo PATH="$repo/.venv/bin:$PATH" ANSIBLE_CONFIG="$repo/ansible.cfg"
export PY_COLORS=0 ANSIBLE_NOCOLOR=1 NO_COLOR=1 MOLECULE_NO_COLOR=1

targets=() extra=()
while (($#)); do
  if [[ $1 == -- ]]; then shift; extra=("$@"); break; fi
  targets+=("$1"); shift
done
((${#extra[@]})) || extra=(test)

scenarios=()
if ((${#targets[@]} == 0)); then
  for d in "$repo"/roles/*/molecule/*/ "$repo"/molecule/*/; do
    [[ -f $d/molecule.yml ]] && scenarios+=("${d%/}")
  done
else
  for t in "${targets[@]}"; do
    role=${t%%/*} scen=${t#*/}
    [[ $t == */* ]] || scen=""
    if [[ -d $repo/roles/$role/molecule ]]; then base=$repo/roles/$role/molecule
    elif [[ -d $repo/molecule/$role ]]; then base=$repo/molecule; scen=$role
    else echo "no scenario for $t" >&2; exit 2; fi
    for d in "$base"/${scen:-*}/; do [[ -f $d/molecule.yml ]] && scenarios+=("${d%/}"); done
  done
fi

python3 "$repo/tests/lab/lab.py" engine
rc=0
for s in "${scenarios[@]}"; do
  project=$(dirname "$(dirname "$s")") name=$(basename "$s")
  echo "=== molecule ${extra[*]} -s $name in ${project#"$repo"/}"
  # pipefail: molecule's exit status, with a closing table of each step's time.
  (cd "$project" && molecule "${extra[0]}" -s "$name" "${extra[@]:1}") 2>&1 \
    | python3 -u "$repo/tests/molecule-phases.py" || rc=1
done
exit $rc
