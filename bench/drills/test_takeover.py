"""Takeover drill: a database tier deployed by the last release before Patroni (streaming
replication under the distribution's units) is converted in place by this release's
database.yml - no dump, no restore, no committed row lost, while a writer keeps writing.

It runs on four hosts of its own (10.90.30.0/24: tk-db1 the old primary, tk-db2 and tk-db3
its replicas and the etcd members with it, tk-bak the pgBackRest repository), not on the
main lab, and removes them at the end."""
from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import REPO, lab, on

from bench.lab import run_playbook

# The last commit whose postgresql role ran the cluster without Patroni.
BEFORE_PATRONI = "92fe893"
HOSTS = {"tk-db1": "10.90.30.11", "tk-db2": "10.90.30.12", "tk-db3": "10.90.30.13", "tk-bak": "10.90.30.20"}
PSQL = "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d aiplatform"
WRITER = """\
# Inserts a row a tenth of a second, through libpq's multi-host URL as the app does, and
# logs each committed id; failed commits are retried with the next id.
import subprocess, sys, time, os
url = sys.argv[1]
i = 0
with open('/tmp/takeover-committed', 'a') as out:
    while not os.path.exists('/tmp/takeover-stop'):
        i += 1
        r = subprocess.run(['psql', '-XAtq', url, '-c', f'INSERT INTO takeover (id) VALUES ({i})'],
                           capture_output=True, text=True)
        if r.returncode == 0:
            out.write(f'{i} {time.time()}\\n'); out.flush()
        else:
            time.sleep(0.1)
        time.sleep(0.1)
"""


def _inventory(d: Path) -> Path:
    hosts = {h: {"ansible_host": a} for h, a in HOSTS.items()}
    inv = {"all": {"children": {
        "db_primary": {"hosts": {"tk-db1": hosts["tk-db1"]}},
        "db_replicas": {"hosts": {"tk-db2": hosts["tk-db2"], "tk-db3": hosts["tk-db3"]}},
        "etcd": {"hosts": {"tk-db1": None, "tk-db2": None, "tk-db3": None}},
        "backup": {"hosts": {"tk-bak": hosts["tk-bak"]}},
        # tk-db3 may reach the application database (pg_hba): the writer runs there.
        "app": {"hosts": {"tk-db3": None}}},
        "vars": {"postgresql_synchronous_replication": True,
                 "etcd_heartbeat_interval": 250, "etcd_election_timeout": 2500}}}
    (d / "hosts.yml").write_text(json.dumps(inv))
    (d / "group_vars").symlink_to(REPO / "inventories/lab/group_vars")
    return d / "hosts.yml"


def test_takeover_of_a_running_cluster(record):
    """A cluster of the release before Patroni, under writes, converted in place: same system identifier, every committed row."""
    tmp = Path(tempfile.mkdtemp(prefix="drill-takeover-"))
    spec = [{"name": h, "address": a, "image": "debian12", "groups": []} for h, a in HOSTS.items()]
    try:
        lab("up", "--spec", json.dumps(spec), timeout=900)
        inv = _inventory(tmp)
        old = tmp / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_PATRONI, "roles", "playbooks", "ansible.cfg"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        # The lab's group_vars make secrets in AIPL_LAB_SECRETS: this drill's own folder.
        secrets = {"AIPL_LAB_SECRETS": str(tmp / "secrets")}
        t_old, _ = run_playbook(inv, str(old / "playbooks/database.yml"), env={"ANSIBLE_ROLES_PATH": str(old / "roles"), **secrets})
        assert on("tk-db1", "systemctl is-active postgresql@15-main").strip() == "active"
        assert on("tk-db1", "test -e /etc/patroni/15-main.yml && echo yes || echo no").strip() == "no"
        sysid = on("tk-db1", f"{PSQL} -c 'SELECT system_identifier FROM pg_control_system()'").strip()
        identity = on("tk-db1", "stat -c '%i %W' /var/lib/postgresql/15/main/PG_VERSION").strip()

        # Rows written before, and a writer that keeps committing during the conversion.
        on("tk-db1", f"{PSQL} -c 'CREATE TABLE takeover (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())' "
                     "-c 'GRANT ALL ON takeover TO aiplatform' "
                     "-c 'CREATE TABLE before_takeover AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g'")
        before = on("tk-db1", f"{PSQL} -c 'SELECT count(*) || md5(string_agg(v, $$,$$ ORDER BY id)) FROM before_takeover'").strip()
        app_pw = (tmp / "secrets" / "postgresql_app").read_text().strip()
        url = (f"host={','.join(HOSTS[h] for h in ('tk-db1', 'tk-db2', 'tk-db3'))} dbname=aiplatform user=aiplatform "
               f"password={app_pw} target_session_attrs=read-write sslmode=verify-full "
               "sslrootcert=/etc/ai-platform/tls/ca.crt connect_timeout=3")
        on("tk-db3", f"cat > /tmp/takeover-writer.py <<'PY'\n{WRITER}PY\nrm -f /tmp/takeover-stop /tmp/takeover-committed; "
                     f"nohup python3 /tmp/takeover-writer.py '{url}' >/dev/null 2>&1 &")
        time.sleep(10)

        t_new, out = run_playbook(inv, str(REPO / "playbooks/database.yml"), env=secrets)
        time.sleep(10)
        on("tk-db3", "touch /tmp/takeover-stop; sleep 3")
        committed = [line.split() for line in on("tk-db3", "cat /tmp/takeover-committed").splitlines()]
        members = json.loads(on("tk-db1", "runuser -u postgres -- patronictl -c /etc/patroni/15-main.yml list -f json"))
        lead = next(m["Member"] for m in members if m["Role"] == "Leader")
        present = set(on(lead, f"{PSQL} -c 'SELECT id FROM takeover'").split())
        lost = [i for i, _ in committed if i not in present]
        # The longest pause between two commits: the writes' outage during the conversion.
        times = sorted(float(t) for _, t in committed)
        outage = max((b - a for a, b in itertools.pairwise(times)), default=None)
        after_sysid = on(lead, f"{PSQL} -c 'SELECT system_identifier FROM pg_control_system()'").strip()
        after = on(lead, f"{PSQL} -c 'SELECT count(*) || md5(string_agg(v, $$,$$ ORDER BY id)) FROM before_takeover'").strip()
        streaming = {h: on(h, f"{PSQL} -c \"SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'leader')\"").strip()
                     for h in ("tk-db1", "tk-db2", "tk-db3")}
        record(old_release=BEFORE_PATRONI, old_deploy_s=round(t_old), takeover_playbook_s=round(t_new),
               committed_during=len(committed), lost=len(lost), longest_write_pause_s=round(outage, 1) if outage else None,
               leader=lead, members={m["Member"]: m["State"] for m in members}, replicas=streaming,
               system_identifier_kept=after_sysid == sysid,
               primary_datadir_kept=on("tk-db1", "stat -c '%i %W' /var/lib/postgresql/15/main/PG_VERSION").strip() == identity)
        assert after_sysid == sysid, "the cluster was re-created, not taken over"
        assert after == before, "rows written before the takeover differ"
        assert committed and not lost, f"{len(lost)} committed rows lost: {lost[:10]}"
        assert sorted(streaming.values()).count("streaming") == 2, streaming
        assert "changed=" in out
    finally:
        for h in HOSTS:
            lab("rm", h, check=False)
        shutil.rmtree(tmp, ignore_errors=True)

