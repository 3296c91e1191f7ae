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
    assert len(houses) == 1 and houses[0].startswith(f"moltest-py{ver}-")
    wheels = host.check_output(f"ls /var/cache/ai-platform/wheelhouse/{houses[0]}").split()
    assert any(w.lower().startswith("markupsafe-3.0.2-") and f"-{tag}-" in w for w in wheels), wheels
    assert "requirements.txt" in wheels


def test_markers_follow_the_hosts_python(host):
    """A requirement whose marker holds only for the host's patch level is installed there."""
    full = host.check_output("python3 -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])'")
    needed = tuple(int(x) for x in full.split(".")) < (3, 11, 3)
    got = host.run("/opt/moltest/venv/bin/python -c 'import async_timeout'")
    assert (got.rc == 0) == needed, (full, got.stderr)
