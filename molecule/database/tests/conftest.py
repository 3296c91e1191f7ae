"""Helpers shared by the database scenario's tests (pytest loads this file for each test module here)."""
import json
import re
import time

import pytest

PRIMARY = "db-1"
BACKUP_HOST = "db-2"   # the first replica
APP_HOST = "db-3"      # a replica that is also in the app group (pg_hba)
MON = "db-mon"         # Prometheus, Alertmanager, Redis, Debian's nginx
ADDRESSES = {"db-1": "10.90.2.11", "db-2": "10.90.2.12", "db-3": "10.90.2.13", MON: "10.90.2.20"}
DB_HOSTS = ("db-1", "db-2", "db-3")
REPLICAS = {h: ADDRESSES[h] for h in ("db-2", "db-3")}
PG_VERSION = "15"  # Debian 12
DATA_DIR = f"/var/lib/postgresql/{PG_VERSION}/main"
CONF_DIR = f"/etc/postgresql/{PG_VERSION}/main"
UNIT = f"patroni@{PG_VERSION}-main.service"
PATRONI_CONFIG = f"/etc/patroni/{PG_VERSION}-main.yml"


def name(host):
    return host.backend.get_hostname()


def sql(host, query, db="postgres"):
    return host.check_output("runuser -u postgres -- psql -XAt -d %s -c %s", db, query)


def cluster(host):
    """Patroni's view of the cluster (patronictl list), as {member: row}."""
    out = host.check_output(f"runuser -u postgres -- patronictl -c {PATRONI_CONFIG} list -f json")
    return {m["Member"]: m for m in json.loads(out)}


def leader(host):
    """The member that leads now."""
    members = cluster(host)
    leaders = [m for m, row in members.items() if row["Role"] == "Leader" and row["State"] == "running"]
    assert len(leaders) == 1, members
    return leaders[0]


def writable_leader(host, timeout=120):
    """The leader, once it takes writes (pg_is_in_recovery() false). A member that Patroni
    lists as the running leader is still read-only while its promotion ends; a leader that
    stays read-only fails here with what Patroni and PostgreSQL said."""
    seen = []

    def ready():
        lead = leader(host)
        state = sql(other(host, lead), "SELECT pg_is_in_recovery() || ' ' || current_setting('default_transaction_read_only')")
        seen.append((time.strftime("%H:%M:%S"), lead, state))
        return lead if state == "false off" else None
    return wait_for("no leader took writes", ready, timeout, step=3,
                    detail=lambda: f"{seen[-5:]}, cluster {cluster(host)}")


def other(host, hostname):
    """The testinfra host of another instance, through the same inventory."""
    b = host.backend
    return host.get_host(f"ansible://{hostname}", ansible_inventory=b.ansible_inventory, force_ansible=b.force_ansible)


def only(host, *names):
    if name(host) not in names:
        pytest.skip(f"not for {name(host)}")


def wait_for(what, check, timeout=180, step=5, detail=None):
    """Poll check() until it returns a true value; return it, or fail after timeout
    (with detail(), when given, in the message)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s" + (f": {detail()}" if detail else ""))
        time.sleep(step)


@pytest.fixture
def exposure(host):
    """systemd-analyze's overall exposure figure of a unit on this host."""
    def measure(unit):
        out = host.check_output(f"systemd-analyze security --no-pager {unit} | tail -1")
        value = float(re.search(r"exposure level for \S+: ([0-9.]+)", out).group(1))
        print(f"{host.backend.get_hostname()} {unit}: exposure {value} ({out})")
        return value
    return measure
