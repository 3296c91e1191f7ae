"""What the common role promises, checked on the converged lab hosts."""


def test_base_packages(host):
    for pkg in ("acl", "ca-certificates", "curl", "locales", "tzdata", "systemd-timesyncd"):
        assert host.package(pkg).is_installed, pkg


def test_a_successful_apt_update_is_recorded_for_cache_valid_time(host):
    hook = host.file("/etc/apt/apt.conf.d/15ai-platform-update-stamp")
    assert hook.user == "root" and hook.mode == 0o644
    assert "update-success-stamp" in host.check_output("apt-config dump")
    stamp = "/var/lib/apt/periodic/update-success-stamp"
    # An update from an empty local repository into a scratch lists folder: no
    # network, and the host's own lists are left as they are. It succeeds, so the
    # hook must run. (With no source at all apt runs no hook.)
    update = host.run(
        f"rm -f {stamp}; d=$(mktemp -d); chmod 755 $d; mkdir -p $d/lists/partial $d/repo; : > $d/repo/Packages; "
        'echo "deb [trusted=yes] file:$d/repo ./" > $d/src.list; '
        "apt-get update -qq -o Dir::Etc::SourceList=$d/src.list -o Dir::Etc::SourceParts=$d/repo "
        "-o Dir::State::Lists=$d/lists; rc=$?; rm -rf $d; exit $rc"
    )
    assert update.rc == 0, update.stderr
    assert host.file(stamp).exists


def test_time_zone(host):
    assert host.file("/etc/localtime").linked_to.endswith("/Europe/Berlin")
    assert host.check_output("timedatectl show -p Timezone --value") == "Europe/Berlin"
    assert host.check_output("date +%Z") in ("CET", "CEST")


def test_locales(host):
    assert "LANG=C.UTF-8" in host.file("/etc/default/locale").content_string
    assert "en_US.utf8" in host.check_output("locale -a")


def test_time_sync_configured_and_enabled(host):
    conf = host.file("/etc/systemd/timesyncd.conf.d/60-ai-platform.conf")
    assert "NTP=0.debian.pool.ntp.org" in conf.content_string
    assert host.service("systemd-timesyncd").is_enabled


def test_journald_persistent_with_limits(host):
    conf = host.file("/etc/systemd/journald.conf.d/60-ai-platform.conf").content_string
    assert "Storage=persistent" in conf
    assert "SystemMaxUse=1G" in conf
    assert host.file("/var/log/journal").is_directory
    # journald was restarted with the drop-in: it writes to the persistent journal now.
    host.run("logger -t aipl-molecule persistent-check")
    out = host.check_output("journalctl --header -q | grep -c '^File path: /var/log/journal' || true")
    assert int(out) >= 1
    assert host.run("journalctl -t aipl-molecule --no-pager -q").stdout.count("persistent-check") >= 1


def test_sysctl_file(host):
    f = host.file("/etc/sysctl.d/60-ai-platform.conf")
    assert f.mode == 0o644
    pairs = [line.split("=", 1) for line in f.content_string.split("\n") if "=" in line and not line.startswith("#")]
    lines = {k.strip(): v.strip() for k, v in pairs}
    assert lines["vm.swappiness"] == "10"
    assert lines["net.ipv4.tcp_fin_timeout"] == "30"
    # Every key names a parameter the kernel knows (a typo would be silently ignored at boot).
    for key in lines:
        assert host.run(f"sysctl -n {key}").rc == 0, key


def test_no_failed_units(host):
    assert host.run("systemctl --failed --no-legend --plain").stdout.strip() == ""
