"""Bad inventories fail before anything changes, with a clear message.

Each case runs the role in check mode against local hosts of a small inventory;
the role's checks must stop it in its first tasks. Runs on the control node.
"""
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(os.environ.get("AIPL_REPO", Path(__file__).resolve().parents[3]))
PASSWORDS = {
    "postgresql_app_password": "app-secret-123",
    "postgresql_replication_password": "repl-secret-123",
    "postgresql_admin_password": "admin-secret-123",
    "postgresql_patroni_api_password": "patroni-secret-123",
}


def inventory(primary, replicas, extra_vars=None, app=(), etcd=None, backup=("bak1",)):
    """A database inventory; the etcd group defaults to three of its hosts (the database hosts, then etcd-N)."""
    def hosts(names, base=1):
        return {n: {"ansible_host": f"10.99.0.{i + base}"} for i, n in enumerate(names)} or None
    allvars = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, **PASSWORDS}
    allvars.update(extra_vars or {})
    groups = {"db_primary": {"hosts": hosts(primary)}, "db_replicas": {"hosts": hosts(replicas, 11)},
              "backup": {"hosts": hosts(backup, 50)}}
    if etcd is None:
        etcd = (list(primary) + list(replicas) + ["etcd-1", "etcd-2", "etcd-3"])[:3]
    if etcd != "absent":
        groups["etcd"] = {"hosts": {n: ({"ansible_host": f"10.99.0.{30 + i}"} if n.startswith("etcd-") else None)
                                    for i, n in enumerate(etcd)} or None}
    if app:
        groups["app"] = {"hosts": {n: {"ansible_host": "app.example.org"} for n in app}}
    return {"all": {"vars": allvars, "children": groups}}


CASES = {
    "no primary": (inventory([], ["db2", "db3"]), "must hold exactly one host (the host that starts the cluster); it holds 0"),
    "two primaries": (inventory(["db1", "db2"], ["db3"]),
                      "must hold exactly one host (the host that starts the cluster); it holds 2"),
    "host both primary and replica": (
        {"all": {"vars": inventory(["db1"], [])["all"]["vars"],
                 "children": {"db_primary": {"hosts": {"db1": {"ansible_host": "10.99.0.1"}}},
                              "db_replicas": {"hosts": {"db1": None, "db2": {"ansible_host": "10.99.0.2"}}}}}},
        "is in both 'db_primary' and 'db_replicas'"),
    "missing password": (
        inventory(["db1"], ["db2"], {"postgresql_app_password": None}), "postgresql_app_password"),
    "empty password": (
        inventory(["db1"], ["db2"], {"postgresql_replication_password": ""}),
        "set postgresql_replication_password (from vault)"),
    "app host without address": (
        inventory(["db1"], ["db2"], app=["app1"]), "no IP address for app1"),
    "synchronous without replicas": (
        inventory(["db1"], [], {"postgresql_synchronous_replication": True}),
        "synchronous replication needs at least two replicas"),
    "synchronous with one replica": (
        inventory(["db1"], ["db2"], {"postgresql_synchronous_replication": True}),
        "synchronous replication needs at least two replicas"),
    "even number of etcd members": (
        inventory(["db1"], ["db2"], etcd=["db1", "db2"]), "it must hold 3, 5 or 7 inventory hosts"),
    "no etcd group": (inventory(["db1"], ["db2", "db3"], etcd="absent"), "'etcd' (not in the inventory)"),
    "etcd member that is no inventory host with an address": (
        {"all": {"vars": inventory(["db1"], ["db2"])["all"]["vars"],
                 "children": {**inventory(["db1"], ["db2"])["all"]["children"],
                              "etcd": {"hosts": {"db1": None, "db2": None, "witness": None}}}}},
        "with an address (without one: witness)"),
    "no backup host": (
        inventory(["db1"], ["db2", "db3"], backup=()), "which must hold at least one host that is not a database host"),
    "backup host is a database host": (
        {"all": {"vars": inventory(["db1"], ["db2"])["all"]["vars"],
                 "children": {**inventory(["db1"], ["db2"])["all"]["children"], "backup": {"hosts": {"db2": None}}}}},
        "which must hold at least one host that is not a database host"),
    "Patroni timing": (
        inventory(["db1"], ["db2"], {"postgresql_patroni_ttl": 10}), "loop_wait + 2 x retry_timeout must not exceed ttl"),
}


@pytest.fixture(scope="module")
def runs():
    """Run every case (each is a separate ansible-playbook), three at a time."""
    import json
    tmp = Path(tempfile.mkdtemp(prefix="pg-bad-input-"))
    play = tmp / "play.yml"
    play.write_text(textwrap.dedent("""\
        - hosts: db_primary:db_replicas
          gather_facts: true
          roles: [postgresql]
    """))
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CACHE_PLUGIN="memory", ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))

    def finish(p):
        out, _ = p.communicate(timeout=300)
        return p.returncode, out

    # Three at a time: fourteen ansible-playbooks at once on a small control node starve the
    # lab hosts of CPU, and a Patroni leader that cannot renew its lock in time fails over.
    results = {}
    procs = {}
    for i, (case, (inv, _)) in enumerate(CASES.items()):
        if len(procs) == 3:
            done, p = procs.popitem()
            results[done] = finish(p)
        inv_file = tmp / f"inventory-{i}.json"
        if inv["all"]["vars"].get("postgresql_app_password", "") is None:
            del inv["all"]["vars"]["postgresql_app_password"]
        inv_file.write_text(json.dumps(inv))
        procs[case] = subprocess.Popen(
            ["ansible-playbook", "--check", "-i", str(inv_file), str(play)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp)
    results.update({case: finish(p) for case, p in procs.items()})
    return results


@pytest.mark.parametrize("case", CASES)
def test_bad_inventory_fails_early_with_clear_message(runs, case):
    rc, out = runs[case]
    assert rc != 0, out
    assert CASES[case][1] in out, out
    # Nothing ran past the checks: no task changed anything.
    assert "changed=0" in out and "changed=1" not in out, out
    assert "Install PostgreSQL" not in out, out
