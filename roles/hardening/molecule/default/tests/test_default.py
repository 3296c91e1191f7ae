"""hardening: every item on both hosts (Debian 12 and 13), checked by what the
host does (sshd refusing a password, fail2ban banning, needrestart leaving the
app alone, AIDE noticing a change), not only by the files the role wrote.
"""

import os
import re
import time

import pytest
import testinfra

HOSTS = {"hard-d12": "10.90.40.12", "hard-d13": "10.90.40.13"}
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
SSH = "ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5"


def name_of(host):
    return host.backend.get_hostname()


def get(name):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)


def in_container(host):
    return host.run("systemd-detect-virt --container").rc == 0


def sshd_settings(host):
    """sshd -T: keyword -> value (keywords listed once per value, like allowgroups, joined by spaces)."""
    settings = {}
    for line in host.check_output("sshd -T").splitlines():
        key, _, value = line.partition(" ")
        settings[key] = f"{settings[key]} {value}" if key in settings else value
    return settings


def attempt(host, cmd):
    """(exit status, stderr) of a command that may fail with 255 (ssh), which
    testinfra's own SSH backend would take for a lost connection."""
    out = host.run(f"{cmd}; echo \"rc=$?\"")
    return int(out.stdout.strip().splitlines()[-1].removeprefix("rc=")), out.stderr


# --- SSH ----------------------------------------------------------------------------


def test_sshd_configuration_is_valid_and_hardened(host):
    dropin = host.file("/etc/ssh/sshd_config.d/10-hardening.conf")
    assert (dropin.user, dropin.mode) == ("root", 0o600)
    assert host.file("/etc/ssh/sshd_config").mode == 0o600
    assert host.run("sshd -t").rc == 0
    s = sshd_settings(host)
    assert s["passwordauthentication"] == "no"
    assert s["kbdinteractiveauthentication"] == "no"
    assert s["authenticationmethods"] == "publickey"
    assert s["permitrootlogin"] == "without-password"  # prohibit-password, as the scenario sets
    assert s["maxauthtries"] == "3" and s["logingracetime"] == "30"
    assert s["allowtcpforwarding"] == "no" and s["x11forwarding"] == "no" and s["allowagentforwarding"] == "no"
    assert s["allowgroups"].split() == ["sudo", "root"]  # sudo, and the group of the user Ansible logs in as
    assert s["banner"] == "/etc/issue.net"
    kex, ciphers, macs = s["kexalgorithms"].split(","), s["ciphers"].split(","), s["macs"].split(",")
    assert "curve25519-sha256" in kex and not [k for k in kex if "sha1" in k or "nistp" in k]
    assert not [c for c in ciphers if "cbc" in c or "3des" in c], ciphers
    assert not [m for m in macs if "sha1" in m or "md5" in m or m.startswith("umac-64")], macs
    if host.system_info.codename == "trixie":  # OpenSSH 10: the ML-KEM hybrid comes first
        assert kex[0] == "mlkem768x25519-sha256", kex


def test_a_password_login_is_refused(host):
    """prepare.yml logged the probe operator in with its password; now that fails."""
    rc, err = attempt(host, f"sshpass -f /root/probe-password {SSH} -o PubkeyAuthentication=no "
                      "-o PreferredAuthentications=password,keyboard-interactive probe@127.0.0.1 true")
    assert rc != 0
    assert "Permission denied (publickey)" in err, err


def test_keys_log_in_only_for_allowed_groups(host):
    """The operator (group sudo) gets in with a key and can sudo; an account
    outside AllowGroups with the same key does not get in."""
    host.check_output("rm -f /root/.ssh/probe_key* && ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/probe_key")
    host.check_output("id outsider || useradd -m -s /bin/bash outsider")
    for user in ("probe", "outsider"):
        host.check_output(f"install -d -m 0700 -o {user} -g {user} /home/{user}/.ssh && "
                          f"install -m 0600 -o {user} -g {user} /root/.ssh/probe_key.pub /home/{user}/.ssh/authorized_keys")
    host.check_output("echo 'probe ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/probe && chmod 0440 /etc/sudoers.d/probe")
    try:
        ok = host.run(f"{SSH} -i /root/.ssh/probe_key -o BatchMode=yes probe@127.0.0.1 sudo -n id -un")
        assert ok.rc == 0 and ok.stdout.strip() == "root", ok.stderr
        rc, err = attempt(host, f"{SSH} -i /root/.ssh/probe_key -o BatchMode=yes outsider@127.0.0.1 true")
        assert rc == 255 and "Permission denied" in err, err
        log = host.check_output("journalctl -u ssh --since -2min --no-pager -o cat")
        assert "User outsider from 127.0.0.1 not allowed because none of user's groups are listed in AllowGroups" in log
    finally:
        host.run("rm -f /etc/sudoers.d/probe")


def test_legal_banner(host):
    for path in ("/etc/issue", "/etc/issue.net"):
        assert "Authorized access only" in host.file(path).content_string
    _, err = attempt(host, f"{SSH} -o BatchMode=yes -o PubkeyAuthentication=no nobody@127.0.0.1 true")
    assert "Authorized access only" in err  # shown before authentication


# --- fail2ban -----------------------------------------------------------------------


def test_fail2ban_sshd_jail_runs_with_the_ufw_action(host):
    out = host.check_output("fail2ban-client status sshd")
    assert "Currently banned" in out and "Journal matches:" in out, out
    assert host.check_output("fail2ban-client get sshd actions").splitlines()[-1] == "ufw"


def test_fail2ban_bans_repeated_failures_through_ufw():
    """hard-d13 fails to log in to hard-d12 as an unknown user five times: banned
    (a ufw rule), then unbanned by the test."""
    target, attacker = get("hard-d12"), get("hard-d13")
    ip = HOSTS["hard-d13"]
    try:
        for _ in range(6):
            attempt(attacker, f"{SSH} -o BatchMode=yes -o PubkeyAuthentication=no nosuchuser@{HOSTS['hard-d12']} true")
            if ip in target.check_output("fail2ban-client status sshd"):
                break
        deadline = time.monotonic() + 30
        while ip not in target.check_output("fail2ban-client status sshd"):
            assert time.monotonic() < deadline, target.check_output("fail2ban-client status sshd")
            time.sleep(1)
        # The ban action (ufw) runs just after the jail lists the address.
        while not re.search(rf"(DENY|REJECT)\s+{re.escape(ip)}\s", target.check_output("ufw status")):
            assert time.monotonic() < deadline + 30, target.check_output("ufw status")
            time.sleep(1)
        rc, err = attempt(attacker, f"{SSH} -o BatchMode=yes nosuchuser@{HOSTS['hard-d12']} true")
        assert rc == 255 and ("refused" in err or "timed out" in err), err
    finally:
        # Unbanned until the rule is gone: the jail may still read the attempts' last journal
        # lines after the unban and ban again (seen once in CI, 5 Dec: the rule still there
        # right after one unbanip).
        deadline = time.monotonic() + 30
        while True:
            target.run(f"fail2ban-client set sshd unbanip {ip}")
            if ip not in target.check_output("ufw status") or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert ip not in target.check_output("ufw status"), (
        target.check_output("fail2ban-client status sshd")
        + target.check_output("journalctl -u fail2ban --no-pager -n 30"))


# --- updates ------------------------------------------------------------------------


def test_unattended_upgrades_takes_security_updates_only(host):
    assert host.package("unattended-upgrades").is_installed
    periodic = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    out = host.run("unattended-upgrade --dry-run --debug 2>&1 | grep -m1 'Allowed origins are'")
    codename = host.system_info.codename
    assert out.stdout.strip().endswith(
        f"Allowed origins are: origin=Debian,codename={codename}-security,label=Debian-Security"), out.stdout
    # The data services' packages are never upgraded by it (their maintainer scripts restart them).
    blacklist = host.check_output("apt-config dump Unattended-Upgrade::Package-Blacklist")
    for pattern in ("^postgresql", "^patroni", "^etcd", "^redis", "^pgbackrest", "^keepalived"):
        assert f'"{pattern}";' in blacklist, blacklist


CANARY = """[Unit]
Description=needrestart canary
[Service]
ExecStart=/usr/local/lib/nr-canary/sleep infinity
"""


def test_needrestart_restarts_other_services_but_never_the_app(host):
    """Two services run a binary that is then replaced (as dpkg replaces files);
    a package installation by apt (the path unattended-upgrades takes: dpkg's
    Post-Invoke runs needrestart) restarts nr-canary and leaves
    ai-platform-canary (an app unit name) running the old binary."""
    units = ("nr-canary", "ai-platform-canary")
    host.check_output("install -d /usr/local/lib/nr-canary && cp /usr/bin/sleep /usr/local/lib/nr-canary/sleep")
    for unit in units:
        host.check_output(f"printf '%s' '{CANARY}' > /etc/systemd/system/{unit}.service")
    host.check_output("systemctl daemon-reload && systemctl restart " + " ".join(units))
    try:
        before = {u: host.check_output(f"systemctl show -P MainPID {u}") for u in units}
        # A new binary replaces the old one (as dpkg does): the running processes keep the deleted file.
        host.check_output("cp /usr/bin/sleep /usr/local/lib/nr-canary/sleep.new && "
                          "mv -f /usr/local/lib/nr-canary/sleep.new /usr/local/lib/nr-canary/sleep")
        listed = host.check_output("needrestart -b -r l")
        assert "NEEDRESTART-SVC: nr-canary.service" in listed and "ai-platform-canary" in listed, listed
        out = host.check_output("DEBIAN_FRONTEND=noninteractive apt-get install --reinstall -y sshpass </dev/null")
        assert re.search(r"deferred:\n(?: systemctl restart \S+\n)* systemctl restart ai-platform-canary.service", out), out
        after = {u: host.check_output(f"systemctl show -P MainPID {u}") for u in units}
        assert after["nr-canary"] != before["nr-canary"], "needrestart restarted nothing at all"
        assert after["ai-platform-canary"] == before["ai-platform-canary"], "needrestart restarted an app unit"
    finally:
        host.run("systemctl stop " + " ".join(units))
        host.run("rm -rf /usr/local/lib/nr-canary " + " ".join(f"/etc/systemd/system/{u}.service" for u in units))
        host.run("systemctl daemon-reload")


def prom(host):
    text = host.file("/var/lib/prometheus/node-exporter/hardening_updates.prom").content_string
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+) (\S+)$", text, re.M)}


def test_update_metrics_follow_a_pending_reboot(host):
    metrics = prom(host)
    assert set(metrics) == {"host_security_updates_pending", "host_security_updates_pending_since_timestamp_seconds",
                            "host_reboot_required", "host_reboot_required_since_timestamp_seconds",
                            "host_updates_check_timestamp_seconds"}
    assert host.service("hardening-update-metrics.timer").is_enabled
    try:
        host.check_output("touch /run/reboot-required && systemctl start hardening-update-metrics.service")
        metrics = prom(host)
        assert metrics["host_reboot_required"] == 1
        assert abs(metrics["host_reboot_required_since_timestamp_seconds"] - time.time()) < 120
    finally:
        host.run("rm -f /run/reboot-required")
    host.check_output("systemctl start hardening-update-metrics.service")
    metrics = prom(host)
    assert metrics["host_reboot_required"] == 0 and metrics["host_reboot_required_since_timestamp_seconds"] == 0
    pending = host.check_output("apt-get -qq -s dist-upgrade | grep -ci '^Inst .*security' || true")
    assert metrics["host_security_updates_pending"] == int(pending or 0)


# --- auditd -------------------------------------------------------------------------


def test_audit_rules(host):
    rules = host.file("/etc/audit/rules.d/50-hardening.rules").content_string
    for line in ("-w /etc/shadow -p wa -k identity", "-w /etc/sudoers.d -p wa -k sudoers",
                 "-w /etc/ssh/sshd_config.d -p wa -k sshd", "-w /etc/ai-platform -p wa -k ai-platform",
                 "-w /etc/patroni -p wa -k postgresql", "-w /etc/postgresql -p wa -k postgresql"):
        assert line in rules
    assert host.service("auditd").is_enabled
    if host.run("auditctl -s").rc == 0:
        listed = host.check_output("auditctl -l")
        assert "-w /etc/shadow -p wa -k identity" in listed, listed
        assert host.service("auditd").is_running
    else:
        # The lab's hosts are containers: the kernel's audit interface belongs to the machine.
        assert in_container(host), "auditctl -s fails on a machine"
        assert not host.service("auditd").is_running
        pytest.skip("kernel audit interface unavailable in this container: rules installed, unit enabled, not started")


# --- kernel, core dumps, logins -----------------------------------------------------


def test_modules_cannot_load(host):
    for module in ("dccp", "sctp", "rds", "tipc", "usb-storage", "firewire-core", "cramfs", "udf"):
        out = host.check_output(f"modprobe -n -v {module} || true")
        assert out.strip() == "install /bin/true", (module, out)


def test_core_dumps_off(host):
    assert host.check_output("systemctl show -P DefaultLimitCORE") == "0"
    assert host.check_output("bash -lc 'ulimit -c'") == "0"  # this SSH session, through pam_limits
    assert "Storage=none" in host.file("/etc/systemd/coredump.conf.d/10-hardening.conf").content_string


def test_sysctl_file_leaves_the_database_settings_alone(host):
    conf = host.file("/etc/sysctl.d/70-hardening.conf").content_string
    assert "fs.suid_dumpable = 0" in conf and "kernel.kptr_restrict = 2" in conf
    assert not re.search(r"^vm\.", conf, re.M)
    if in_container(host):
        pytest.skip("container: /proc/sys is the machine's, the file takes effect on a machine at boot")
    for line in conf.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" = ")
            assert host.check_output(f"sysctl -n {key}") == value, key


def test_mounts_left_to_the_container_engine(host):
    if not in_container(host):
        pytest.skip("a machine: see the mount options test on real hosts")
    assert "/dev/shm" not in host.file("/etc/fstab").content_string


def test_login_umask_and_password_aging(host):
    assert host.check_output("bash -lc umask") == "0027"
    defs = host.file("/etc/login.defs").content_string
    for key, value in (("UMASK", "027"), ("PASS_MAX_DAYS", "365"), ("PASS_MIN_DAYS", "1"), ("PASS_WARN_AGE", "14"),
                       ("SHA_CRYPT_MIN_ROUNDS", "65536"), ("SHA_CRYPT_MAX_ROUNDS", "131072")):
        assert re.search(rf"^{key}\s+{value}$", defs, re.M), key
    # A new account gets the aging; password changes go through pam_pwquality.
    host.check_output("id aging-probe || useradd aging-probe")
    try:
        assert host.check_output("chage -l aging-probe | grep 'Maximum number'").split(":")[-1].strip() == "365"
    finally:
        host.run("userdel aging-probe")
    assert "pam_pwquality.so" in host.file("/etc/pam.d/common-password").content_string


# --- AIDE ---------------------------------------------------------------------------


def test_login_shells_time_out_and_dump_no_core(host):
    """An interactive login shell gets a read-only TMOUT and a core size of 0; a
    non-interactive one (Ansible's) is not limited in time."""
    # The last command fails: TMOUT is read-only (bash says so and stops there).
    out = host.run("bash -lic 'echo TMOUT=$TMOUT; ulimit -c; TMOUT=0' </dev/null 2>&1").stdout
    assert "TMOUT=900" in out and "\n0\n" in out and "TMOUT: readonly variable" in out, out
    assert host.check_output("bash -lc 'echo TMOUT=$TMOUT'") == "TMOUT=", "a non-interactive shell got TMOUT"


def test_audit_tools_and_compilers_for_root_only(host):
    for pkg in ("libpam-tmpdir", "debsums"):
        assert host.package(pkg).is_installed, pkg
    # Files of installed packages (not their conffiles, which the roles edit) match their
    # checksums: debsums -c lists the changed ones.
    assert host.run("debsums -c 2>/dev/null | head -5").stdout.strip() == ""
    overrides = host.check_output("dpkg-statoverride --list")
    restricted = [f for f in ("/usr/bin/x86_64-linux-gnu-as", "/usr/bin/aarch64-linux-gnu-as")
                  if host.file(f).exists]
    if not restricted:
        pytest.skip("no assembler here (Debian 13's needrestart does not pull binutils in)")
    for path in restricted:
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "root", 0o750), (path, f.user, f.group, oct(f.mode))
        assert re.search(rf"^root root 0?750 {re.escape(path)}$", overrides, re.M), overrides
        assert host.run(f"runuser -u nobody -- {path} --version").rc != 0, f"nobody may run {path}"


def test_aide_notices_a_change_and_the_update_rebaselines(host):
    assert host.service("hardening-aide-check.timer").is_enabled
    assert host.file("/var/lib/aide/aide.db").exists
    try:
        host.check_output("echo canary > /etc/hardening-canary")
        changed = host.run("systemctl start hardening-aide-check.service")
        assert changed.rc != 0  # a change fails the unit: `systemctl --failed` shows it
        log = host.check_output("journalctl -u hardening-aide-check --since -10min --no-pager -o cat")
        assert "/etc/hardening-canary" in log, log[-2000:]
        metrics = host.file("/var/lib/prometheus/node-exporter/hardening_aide.prom").content_string
        assert re.search(r"^host_aide_check_exit_code [1-7]$", metrics, re.M), metrics
        # What the deploy path runs (entry point aide_update): the change becomes the baseline.
        host.check_output("/usr/local/sbin/hardening-aide-check --update")
        assert host.run("systemctl start hardening-aide-check.service").rc == 0
    finally:
        host.run("rm -f /etc/hardening-canary && /usr/local/sbin/hardening-aide-check --update")
