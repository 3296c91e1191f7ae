"""Scale-out: a replica added by editing the inventory and running the database tier's
playbook (playbooks/database.yml, what site.yml runs for the tier). The new member clones
the leader under Patroni and streams from it over TLS; the members that ran before are not
restarted (their Patroni, PostgreSQL and etcd start marks are unchanged).

The last test of the scenario (pytest takes the files in order): it boots db-4 and removes
it again at the end, and waits until Patroni has forgotten it.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import testinfra
import yaml
from conftest import DB_HOSTS, PATRONI_CONFIG, UNIT, cluster, leader, sql, wait_for

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
REPO = Path(os.environ.get("AIPL_REPO", Path(__file__).resolve().parents[3]))
NEW = {"name": "db-4", "address": "10.90.2.14", "image": "debian12"}
ETCD_MEMBERS = ("db-1", "db-2", "db-3")


def node(name: str, inventory: str = INVENTORY):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory)


def start_marks() -> dict[str, str]:
    """Per member: Patroni's and etcd's unit invocation and the postmaster's start time."""
    marks = {}
    for h in DB_HOSTS:
        n = node(h)
        marks[f"{h}:patroni"] = n.check_output(f"systemctl show -p InvocationID --value {UNIT}")
        marks[f"{h}:postgres"] = sql(n, "SELECT pg_postmaster_start_time()")
        if h in ETCD_MEMBERS:
            marks[f"{h}:etcd"] = n.check_output("systemctl show -p InvocationID --value etcd")
    return marks


def dynamic_config() -> str:
    return node(DB_HOSTS[0]).check_output(f"runuser -u postgres -- patronictl -c {PATRONI_CONFIG} show-config")


def why_restarted(before: dict, after: dict, since: str, playbook_out: str, config_before: str) -> str:
    """What a failed 'nothing restarted' check needs to name its cause, most telling first
    (CI shows the first lines only): which marks moved, Patroni's history (a leader change
    shows there), every member's Patroni log lines since the playbook started (a lost leader
    lock, a demotion, a restart asked through the REST API), etcd's complaints on the moved
    members (slow disk or CPU, elections), then the playbook's changed tasks."""
    moved = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
    first = node(DB_HOSTS[0])
    history = first.run(f"runuser -u postgres -- patronictl -c {PATRONI_CONFIG} history").stdout
    out = [f"moved: {moved}", "patronictl history (last 3):", *history.strip().splitlines()[-3:]]
    # A setting that needs a restart, sent by the playbook, shows in Patroni's dynamic configuration.
    config_diff = difflib.unified_diff(config_before.splitlines(), dynamic_config().splitlines(), lineterm="", n=0)
    out += ["dynamic configuration, before -> after the playbook:", *(list(config_diff)[2:] or ["(no change)"])]

    def journal(h: str, unit: str, what: str, pattern: str, last: int) -> list[str]:
        """A heading and the last lines of the unit's journal since the playbook began that match."""
        log = node(h).run(f"journalctl -u {unit} --since '{since}' --no-pager -o short-iso").stdout
        keep = [ln[:220] for ln in log.splitlines() if re.search(pattern, ln, re.IGNORECASE) and "no action" not in ln]
        return [f"{h} {what} since {since}: {len(keep)} lines", *keep[-last:]]

    for h in DB_HOSTS:
        out += journal(h, UNIT, "Patroni", r"demot|lock|restart|switchover|failover|promot|timeout|error|not healthy|"
                                           r"stop|start|exception|fail|changed|pending|reload", 14)
    for h in sorted({k.split(":")[0] for k in moved}):
        out += journal(h, "etcd", "etcd", r"took too long|election|lost|timeout|slow|leader changed|became", 4)
    lines = playbook_out.splitlines()
    changed = []
    for i, line in enumerate(lines):
        if line.startswith("changed:"):
            task = next((lines[j] for j in range(i, -1, -1) if lines[j].startswith("TASK [")), "?")
            changed.append(f"{task.rstrip(' *')} {line}")
    # Every changed task by name (the members' own first, db-4's are the expected ones), then the last in full.
    names = [c for c in dict.fromkeys(c.split(" changed: ")[0] + " [" + c.split("[")[-1] for c in changed)
             if "db-4" not in c]
    return "\n".join([*out, f"changed tasks ({len(changed)}), but those of db-4:", *names[:40]])


def test_scale_out_adds_a_replica_without_restarting_the_others():
    """Edit the inventory, run the tier's playbook: db-4 streams from the leader, the others keep running."""
    lab = ["python3", str(REPO / "tests/lab/lab.py")]
    first = node(DB_HOSTS[0])
    members = cluster(first)
    assert set(members) == set(DB_HOSTS), members
    pending = [m for m, row in members.items() if row.get("Pending restart")]
    assert not pending, f"members wait for a restart before the scale-out: {pending}"
    lead = node(leader(first))
    # The side effect raised max_wal_senders through the role (side_effect_restart.yml): the
    # inventory of the moment has that value, or the run would put it back and restart every member.
    senders = sql(lead, "SHOW max_wal_senders")

    subprocess.run([*lab, "rm", NEW["name"]], check=False, timeout=300)  # a leftover of an aborted run
    subprocess.run([*lab, "up", "--spec", json.dumps([NEW])], check=True, timeout=900)
    inv = yaml.safe_load(Path(INVENTORY).read_text())
    new = dict(inv["all"]["hosts"]["db-2"], ansible_host=NEW["address"])
    inv["all"]["hosts"][NEW["name"]] = new
    inv["db_replicas"]["hosts"][NEW["name"]] = new
    scaled = Path(INVENTORY).with_name("scale-out.yml")  # beside it: the same group_vars
    scaled.write_text(yaml.safe_dump(inv))
    before = start_marks()
    config_before = dynamic_config()
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    try:
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
        r = subprocess.run(["ansible-playbook", "-i", str(scaled), str(REPO / "playbooks/database.yml"),
                            "-e", f"postgresql_max_wal_senders={senders}"],
                           env=env, cwd=REPO, capture_output=True, text=True, timeout=2400, check=False)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]

        after = start_marks()
        assert after == before, why_restarted(before, after, since, r.stdout, config_before)

        db4 = node(NEW["name"], str(scaled))
        assert sql(db4, "SELECT pg_is_in_recovery()") == "t"
        row = cluster(first)[NEW["name"]]
        assert row["Role"] in ("Replica", "Sync Standby") and row["State"] in ("streaming", "running"), row
        lead = node(leader(first))
        streams = sql(lead, "SELECT r.state || ' ' || s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s "
                            f"USING (pid) WHERE r.client_addr = '{NEW['address']}'")
        assert streams == "streaming true", streams  # a boolean concatenated with text reads "true"
        # A write on the leader reaches the new member.
        mark = uuid.uuid4().hex
        sql(lead, "CREATE TABLE IF NOT EXISTS scale_out_marker (mark text PRIMARY KEY)", db="aiplatform")
        sql(lead, f"INSERT INTO scale_out_marker VALUES ('{mark}')", db="aiplatform")
        wait_for("the leader's write on db-4",
                 lambda: sql(db4, f"SELECT count(*) FROM scale_out_marker WHERE mark = '{mark}'", db="aiplatform") == "1",
                 timeout=60, step=2)
        # Clients of the cluster may reach it: every member's pg_hba.conf admits the new address.
        for h in DB_HOSTS:
            assert f"{NEW['address']}/32" in node(h).file("/etc/postgresql/15/main/pg_hba.conf").content_string, h
    finally:
        scaled.unlink(missing_ok=True)
        subprocess.run([*lab, "rm", NEW["name"]], check=False, timeout=300)
    # Patroni forgets the member once its key expires, and the leader drops its slot.
    wait_for("Patroni forgets db-4", lambda: NEW["name"] not in cluster(first), timeout=120, step=5)
    wait_for("the leader drops db-4's slot",
             lambda: sql(node(leader(first)), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'db_4'") == "0",
             timeout=60, step=5)
