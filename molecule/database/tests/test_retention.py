"""Backup retention: what each kind of backup keeps and what it prunes, through the project's own units (so the
pruning that runs is the one production runs). pgBackRest on the repository host keeps repo1-retention-full full
backups and expires older ones with the WAL only they needed; the logical backup service on the backup host
removes sets older than BACKUP_RETENTION_DAYS and half-written ones. Each test takes real backups, so this module
runs after the ones that read the side effect's backups (test_pitr, test_replication)."""
import json
import re

from conftest import BACKUP_HOST, MON, only

STANZA = "main"  # pgbackrest_stanza (the role's default)


def _setting(host, path, key):
    """A key=value setting of a file on the host (pgbackrest.conf, the backup service's env file)."""
    m = re.search(rf"^{re.escape(key)}=\"?([^\"\n]*)\"?$", host.file(path).content_string, re.M)
    assert m, f"{key} not in {path}"
    return m.group(1)


def _stanza(host):
    info = json.loads(host.check_output("runuser -u postgres -- pgbackrest --output=json info"))
    return {s["name"]: s for s in info}[STANZA]


def _segment_files(host, repo, segment):
    """The archived copies of one WAL segment in the repository (any archive id)."""
    return host.check_output(f"find {repo}/archive/{STANZA} -path '*/{segment[:16]}/{segment}-*' -type f").split()


def test_pgbackrest_expires_full_backups_beyond_retention(host):
    only(host, MON)
    conf = "/etc/pgbackrest/pgbackrest.conf"
    keep, repo = int(_setting(host, conf, "repo1-retention-full")), _setting(host, conf, "repo1-path")
    before = {b["label"]: b for b in _stanza(host)["backup"]}
    fulls_before = sorted(label for label, b in before.items() if b["type"] == "full")
    assert fulls_before, "no full backup to start from"
    # Enough new full backups that every full backup there was before is beyond the retention.
    for _ in range(keep):
        host.run_expect([0], "systemctl start pgbackrest-backup@full.service")
    stanza = _stanza(host)
    after = {b["label"]: b for b in stanza["backup"]}
    fulls = sorted(label for label, b in after.items() if b["type"] == "full")
    print(f"retention-full {keep}; full backups before {fulls_before}, after {fulls}; all after {sorted(after)}")
    assert len(fulls) == keep, fulls
    assert not set(fulls) & set(fulls_before), f"an older full backup outlived the {keep} newer ones: {fulls}"
    expired = sorted(set(before) - set(after))
    assert set(fulls_before) <= set(expired)
    # Differential and incremental backups of an expired full backup went with it.
    assert all(b["prior"] is None or b["prior"] in after for b in after.values()), after
    for label in expired:
        assert not host.file(f"{repo}/backup/{STANZA}/{label}").exists, f"{label} expired but still in the repository"
    # The WAL that only the expired backups needed is gone; the kept backups' WAL is there.
    for label in fulls_before:
        start = before[label]["archive"]["start"]
        assert not _segment_files(host, repo, start), f"WAL {start} of expired {label} still archived"
    oldest = min(fulls)
    assert _segment_files(host, repo, after[oldest]["archive"]["start"]), f"WAL of kept {oldest} missing"
    assert stanza["status"]["code"] == 0, stanza["status"]


def test_logical_backup_removes_sets_past_retention(host):
    only(host, BACKUP_HOST)
    env = "/etc/ai-platform/postgresql-backup.env"
    backup_dir, days = _setting(host, env, "BACKUP_DIR"), int(_setting(host, env, "BACKUP_RETENTION_DAYS"))
    # Set names are UTC times: one two days past the retention, one a day within it, and a half-written one.
    stamp = "date -u -d '{}' +%Y%m%dT%H%M%SZ"
    old = host.check_output(stamp.format(f"-{days + 2} days"))
    recent = host.check_output(stamp.format(f"-{max(days - 1, 0)} days -1 hour"))
    partial = f".partial-{old}"
    sets_before = set(host.check_output(f"ls {backup_dir}").split())
    for d in (old, recent, partial):
        host.run_expect([0], f"install -d -o postgres -g postgres -m 0700 {backup_dir}/{d} && "
                             f"runuser -u postgres -- touch {backup_dir}/{d}/appdb.dump")
    try:
        since = host.check_output("date +%s")
        host.run_expect([0], "systemctl start postgresql-backup.service")
        log = host.check_output(f"journalctl -u postgresql-backup.service --since @{since} -o cat --no-pager")
        sets = set(host.check_output(f"ls -A {backup_dir}").split())
        print(f"retention {days} days; before {sorted(sets_before)}; after {sorted(sets)}\n{log}")
        assert old not in sets, f"{old} is older than {days} days and was kept"
        assert f"removed backup set {old} (older than {days} days)" in log
        assert partial not in sets, "a half-written set was kept"
        assert recent in sets, f"{recent} is within {days} days and was removed"
        new = sorted(s for s in sets - sets_before - {recent} if re.fullmatch(r"2\d{7}T\d{6}Z", s))
        assert len(new) == 1, f"no new complete set: {sorted(sets)}"
        assert host.file(f"{backup_dir}/{new[0]}/SHA256SUMS").exists
        # The sets that were there and are within the retention stay.
        assert {s for s in sets_before if s > old} <= sets, sorted(sets)
    finally:
        host.run(f"rm -rf {backup_dir}/{recent} {backup_dir}/{old} {backup_dir}/{partial}")
