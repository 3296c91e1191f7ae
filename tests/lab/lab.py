#!/usr/bin/env python3
"""The lab: real systemd hosts on one machine, for the tests and the main job.

Every lab host is a container of a private Docker engine whose PID 1 is
systemd, booted from a Debian root filesystem that debootstrap made from this
machine's configured apt mirror. The engine, the hosts, their bridge and the
apt relay live in a network namespace that this tool creates (``aipl-lab``);
nothing is added to the machine's own network namespace and the machine's
/sys/fs/cgroup is never mounted into a host.

    engine                 private netns + apt cache relay + dockerd
    image [NAME...]        build the base images that are missing (debian12, debian13)
    up [-i INVENTORY]      boot every host of an inventory at its ansible_host address
    down                   remove hosts, engine, relay and namespace (idempotent)
    status                 what runs
    stop|start|cut|heal H  power a host off/on, cut it off the network / reconnect it
    block H PEER PORT      drop TCP between H and PEER's PORT, both ways (unblock H: all)
    kill H                 pull a host's power cord (SIGKILL to all its processes)
    exec H -- CMD          run a command on a host

The inventory is the source of truth: a host's address is its ``ansible_host``,
its image ``lab_image`` (default debian12) and its network ``lab_network``. A
``private_address`` on another /24 puts the host on a second network too: the
first one is then its management network (SSH, the default route).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Resolved: a worktree whose .cache links to another checkout's must not hand its own
# path to the long-running helpers (removing the worktree would pull their folders away).
CACHE = Path(os.environ.get("AIPL_LAB_CACHE", REPO / ".cache" / "lab")).resolve()
NETNS = os.environ.get("AIPL_LAB_NETNS", "aipl-lab")
RUN = Path("/run") / NETNS
DOCKER_SOCK = RUN / "docker.sock"
DOCKER_HOST = f"unix://{DOCKER_SOCK}"
# The address, inside the namespace, where hosts find the apt cache relay.
SERVICE_ADDR = "10.254.254.1"
APT_PORT = 3142
ACNG_PORT = int(os.environ.get("AIPL_LAB_ACNG_PORT", "3152"))
SSH_KEY = CACHE / "ssh" / "id_ed25519"
LABEL = "aipl-lab"

IMAGES = {
    "debian12": {"suite": "bookworm"},
    "debian13": {"suite": "trixie"},
}
# Enough for Ansible (python3, python3-apt, sudo), SSH and systemd; roles install the rest.
INCLUDE = "systemd,systemd-sysv,dbus,python3,python3-apt,openssh-server,sudo,iproute2,ca-certificates"
# Flags that boot systemd cleanly here without touching the machine's cgroup mounts
# (see shared notes): a private cgroup namespace and a tmpfs over /sys/fs/cgroup.
HOST_FLAGS = [
    "--cgroupns=private", "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
    # ufw/firewalld program netfilter in the host's own network namespace.
    "--cap-add", "NET_ADMIN",
    # root on a machine may read every process's /proc/PID/exe; Docker's default set
    # drops SYS_PTRACE, and without it needrestart (the hardening role) cannot see the
    # services that run as other users, so it would never consider restarting them.
    "--cap-add", "SYS_PTRACE",
    "--security-opt", "apparmor=unconfined",
    "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/sys/fs/cgroup",
    "--stop-signal", "SIGRTMIN+3",  # systemd's clean shutdown
]


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], check: bool = True, capture: bool = False, **kw) -> subprocess.CompletedProcess:
    if capture:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(cmd, check=check, text=True, **kw)


def docker(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, DOCKER_HOST=DOCKER_HOST)
    return run([docker_cli(), *args], check=check, capture=capture, env=env)


def docker_cli() -> str:
    # The engine's own client (Debian's docker.io) matches its API version.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def in_netns(cmd: list[str]) -> list[str]:
    # nsenter changes only the network namespace (ip netns exec would also
    # remount /sys, hiding the cgroup mounts dockerd needs).
    return ["nsenter", f"--net=/run/netns/{NETNS}", *cmd]


def pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def spawn(name: str, cmd: list[str]) -> None:
    """Start a long-running helper in the background and remember its PID."""
    pidfile = RUN / f"{name}.pid"
    if pid_alive(pidfile):
        return
    logf = open(CACHE / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    pidfile.write_text(str(proc.pid))


def stop_pidfile(name: str, timeout: float = 20) -> None:
    pidfile = RUN / f"{name}.pid"
    pid = pid_alive(pidfile)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline and pid_alive(pidfile):
            time.sleep(0.2)
            try:  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if pid_alive(pidfile):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


# ---------------------------------------------------------------- apt mirror

def apt_sources() -> dict[str, str]:
    """Read the machine's configured Debian archive and security URIs (never hard-coded)."""
    text = ""
    for f in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        try:
            text += "\n" + Path(f).read_text()
        except OSError:
            pass
    found: dict[str, str] = {}
    # one-line format: deb URI SUITE COMPONENTS
    for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
        uri, suite = m.group(1), m.group(2)
        if re.match(r"^(bookworm|trixie|bullseye|stable)", suite):
            found.setdefault("security" if suite.endswith("-security") else "archive", uri)
    # deb822 format
    for stanza in re.split(r"\n\s*\n", text):
        uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
        suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
        if not uris or not suites or not re.search(r"^Types:.*\bdeb\b", stanza, re.M):
            continue
        for suite in suites.group(1).split():
            if re.match(r"^(bookworm|trixie|bullseye|stable)", suite):
                key = "security" if suite.endswith("-security") else "archive"
                found.setdefault(key, uris.group(1))
    if "archive" not in found:
        sys.exit("lab: no Debian archive found in /etc/apt/sources.list*; cannot build images")
    found.setdefault("security", found["archive"].rstrip("/") + "-security")
    return {k: v.rstrip("/") for k, v in found.items()}


# ---------------------------------------------------------------- engine

def netns_exists() -> bool:
    return Path(f"/run/netns/{NETNS}").exists()


def locked(fn):
    """Serialise with a lock file, so that parallel runs start one engine and build an image once."""
    def wrapper(*args, **kw):
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(CACHE / "engine.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return fn(*args, **kw)
    return wrapper


@locked
def engine_up() -> None:
    _engine_up()


def _engine_up() -> None:
    for d in (RUN, CACHE / "logs", CACHE / "acng" / "cache", CACHE / "acng" / "conf", CACHE / "docker"):
        d.mkdir(parents=True, exist_ok=True)
    if not netns_exists():
        log(f"creating network namespace {NETNS}")
        run(["ip", "netns", "add", NETNS])
    run(["ip", "-n", NETNS, "link", "set", "lo", "up"])
    # The namespace's own service address (the apt relay listens there).
    if SERVICE_ADDR not in run(["ip", "-n", NETNS, "addr", "show", "lo"], capture=True).stdout:
        run(["ip", "-n", NETNS, "addr", "add", f"{SERVICE_ADDR}/32", "dev", "lo"])
    acng_up()
    dockerd_up()


def acng_up() -> None:
    conf = CACHE / "acng" / "conf"
    for f in glob.glob("/etc/apt-cacher-ng/*"):
        if os.path.isfile(f) and not os.path.basename(f).startswith("backends_debian"):
            shutil.copy(f, conf)
    src = apt_sources()
    # The relay must know the configured mirror, or it answers "503 Host not found".
    (conf / "backends_debian").write_text(src["archive"] + "/\n")
    (conf / "zz_lab.conf").write_text("")
    sock = RUN / "apt.sock"
    spawn("acng", ["apt-cacher-ng", "-c", str(conf), "ForeGround=1", f"Port={ACNG_PORT}",
                   "BindAddress=127.0.0.1", f"CacheDir={CACHE / 'acng' / 'cache'}",
                   f"LogDir={CACHE / 'logs'}", f"PidFile={RUN / 'acng.real.pid'}",
                   f"SocketPath={RUN / 'acng.ctl'}", "ExThreshold=30"])
    # namespace :3142 -> unix socket -> 127.0.0.1:ACNG_PORT
    spawn("relay-out", ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600",
                        f"TCP:127.0.0.1:{ACNG_PORT}"])
    spawn("relay-in", in_netns(["socat", f"TCP-LISTEN:{APT_PORT},bind={SERVICE_ADDR},fork,reuseaddr",
                                f"UNIX-CONNECT:{sock}"]))


def dockerd_up() -> None:
    if pid_alive(RUN / "dockerd.pid") and docker("version", check=False).returncode == 0:
        return
    cfg = RUN / "daemon.json"
    cfg.write_text(json.dumps({"log-driver": "json-file", "log-opts": {"max-size": "10m"}}))
    log("starting the lab's Docker engine")
    spawn("dockerd", in_netns([
        "dockerd", "--config-file", str(cfg), "--data-root", str(CACHE / "docker"),
        "--exec-root", str(RUN / "docker"), "--host", DOCKER_HOST, "--pidfile", str(RUN / "dockerd.real.pid"),
        "--cgroup-parent", NETNS, "--bridge", "none", "--userland-proxy=false",
        "--storage-driver", "overlay2"]))
    for _ in range(150):
        if docker("version", check=False).returncode == 0:
            return
        time.sleep(0.2)
    sys.exit(f"lab: dockerd did not answer; see {CACHE / 'logs' / 'dockerd.log'}")


def engine_down() -> None:
    try:
        ns_ino = os.stat(f"/run/netns/{NETNS}").st_ino
    except OSError:
        ns_ino = None
    if DOCKER_SOCK.exists() and pid_alive(RUN / "dockerd.pid"):
        ids = docker("ps", "-aq", check=False).stdout.split()
        if ids:
            log(f"removing {len(ids)} lab host(s)")
            docker("rm", "-f", *ids, check=False)
        nets = [n for n in docker("network", "ls", "-q", "--filter", "type=custom", check=False).stdout.split()]
        if nets:
            docker("network", "rm", *nets, check=False)
    for name in ("dockerd", "relay-in", "relay-out", "acng"):
        stop_pidfile(name)
    # Whatever the engine left mounted below its own folders.
    for mnt in reversed(mounts_under([str(RUN), str(CACHE / "docker")])):
        run(["umount", "-l", mnt], check=False)
    if netns_exists():
        run(["ip", "netns", "del", NETNS], check=False)
    for cg in glob.glob(f"/sys/fs/cgroup/*/{NETNS}") + glob.glob(f"/sys/fs/cgroup/unified/{NETNS}"):
        remove_cgroup_tree(Path(cg))
    shutil.rmtree(RUN, ignore_errors=True)
    left = leftovers(ns_ino)
    if left:
        sys.exit("lab: down left things behind:\n  " + "\n  ".join(left))
    log("down: no namespace, mount, cgroup or process of the lab is left")


def leftovers(ns_ino: int | None) -> list[str]:
    """Anything of the lab's still on the machine (for `down` to prove it cleaned up)."""
    left = []
    if netns_exists():
        left.append(f"network namespace {NETNS}")
    left += [f"mount {m}" for m in mounts_under([str(RUN), str(CACHE / "docker"), str(CACHE / "rootfs")])]
    left += [f"cgroup {c}" for c in glob.glob(f"/sys/fs/cgroup/*/{NETNS}")]
    for name in ("dockerd", "relay-in", "relay-out", "acng"):
        if pid_alive(RUN / f"{name}.pid"):
            left.append(f"process {name}")
    # Processes still in the namespace (nsenter'd helpers, containerd shims).
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if ns_ino and os.stat(f"/proc/{pid}/ns/net").st_ino == ns_ino:
                left.append(f"process {pid} in the lab namespace")
        except OSError:
            pass
    return left


def mounts_under(prefixes: list[str]) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4]
        if any(mnt == p or mnt.startswith(p + "/") for p in prefixes):
            out.append(mnt)
    return out


def remove_cgroup_tree(path: Path) -> None:
    try:
        children = [p for p in path.rglob("*") if p.is_dir()]
    except FileNotFoundError:  # removed meanwhile
        children = []
    for child in sorted(children, key=lambda p: -len(p.parts)):
        try:
            child.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


# ---------------------------------------------------------------- images

def ensure_ssh_key() -> str:
    if not SSH_KEY.exists():
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "aipl-lab", "-f", str(SSH_KEY)])
    return Path(str(SSH_KEY) + ".pub").read_text().strip()


def image_recipe(name: str) -> str:
    """A hash of everything an image is made from: rebuilt only when it changes."""
    h = hashlib.sha256()
    h.update(json.dumps([IMAGES[name], INCLUDE, apt_sources(), SERVICE_ADDR, APT_PORT]).encode())
    h.update(ensure_ssh_key().encode())
    h.update(Path(__file__).with_name("image-setup.sh").read_bytes())
    return h.hexdigest()[:16]


@locked
def image_build(name: str, force: bool = False) -> None:
    tag = f"{LABEL}/{name}:latest"
    recipe = image_recipe(name)
    have = docker("image", "inspect", "--format", '{{ index .Config.Labels "recipe" }}', tag, check=False)
    if have.returncode == 0 and have.stdout.strip() == recipe and not force:
        return
    suite = IMAGES[name]["suite"]
    src = apt_sources()
    rootfs = CACHE / "rootfs" / name
    t0 = time.time()
    stamp = rootfs.with_suffix(".debootstrap-ok")
    if not stamp.exists() or force:
        for mnt in reversed(mounts_under([str(rootfs)])):  # a debootstrap that died leaves /proc mounted
            run(["umount", "-l", mnt])
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        log(f"debootstrap {suite} into {rootfs} (through the apt cache)")
        run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", suite, str(rootfs),
             src["archive"]], env=dict(os.environ, http_proxy=f"http://127.0.0.1:{ACNG_PORT}"),
            stdout=subprocess.DEVNULL)
        stamp.write_text(suite)
    log(f"configuring {name}")
    run(["bash", str(Path(__file__).with_name("image-setup.sh")), str(rootfs), suite, src["archive"],
         src["security"], f"http://{SERVICE_ADDR}:{APT_PORT}", ensure_ssh_key()])
    if mounts_under([str(rootfs)]):
        sys.exit(f"lab: something is still mounted below {rootfs}; not packing it")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    env = dict(os.environ, DOCKER_HOST=DOCKER_HOST)
    run([docker_cli(), "import", "--change", 'CMD ["/sbin/init"]',
         "--change", "ENV container=docker", "--change", f"LABEL recipe={recipe}",
         "-", tag], stdin=tar.stdout, env=env, stdout=subprocess.DEVNULL)
    tar.wait()
    log(f"image {tag} ready in {time.time() - t0:.0f} s")


# ---------------------------------------------------------------- hosts

def load_inventory(path: str) -> dict[str, dict]:
    """Hosts with their variables, through ansible-inventory (any inventory format works)."""
    exe = REPO / ".venv" / "bin" / "ansible-inventory"
    out = run([str(exe) if exe.exists() else "ansible-inventory", "-i", path, "--list"], capture=True,
              env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))).stdout
    data = json.loads(out)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    return {h: v for h, v in hostvars.items() if v.get("ansible_host")}


def ensure_network(name: str, subnet: str) -> None:
    if docker("network", "inspect", name, check=False).returncode == 0:
        return
    gw = subnet.rsplit(".", 1)[0] + ".1"
    docker("network", "create", "--driver", "bridge", "--subnet", subnet, "--gateway", gw,
           "--label", LABEL, "-o", "com.docker.network.bridge.name=" + ("br-" + name[4:])[:15], name)


def host_up(name: str, hv: dict) -> None:
    image = f"{LABEL}/{hv.get('lab_image', 'debian12')}:latest"
    prefix = ".".join(hv["ansible_host"].split(".")[:3])
    subnet = hv.get("lab_subnet", prefix + ".0/24")
    net = hv.get("lab_network", "lab-" + prefix.replace(".", "-"))
    ensure_network(net, subnet)
    state = docker("inspect", "--format", "{{.State.Running}}", name, check=False)
    if state.returncode == 0:
        if state.stdout.strip() != "true":
            docker("start", name)
        return
    # AIPL_LAB_CPU_SHARES: the host's CPU weight against the lab's other hosts (1024
    # by default); the test suite gives the hosts of its longest scenario more.
    shares = os.environ.get("AIPL_LAB_CPU_SHARES", "")
    # A failed start is tried twice more: once, a minute after the engine started, an
    # e2e host's start failed inside containerd (exit 125; the engine logged "failed
    # to delete container from containerd: no such container"), and the same suite
    # passed on the next run. Docker's own message is printed for every failure.
    # Another time, the network was gone: another scenario's `rm` had removed every
    # empty lab network (now `rm` removes only its own hosts' networks).
    for attempt in range(1, 4):
        ensure_network(net, subnet)  # again: it may have been removed since, as empty
        r = docker("run", "-d", "--name", name, "--hostname", name, "--label", LABEL,
                   "--network", net, "--ip", hv["ansible_host"], *HOST_FLAGS,
                   *(["--cpu-shares", shares] if shares else []),
                   "--memory", str(hv.get("lab_memory", "2g")), image, check=False)
        if r.returncode == 0:
            private_network(name, hv)
            return
        msg = (r.stderr or r.stdout or "").strip()
        print(f"lab: {name}: docker run failed (attempt {attempt}, exit {r.returncode}): {msg}",
              file=sys.stderr)
        docker("rm", "-f", name, check=False)
        time.sleep(2 * attempt)
    sys.exit(f"lab: {name}: could not start the host: {msg}")


def private_network(name: str, hv: dict) -> None:
    """Attach the host to the network of its private_address when that is another /24."""
    addr = hv.get("private_address", "")
    prefix = ".".join(addr.split(".")[:3])
    if not addr or prefix == ".".join(hv["ansible_host"].split(".")[:3]):
        return
    net = "lab-" + prefix.replace(".", "-")
    ensure_network(net, prefix + ".0/24")
    docker("network", "connect", "--ip", addr, net, name)


def wait_ready(names: list[str], timeout: float = 300) -> None:
    """Wait until systemd has finished booting every host; a degraded boot is an error."""
    deadline = time.time() + timeout
    pending = set(names)
    while pending and time.time() < deadline:
        for n in sorted(pending):
            state = docker("exec", n, "systemctl", "is-system-running", check=False).stdout.strip()
            if state == "running":
                pending.discard(n)
            elif state == "degraded":
                failed = docker("exec", n, "systemctl", "--failed", "--no-legend", check=False).stdout
                sys.exit(f"lab: {n} booted degraded:\n{failed.strip()}")
        time.sleep(0.3)
    if pending:
        sys.exit(f"lab: hosts not booted in {timeout:.0f} s: {' '.join(sorted(pending))}")


def prime_apt(names: list[str], tries: int = 3, timeout: int = 90) -> None:
    """apt-get update on every new host, each try bounded in time. Twice in about twenty
    runs, the first update after boot hung for good: apt's http method kept a relay
    connection the other side had closed (CLOSE_WAIT), untouched by Acquire::http::Timeout.
    With fresh lists, the roles' own update (cache_valid_time) is skipped."""
    def prime(n: str) -> str:
        for i in range(1, tries + 1):
            r = docker("exec", n, "timeout", "-k", "5", str(timeout), "apt-get", "update", "-qq", check=False)
            if r.returncode == 0:
                return ""
            log(f"{n}: apt-get update try {i} failed (exit {r.returncode}){', again' if i < tries else ''}")
        return n
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        failed = [n for n in pool.map(prime, names) if n]
    if failed:
        log(f"apt lists not primed on {' '.join(failed)}: the roles' own apt-get update will try")


def load_spec(spec: str) -> dict[str, dict]:
    """Hosts from a JSON list of {name, address, image, memory, private_address} (Molecule's platforms)."""
    out = {}
    for p in json.loads(spec):
        hv = {"ansible_host": p["address"], "lab_image": p.get("image", "debian12")}
        if "private_address" in p:
            hv["private_address"] = p["private_address"]
        if "memory" in p:
            hv["lab_memory"] = p["memory"]
        out[p["name"]] = hv
    return out


def cmd_up(args) -> None:
    t0 = time.time()
    engine_up()
    hosts = load_spec(args.spec) if args.spec else load_inventory(args.inventory)
    for img in sorted({hv.get("lab_image", "debian12") for hv in hosts.values()}):
        image_build(img)
    t1 = time.time()
    for name, hv in sorted(hosts.items()):
        host_up(name, hv)
    wait_ready(list(hosts))
    t2 = time.time()
    prime_apt(list(hosts))
    log(f"{len(hosts)} host(s) up (images {t1 - t0:.1f} s, boot {t2 - t1:.1f} s, apt lists {time.time() - t2:.1f} s)")


def cmd_rm(args) -> None:
    if not pid_alive(RUN / "dockerd.pid"):
        return
    nets = set()
    for n in args.hosts:
        cut = CACHE / "cut" / n
        nets.add(json.loads(cut.read_text())["net"] if cut.exists()
                 else container_ip_net(n, missing_ok=True)[0])
        r = docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", n, check=False)
        if r.returncode == 0:
            nets.update(json.loads(r.stdout) or {})  # a private network too
        docker("rm", "-f", "-v", n, check=False)
        cut.unlink(missing_ok=True)
    # The networks of these hosts that no host uses any more. Only theirs: test scenarios
    # run side by side, and another scenario's network is empty while its first host starts.
    for net in sorted(nets - {""}):
        r = docker("network", "inspect", net, check=False)
        if r.returncode == 0 and not json.loads(r.stdout)[0]["Containers"]:
            docker("network", "rm", net, check=False)


def cmd_status(_args) -> None:
    print(f"namespace {NETNS}: {'present' if netns_exists() else 'absent'}")
    for name in ("acng", "relay-out", "relay-in", "dockerd"):
        pid = pid_alive(RUN / f"{name}.pid")
        print(f"{name}: {'pid ' + str(pid) if pid else 'stopped'}")
    if pid_alive(RUN / "dockerd.pid"):
        print(docker("ps", "-a", "--format", "table {{.Names}}\t{{.Status}}\t{{.Image}}").stdout)


def container_ip_net(name: str, missing_ok: bool = False) -> tuple[str, str]:
    r = docker("inspect", name, check=not missing_ok)
    if r.returncode != 0:
        return "", ""
    info = json.loads(r.stdout)[0]
    label_net = info["Config"]["Labels"].get("lab.network")
    nets = info["NetworkSettings"]["Networks"]
    if nets:
        net, cfg = next(iter(nets.items()))
        return net, (cfg.get("IPAMConfig") or {}).get("IPv4Address") or cfg["IPAddress"]
    return label_net or "", ""


def cmd_host(args) -> None:
    n = args.host
    if args.action == "stop":
        docker("stop", "-t", "30", n)
    elif args.action == "kill":
        docker("kill", n)  # SIGKILL to every process at once: the power cord pulled
    elif args.action == "start":
        docker("start", n)
        wait_ready([n])
    elif args.action == "cut":
        net, ip = container_ip_net(n)
        if not net:
            return
        state = CACHE / "cut"
        state.mkdir(exist_ok=True)
        (state / n).write_text(json.dumps({"net": net, "ip": ip}))
        docker("network", "disconnect", net, n)
    elif args.action == "heal":
        f = CACHE / "cut" / n
        if f.exists():
            s = json.loads(f.read_text())
            docker("network", "connect", "--ip", s["ip"], s["net"], n)
            f.unlink()


BLOCK_CHAIN = "LAB-BLOCK"


def host_netns_run(name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """A command in a lab host's own network namespace (its container's, not the machine's),
    run with the machine's tools: the hosts may not change their own network (no CAP_NET_ADMIN)."""
    pid = docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip()
    if not pid.isdigit() or pid == "0":
        sys.exit(f"lab: {name} is not running")
    return run(["nsenter", f"--net=/proc/{pid}/ns/net", *cmd], check=check, capture=True)


def cmd_block(args) -> None:
    n = args.host
    if host_netns_run(n, "iptables", "-S", BLOCK_CHAIN, check=False).returncode != 0:
        host_netns_run(n, "iptables", "-N", BLOCK_CHAIN)
        host_netns_run(n, "iptables", "-I", "INPUT", "-j", BLOCK_CHAIN)
        host_netns_run(n, "iptables", "-I", "OUTPUT", "-j", BLOCK_CHAIN)
    port = str(int(args.port))
    host_netns_run(n, "iptables", "-A", BLOCK_CHAIN, "-d", args.peer, "-p", "tcp", "--dport", port, "-j", "DROP")
    host_netns_run(n, "iptables", "-A", BLOCK_CHAIN, "-s", args.peer, "-p", "tcp", "--sport", port, "-j", "DROP")


def cmd_unblock(args) -> None:
    n = args.host
    if host_netns_run(n, "iptables", "-S", BLOCK_CHAIN, check=False).returncode != 0:
        return
    for hook in ("INPUT", "OUTPUT"):
        host_netns_run(n, "iptables", "-D", hook, "-j", BLOCK_CHAIN)
    host_netns_run(n, "iptables", "-F", BLOCK_CHAIN)
    host_netns_run(n, "iptables", "-X", BLOCK_CHAIN)


def cmd_exec(args) -> None:
    env = dict(os.environ, DOCKER_HOST=DOCKER_HOST)
    sys.exit(subprocess.run([docker_cli(), "exec", "-i", args.host, *args.cmd], env=env).returncode)


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("lab: needs root (network namespaces, debootstrap, a Docker engine)")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("engine").set_defaults(fn=lambda a: engine_up())
    pi = sub.add_parser("image")
    pi.add_argument("names", nargs="*", default=list(IMAGES))
    pi.add_argument("--force", action="store_true")
    pi.set_defaults(fn=lambda a: (engine_up(), [image_build(n, a.force) for n in a.names]))
    pu = sub.add_parser("up")
    pu.add_argument("-i", "--inventory", default=str(REPO / "inventories" / "lab"))
    pu.add_argument("--spec", help="JSON list of hosts instead of an inventory")
    pu.set_defaults(fn=cmd_up)
    pr = sub.add_parser("rm", help="remove hosts (and networks left without hosts)")
    pr.add_argument("hosts", nargs="+")
    pr.set_defaults(fn=cmd_rm)
    sub.add_parser("down").set_defaults(fn=lambda a: engine_down())
    sub.add_parser("status").set_defaults(fn=cmd_status)
    for action in ("stop", "kill", "start", "cut", "heal"):
        ph = sub.add_parser(action)
        ph.add_argument("host")
        ph.set_defaults(fn=cmd_host, action=action)
    pb = sub.add_parser("block", help="drop TCP between a host and PEER:PORT, both ways")
    pb.add_argument("host")
    pb.add_argument("peer")
    pb.add_argument("port")
    pb.set_defaults(fn=cmd_block)
    pub = sub.add_parser("unblock", help="remove every block of a host")
    pub.add_argument("host")
    pub.set_defaults(fn=cmd_unblock)
    pe = sub.add_parser("exec")
    pe.add_argument("host")
    pe.add_argument("cmd", nargs=argparse.REMAINDER)
    pe.set_defaults(fn=cmd_exec)
    sub.add_parser("env", help="print the DOCKER_HOST export for molecule").set_defaults(
        fn=lambda a: print(f"export DOCKER_HOST={DOCKER_HOST}"))
    args = p.parse_args()
    if getattr(args, "cmd", None) == "exec" and args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    args.fn(args)


if __name__ == "__main__":
    main()
