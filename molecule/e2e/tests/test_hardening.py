"""Host hardening on the whole site (roles/hardening, run by site.yml through
playbooks/hardening.yml): the SSH door of every host, knocked on from the control
node the way Ansible and Molecule reach the hosts (.config/molecule/config.yml:
through the lab's network namespace, with the lab's key). The scenario logs in as
deploy, a sudo user, as production does; root's key is still in the image, so a
refused root login is sshd's policy, not a missing key.

lynis is not measured here: roles/hardening's own scenario measures it.
fail2ban never bans the control node's address in the lab
(inventories/lab/group_vars/all/lab.yml), so the refused logins below cannot lock
the rest of verify out.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_e2e import INVENTORY, REPO, host

NETNS = os.environ.get("AIPL_LAB_NETNS", "aipl-lab")
KEY = REPO / ".cache" / "lab" / "ssh" / "id_ed25519"
# name -> address (ansible_host), from Molecule's inventory: every host of the scenario.
ADDRESSES = {name: hv["ansible_host"]
             for name, hv in yaml.safe_load(Path(INVENTORY).read_text())["all"]["hosts"].items()}
NAMES = sorted(ADDRESSES)


def ssh(user: str, name: str, *options: str, command: str = "true") -> subprocess.CompletedProcess:
    """Plain ssh from the control node to a scenario host, no configuration file, no
    agent, never a prompt (BatchMode): only the lab's key, through the lab's namespace."""
    argv = ["ssh", "-F", "none", "-i", str(KEY), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
            "-o", f"ProxyCommand=nsenter --net=/run/netns/{NETNS} socat - TCP:%h:%p",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            *options, f"{user}@{ADDRESSES[name]}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def sshd_settings(h) -> dict[str, str]:
    """sshd -T: keyword -> value (keywords listed once per value, like allowgroups, joined by spaces)."""
    settings: dict[str, str] = {}
    for line in h.check_output("sshd -T").splitlines():
        key, _, value = line.partition(" ")
        settings[key] = f"{settings[key]} {value}" if key in settings else value
    return settings


@pytest.mark.parametrize("name", NAMES)
def test_root_is_refused_even_with_its_key(name):
    h = host(name)
    assert h.file("/root/.ssh/authorized_keys").contains("aipl-lab"), "root's key is gone: this test would prove nothing"
    since = int(time.time()) - 1
    r = ssh("root", name)
    assert r.returncode == 255, (r.returncode, r.stdout, r.stderr)
    assert "Permission denied (publickey)" in r.stderr, r.stderr
    # sshd says why (LogLevel VERBOSE): AllowGroups (checked first) or PermitRootLogin no.
    why = re.compile(r"User root from \S+ not allowed because none of user's groups are listed in AllowGroups"
                     r"|ROOT LOGIN REFUSED")
    log = ""
    for _ in range(10):
        log = h.check_output(f"journalctl -u ssh.service --since @{since} --no-pager -o cat")
        if why.search(log):
            break
        time.sleep(1)
    assert why.search(log), log[-2000:]


@pytest.mark.parametrize("name", NAMES)
def test_a_password_login_is_refused_without_a_prompt(name):
    """A client that tries only a password: sshd offers nothing but publickey, so
    the client gives up without asking (no prompt: BatchMode, no password tries)."""
    r = ssh("deploy", name, "-v", "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=0")
    assert r.returncode == 255, (r.returncode, r.stdout, r.stderr)
    assert "Permission denied (publickey)" in r.stderr, r.stderr[-2000:]
    offered = re.findall(r"Authentications that can continue: (\S+)", r.stderr)
    assert offered and set(offered) == {"publickey"}, offered
    assert "Authorized access only" in r.stderr, "no legal banner before authentication"


@pytest.mark.parametrize("name", NAMES)
def test_deploy_logs_in_with_the_key_and_sudo_needs_no_password(name):
    r = ssh("deploy", name, command="id -un && sudo -n true && echo sudo-ok")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.split() == ["deploy", "sudo-ok"], r.stdout


@pytest.mark.parametrize("name", NAMES)
def test_sshd_and_fail2ban_as_configured(name):
    """The effective sshd settings and fail2ban's sshd jail on every host."""
    h = host(name)
    s = sshd_settings(h)
    assert s["permitrootlogin"] == "no", s["permitrootlogin"]
    assert s["passwordauthentication"] == "no" and s["kbdinteractiveauthentication"] == "no"
    assert s["authenticationmethods"] == "publickey"
    assert s["allowgroups"].split() == ["sudo", "deploy"], s["allowgroups"]  # sudo, and the login user's group
    assert h.service("fail2ban").is_running and h.service("fail2ban").is_enabled
    jail = h.check_output("fail2ban-client status sshd")
    assert "Status for the jail: sshd" in jail, jail
    # The control node's address (the lab namespace on the management network) is never banned.
    gateway = re.sub(r"[.][0-9]+$", ".1", ADDRESSES[name])
    ignored = h.check_output("fail2ban-client get sshd ignoreip")
    assert re.search(rf"\s{re.escape(gateway)}$", ignored, re.M), (gateway, ignored)
