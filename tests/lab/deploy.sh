#!/usr/bin/env bash
# The main job (`make lab`): set up the control node, boot the lab's hosts from
# inventories/lab and run site.yml against them, then say how to reach the API.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
bash tests/bootstrap.sh
export PATH="$repo/.venv/bin:$PATH" ANSIBLE_CONFIG="$repo/ansible.cfg" AIPL_REPO="$repo"
t0=$SECONDS
python3 tests/lab/lab.py up -i inventories/lab/hosts.yml
t1=$SECONDS
ansible-playbook -i inventories/lab/hosts.yml site.yml "$@"
t2=$SECONDS
echo
echo "lab: hosts booted in $((t1 - t0)) s, site.yml converged in $((t2 - t1)) s"
echo "lab: hosts:        python3 tests/lab/lab.py status"
echo "lab: a shell:      python3 tests/lab/lab.py exec app1 -- bash"
echo "lab: take it down: make down"
