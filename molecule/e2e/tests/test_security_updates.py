"""A security update applied by the updater restarts none of PostgreSQL, Redis or the app.

The hardening role sets up unattended-upgrades (the distribution's security archive
only) and needrestart, which restarts the services that use an updated library except
the data services and the app (roles/hardening, hardening_needrestart_never_restart).
Here the updater itself (`unattended-upgrade`, as apt's daily timer runs it) applies a
real security update on a database member, a Redis host and an app host:

- libssl is replaced on disk as dpkg replaces a library (a new file under the same
  name); every running service that had it loaded now uses a deleted file, which is
  what needrestart looks for. The test first checks that needrestart lists PostgreSQL
  (under Patroni), Redis and the app as needing a restart, and a canary service too.
- a package, built here, is published in a local archive that says what the Debian
  security archive says of itself (origin Debian, label Debian-Security, codename
  <release>-security); its version 1.0 is installed and 1.1 is in the archive.
- `unattended-upgrade` installs 1.1; dpkg's Post-Invoke runs needrestart.

Then the canary has a new process (needrestart did restart what it may), and the
processes of PostgreSQL, Patroni, etcd, Redis, ChromaDB and the app are the same.
"""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_e2e import host

PKG = "aipl-security-canary"
ARCHIVE = "/srv/aipl-security"
SOURCE = "/etc/apt/sources.list.d/aipl-security.list"
CANARY = "aipl-needrestart-canary"
# A service that may be restarted, with libssl loaded (Python's ssl module).
CANARY_UNIT = """[Unit]
Description=needrestart canary of the e2e scenario
[Service]
ExecStart=/usr/bin/python3 -c "import ssl, time; time.sleep(86400)"
"""
# host -> the units whose processes must survive; the first of each is one needrestart
# must list (it has libssl loaded), the others are only held to the same PIDs.
PROTECTED = {
    "e2e-db1": ["patroni@15-main", "etcd"],
    "e2e-svc": ["redis@broker", "redis@cache", "redis-sentinel", "chromadb"],
    "e2e-app1": ["ai-platform-api", "ai-platform-worker", "ai-platform-beat"],
}


def build(h, version: str, dest: str) -> None:
    """A minimal package of the given version, built with dpkg-deb on the host."""
    root = f"/tmp/{PKG}-{version}"
    h.check_output(
        f"rm -rf {root} && mkdir -p {root}/DEBIAN {root}/usr/share/doc/{PKG} && "
        f"echo {version} > {root}/usr/share/doc/{PKG}/version && "
        f"printf 'Package: {PKG}\\nVersion: {version}\\nArchitecture: all\\nMaintainer: e2e <e2e@localhost>\\n"
        f"Section: misc\\nPriority: optional\\nDescription: security update canary of the e2e scenario\\n' "
        f"> {root}/DEBIAN/control && dpkg-deb --root-owner-group --build {root} {dest} >/dev/null")


def publish(h) -> None:
    """A flat archive with version 1.1 that names itself as the security archive."""
    codename = h.check_output(". /etc/os-release && echo $VERSION_CODENAME")
    deb = f"{PKG}_1.1_all.deb"
    h.check_output(f"rm -rf {ARCHIVE} && mkdir -p {ARCHIVE}")
    build(h, "1.1", f"{ARCHIVE}/{deb}")
    h.check_output(
        f"cd {ARCHIVE} && {{ dpkg-deb -f {deb}; echo 'Filename: ./{deb}'; echo \"Size: $(stat -c %s {deb})\"; "
        f"echo \"SHA256: $(sha256sum {deb} | cut -d' ' -f1)\"; echo; }} > Packages && "
        f"{{ printf 'Origin: Debian\\nLabel: Debian-Security\\nSuite: {codename}-security\\n"
        f"Codename: {codename}-security\\nDate: %s\\nArchitectures: all amd64\\nComponents: main\\nSHA256:\\n' "
        f"\"$(date -Ru)\"; echo \" $(sha256sum Packages | cut -d' ' -f1) $(stat -c %s Packages) Packages\"; }} > Release")
    h.check_output(f"echo 'deb [trusted=yes] file:{ARCHIVE} ./' > {SOURCE}")
    h.check_output(f"apt-get update -qq -o Dir::Etc::SourceList={SOURCE} -o Dir::Etc::SourceParts=- "
                   "-o APT::Get::List-Cleanup=0")


def pids(h, units: list[str]) -> dict[str, str]:
    """unit -> its main PID and start time (a restart changes both); the postmaster's PID too."""
    out = {u: h.check_output(f"systemctl show -P MainPID -P ExecMainStartTimestampMonotonic {u}").replace("\n", "/")
           for u in units}
    if any(u.startswith("patroni") for u in units):
        out["postgres (postmaster)"] = h.check_output("pgrep -o -x postgres")
    return out


def updater_run(name: str) -> dict:
    h = host(name)
    units = PROTECTED[name]
    for unit in units:
        assert h.service(unit).is_running, f"{name}: {unit} is not running: nothing to protect"
    h.check_output(f"printf '%s' '{CANARY_UNIT}' > /etc/systemd/system/{CANARY}.service && "
                   f"systemctl daemon-reload && systemctl start {CANARY}")
    try:
        build(h, "1.0", f"/tmp/{PKG}_1.0_all.deb")
        h.check_output(f"DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/{PKG}_1.0_all.deb >/dev/null")
        publish(h)
        policy = h.check_output(f"apt-cache policy {PKG}")
        assert re.search(r"Candidate: 1\.1", policy), policy
        time.sleep(1)  # the canary has imported ssl
        # libssl replaced as dpkg replaces a library: a new file under the same name.
        lib = h.check_output("ldconfig -p | awk '/libssl[.]so[.]3 /{print $NF; exit}'")
        assert lib, "no libssl.so.3 on the host"
        h.check_output(f"cp -p {lib} {lib}.e2e-new && mv -f {lib}.e2e-new {lib}")
        listed = h.check_output("needrestart -b -r l")
        for unit in (CANARY, units[0]):
            assert f"NEEDRESTART-SVC: {unit}.service" in listed, (name, unit, listed)
        before = pids(h, units)
        canary_before = h.check_output(f"systemctl show -P MainPID {CANARY}")
        # The updater, as apt-daily-upgrade.service runs it (waiting while another apt holds the lock).
        for _ in range(30):
            run = h.run("DEBIAN_FRONTEND=noninteractive unattended-upgrade -v </dev/null")
            if "Lock could not be acquired" not in run.stdout + run.stderr:
                break
            time.sleep(10)
        version = h.check_output(f"dpkg-query -W -f '${{Version}}' {PKG}")
        canary_after = h.check_output(f"systemctl show -P MainPID {CANARY}")
        return {"name": name, "rc": run.rc, "log": (run.stdout + run.stderr)[-3000:], "version": version,
                "before": before, "after": pids(h, units), "canary": (canary_before, canary_after)}
    finally:
        h.run(f"systemctl stop {CANARY}; rm -f /etc/systemd/system/{CANARY}.service; systemctl daemon-reload; "
              f"DEBIAN_FRONTEND=noninteractive dpkg --purge {PKG} >/dev/null; "
              f"rm -rf {SOURCE} {ARCHIVE} /tmp/{PKG}-1.0 /tmp/{PKG}-1.1 /tmp/{PKG}_1.0_all.deb "
              f"/var/lib/apt/lists/_srv_aipl-security_*")


@pytest.fixture(scope="module")
def updates():
    with ThreadPoolExecutor(len(PROTECTED)) as pool:
        return {r["name"]: r for r in pool.map(updater_run, PROTECTED)}


@pytest.mark.parametrize("name", sorted(PROTECTED))
def test_a_security_update_restarts_none_of_the_data_services_or_the_app(updates, name):
    r = updates[name]
    assert r["rc"] == 0, r["log"]
    assert r["version"] == "1.1", f"the updater did not install the security update:\n{r['log']}"
    assert r["canary"][0] != r["canary"][1], f"needrestart restarted nothing at all (canary {r['canary']})"
    changed = {u: (r["before"][u], r["after"][u]) for u in r["before"] if r["before"][u] != r["after"][u]}
    assert not changed, f"restarted by the security update: {changed}"
