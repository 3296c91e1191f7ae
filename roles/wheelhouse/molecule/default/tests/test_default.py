"""The venv holds the pinned packages, built for the host's own Python."""


def test_packages_import_in_venv(host):
    py = "/opt/moltest/venv/bin/python"
    out = host.check_output(f"{py} -c 'import markupsafe, six, sys; "
                            "print(markupsafe.__version__, six.__version__, sys.version_info[:2])'")
    assert out.startswith("3.0.2 1.17.0")
    # The compiled speedups module is the one for this interpreter (a wrong wheel would not load).
    host_py = host.check_output("python3 -c 'import sys; print(\"%d%d\" % sys.version_info[:2])'")
    so = host.check_output(f"{py} -c 'import markupsafe._speedups as s; print(s.__file__)'")
    assert f"cpython-{host_py}" in so


def test_installed_from_the_hosts_own_wheelhouse(host):
    ver = host.check_output("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
    tag = "cp" + ver.replace(".", "")
    houses = host.check_output("ls /var/cache/ai-platform/wheelhouse/").split()
    # moltest (two requests: two archives) and moltest-extra, each for this Python.
    assert len(houses) == 3 and all(h.startswith((f"moltest-py{ver}-", f"moltest-extra-py{ver}-")) for h in houses)
    main = host.check_output("grep -l markupsafe /var/cache/ai-platform/wheelhouse/*/requirements.txt").split()
    assert len(main) == 1
    wheels = host.check_output(f"ls {main[0].rsplit('/', 1)[0]}").split()
    assert any(w.lower().startswith("markupsafe-3.0.2-") and f"-{tag}-" in w for w in wheels), wheels
    assert "requirements.txt" in wheels


def test_markers_follow_the_hosts_python(host):
    """A requirement whose marker holds only for the host's patch level is installed there."""
    full = host.check_output("python3 -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])'")
    needed = tuple(int(x) for x in full.split(".")) < (3, 11, 3)
    got = host.run("/opt/moltest/venv/bin/python -c 'import async_timeout'")
    assert (got.rc == 0) == needed, (full, got.stderr)


def _inode(host, path):
    return host.check_output(f"stat -c %i {path}")


def test_a_venv_seeded_from_the_same_wheelhouse_is_a_hard_linked_copy(host):
    site = host.check_output("/opt/moltest/venv2/bin/python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'")
    assert site.startswith("/opt/moltest/venv2/")
    seed_site = site.replace("/venv2/", "/venv/")
    # The packages' files are the seed's (one copy on disk), found by the new venv in its own path.
    assert _inode(host, f"{site}/six.py") == _inode(host, f"{seed_site}/six.py")
    out = host.check_output("/opt/moltest/venv2/bin/python -c 'import markupsafe, six; print(markupsafe.__file__, six.__file__)'")
    assert out.count("/opt/moltest/venv2/") == 2, out
    # Paths that named the seed name the new venv: scripts' #! lines and pyvenv.cfg.
    assert host.file("/opt/moltest/venv2/bin/pip").content_string.startswith("#!/opt/moltest/venv2/bin/python")
    assert "/opt/moltest/venv2" in host.file("/opt/moltest/venv2/pyvenv.cfg").content_string
    assert "/opt/moltest/venv/" not in host.check_output("grep -rsh '^#!' /opt/moltest/venv2/bin/ || true") + "\n"
    # The other wheelhouse's package went with its marker; the seed still has both.
    assert host.run("/opt/moltest/venv2/bin/python -c 'import idna'").rc != 0
    assert host.run("/opt/moltest/venv/bin/python -c 'import idna'").rc == 0
    assert not host.file("/opt/moltest/venv2/.wheelhouse-moltest-extra").exists
    assert host.file("/opt/moltest/venv2/.wheelhouse-moltest").content_string == \
        host.file("/opt/moltest/venv/.wheelhouse-moltest").content_string
    host.run_test("/opt/moltest/venv2/bin/python -m pip check --disable-pip-version-check")


def test_a_seed_from_another_wheelhouse_is_not_used(host):
    site3 = "/opt/moltest/venv3/lib/python3*/site-packages"
    site = "/opt/moltest/venv/lib/python3*/site-packages"
    assert _inode(host, f"{site3}/six.py") != _inode(host, f"{site}/six.py")
    assert host.run("/opt/moltest/venv3/bin/python -c 'import markupsafe'").rc != 0
    assert host.file("/opt/moltest/venv3/.wheelhouse-moltest").content_string != \
        host.file("/opt/moltest/venv/.wheelhouse-moltest").content_string
