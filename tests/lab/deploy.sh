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
# How to reach the API: through Nginx on the load balancer, over TLS with the
# project CA, from inside the lab's network namespace (where its addresses are).
netns=${AIPL_LAB_NETNS:-aipl-lab}
lbhost=$(ansible-inventory -i inventories/lab/hosts.yml --graph lb | awk -F'--' '/--/{print $2; exit}')
lb=$(ansible-inventory -i inventories/lab/hosts.yml --host "$lbhost" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ansible_host"])')
# Clients use the load balancers' virtual IP (keepalived) when the inventory has one.
vip=$(ansible -i inventories/lab/hosts.yml "$lbhost" -c local -m ansible.builtin.debug \
      -a 'msg=VIP={{ keepalived_virtual_ipaddress | default("") }}' 2>/dev/null | sed -n 's|.*VIP=\([0-9.]*\).*|\1|p' || true)
lb=${vip:-$lb}
ca="$repo/inventories/lab/.pki/ca.crt"
curl_cmd="nsenter --net=/run/netns/$netns curl --cacert $ca https://$lb/health"
echo
echo "lab: hosts booted in $((t1 - t0)) s, site.yml converged in $((t2 - t1)) s"
echo "lab: API:          https://$lb/api/v1/ (Nginx with TLS${vip:+ behind the virtual IP}; the address lives in network namespace $netns)"
echo "lab: CA file:      $ca"
echo "lab: try it:       $curl_cmd"
$curl_cmd --silent --show-error --max-time 20; echo
echo "lab: hosts:        python3 tests/lab/lab.py status"
echo "lab: a shell:      python3 tests/lab/lab.py exec app1 -- bash"
echo "lab: take it down: make down"
