#!/usr/bin/env bash
# Turns a debootstrapped tree into a lab host image: what a freshly installed
# Debian server has that minbase lacks, plus the lab's SSH key and apt relay.
# Usage: image-setup.sh ROOTFS SUITE ARCHIVE_URI SECURITY_URI APT_PROXY SSH_PUBKEY
# Runs as root on the machine, outside the tree: files are written under ROOTFS
# directly; only the image's own account tools run chrooted (they edit its
# /etc/passwd), and files get the image's numeric ids. Runs again on the same
# tree when the recipe changes (lab.py keeps the debootstrap): every step is
# idempotent.
set -euo pipefail
root=$1 suite=$2 archive=$3 security=$4 proxy=$5 pubkey=$6

cat > "$root/etc/apt/sources.list" <<SRC
deb $archive $suite main
deb $archive $suite-updates main
deb $security $suite-security main
SRC
# The lab's hosts reach apt only through the relay inside the lab's namespace.
printf 'Acquire::http::Proxy "%s";\n' "$proxy" > "$root/etc/apt/apt.conf.d/01lab-proxy"
printf 'APT::Install-Recommends "false";\n' > "$root/etc/apt/apt.conf.d/02lab-norecommends"
# No HTTP pipelining through the relay, and a timeout: an e2e converge once hung
# for 15 min in `apt-get update`, its http method holding a connection the
# cache had closed (CLOSE_WAIT). HTTP pipelining through proxies is a known
# source of such hangs: off here, with a timeout and retries.
printf 'Acquire::http::Pipeline-Depth "0";\nAcquire::http::Timeout "60";\nAcquire::Retries "3";\n' \
  > "$root/etc/apt/apt.conf.d/03lab-relay"
rm -f "$root"/var/cache/apt/archives/*.deb

# An empty machine-id: systemd makes one at first boot (a missing file makes it degraded).
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# SSH: key login for root; host keys made per host at first boot, not shared by the image.
# Ansible and the tests log in as the sudo user below, as production does
# (inventories/production.example: ansible_user deploy); root's key stays for
# the Molecule scenarios that still connect as root (tests/molecule/create.yml).
install -d -m 0700 "$root/root/.ssh"
printf '%s\n' "$pubkey" > "$root/root/.ssh/authorized_keys"
chmod 0600 "$root/root/.ssh/authorized_keys"
rm -f "$root"/etc/ssh/ssh_host_*
install -d "$root/etc/systemd/system/ssh.service.d"
cat > "$root/etc/systemd/system/ssh.service.d/lab-hostkeys.conf" <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT
ln -sf /lib/systemd/system/ssh.service "$root/etc/systemd/system/multi-user.target.wants/ssh.service"

# The operator account: a normal user in group sudo, password locked (keys
# only), sudo without a password (Ansible's become). sudo is in lab.py's
# debootstrap --include.
user=deploy
if ! chroot "$root" id -u "$user" >/dev/null 2>&1; then
  chroot "$root" useradd --create-home --shell /bin/bash --user-group --groups sudo "$user"
fi
chroot "$root" usermod --lock "$user"
uid=$(chroot "$root" id -u "$user")
gid=$(chroot "$root" id -g "$user")
home=$root/home/$user
install -d -m 0700 -o "$uid" -g "$gid" "$home/.ssh"
printf '%s\n' "$pubkey" > "$home/.ssh/authorized_keys"
chown "$uid:$gid" "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"
printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$user" > "$root/etc/sudoers.d/$user"
chown 0:0 "$root/etc/sudoers.d/$user"
chmod 0440 "$root/etc/sudoers.d/$user"
# The image's own visudo checks the drop-in (a broken one would disable sudo).
if [[ -x $root/usr/sbin/visudo ]]; then
  chroot "$root" /usr/sbin/visudo -cqf "/etc/sudoers.d/$user"
fi

# Units that have no meaning in a container.
for unit in getty@tty1.service console-getty.service systemd-firstboot.service \
            systemd-remount-fs.service sys-kernel-config.mount sys-kernel-debug.mount \
            sys-kernel-tracing.mount systemd-udevd.service systemd-udev-trigger.service \
            systemd-modules-load.service systemd-ask-password-console.path \
            systemd-ask-password-wall.path; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
