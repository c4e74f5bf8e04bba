#!/usr/bin/env bash
# sudo make test-service: the host agent under a real systemd (issue 15), in a Debian 12 guest
# whose PID 1 is systemd, booted by QEMU (software emulation), driven over ssh.
#
#   sudo make test-service                     (VM_DIR=vm; the image is built once, ~5 min)
#   sudo VM_DIR=/tmp/vm bash vagrant/agent-systemd-check.sh
#
# In the guest, as a user with sudo, from a copy of this checkout (the working tree as it is):
#   1. `sudo make install`: files and modes, unit enabled and active, a process run after it
#      appears in the events file with its exact argv; a second `sudo make install` leaves the
#      running agent alone;
#   2. reboot (`systemctl reboot`; a new boot id): the service was started at boot, its start
#      event says the previous run ended cleanly, and it streams;
#   3. `systemctl kill -s KILL procsentry`: systemd restarts it (NRestarts +1, the journal says
#      why), the new start event says crash, and it streams again;
#   4. `systemctl show` and /proc/<MainPID> show the unit's capabilities and hardening in effect;
#   5. `logrotate -f` with the installed snippet: rotated, reopened on SIGHUP, same process;
#   6. `sudo make uninstall` (twice): unit, venv, settings, snippet, link gone, systemd no longer
#      knows the unit, no process left, data directories kept; `PURGE=1` removes those too.
# The checks themselves are vagrant/agent-systemd-guest.py. Results: one line per check in
# $VM_DIR/results/agent-systemd/results.txt, everything in run.log, the serial console in
# console.log. Exit status 1 if any check failed or the guest could not be driven.
#
# The image: debootstrap bookworm (systemd-sysv, udev, openssh-server, sudo, ifupdown, dhclient,
# python3), then linux-image-amd64 with the matching linux-headers-amd64, python3-bpfcc,
# python3-venv, make and logrotate: what the README's quick start needs before `make install`.
# Built once into $VM_DIR/images/agent-bookworm (rebuilt when the recipe below changes); each
# run boots a throwaway overlay of it. The guest reaches the Debian mirror and PyPI through
# QEMU's user-mode network (`make install` runs pip there).
#
# Knobs: AGENT_VM_CPUS (2), AGENT_VM_MEMORY (MiB, 2048), KEEP=1 (leave the guest running; ssh
# command printed), PROCSENTRY_QEMU_LOCK (/tmp/procsentry-qemu.lock: one guest at a time here).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=vagrant/debian-rootfs.sh
. "$repo/vagrant/debian-rootfs.sh"
vm_dir=${VM_DIR:-$repo/vm}
img=$vm_dir/images/agent-bookworm
res=$vm_dir/results/agent-systemd
suite=bookworm
mirror=${AGENT_VM_MIRROR:-http://deb.debian.org/debian}
cpus=${AGENT_VM_CPUS:-2}
mem=${AGENT_VM_MEMORY:-2048}
lock=${PROCSENTRY_QEMU_LOCK:-/tmp/procsentry-qemu.lock}
guest_repo=/home/tester/procsentry
# debootstrap's set, then what goes in with apt in the chroot (the kernel and its headers in one
# transaction, so their ABI is the same).
base_pkgs=systemd-sysv,udev,dbus,openssh-server,sudo,ifupdown,isc-dhcp-client,iproute2,netbase,python3,ca-certificates,procps,kmod,less,initramfs-tools
apt_pkgs="linux-image-amd64 linux-headers-amd64 python3-bpfcc python3-venv python3-pip make logrotate"
recipe=$(printf '%s\n' 3 "$suite" "$base_pkgs" "$apt_pkgs" | sha256sum | cut -c1-16)

say() { printf '[%s] %s\n' "$(date -u +%T)" "$*" | tee -a "$res/run.log" >&2; }
die() { say "error: $*"; echo "FAIL harness: $*" >> "$res/results.txt"; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "agent-systemd-check: run as root (sudo make test-service)" >&2; exit 1; }

# ------------------------------------------------------------------------------------ the image
chroot_mounts=()
unmount_chroot() {
    local m
    for m in "${chroot_mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done
    chroot_mounts=()
}

build_image() {
    local new=$img.new root t0=$SECONDS
    root=$new/rootfs
    local missing=()
    for p in debootstrap e2fsprogs qemu-utils qemu-system-x86 openssh-client debian-archive-keyring; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]} on this host"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    rm -rf "$new"
    mkdir -p "$root"
    say "image: debootstrap $suite (~2 min)"
    debootstrap --variant=minbase --include="$base_pkgs" "$suite" "$root" "$mirror" > "$new/debootstrap.log" 2>&1 \
        || { tail -5 "$new/debootstrap.log" >&2; die "debootstrap failed (log: $new/debootstrap.log)"; }
    write_apt_sources "$root" "$suite"
    # No service starts inside the chroot.
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    # This host's extra CAs (a TLS-intercepting proxy the host trusts): pip in the guest needs
    # them as the host does; a venv's pip uses certifi's bundle unless told otherwise.
    local crt extra=0
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -e "$crt" ] && { install -m 644 "$crt" "$root/usr/local/share/ca-certificates/"; extra=1; }
    done
    [ $extra -eq 0 ] || printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
    local d
    for d in proc sys dev dev/pts; do mount --bind "/$d" "$root/$d"; chroot_mounts=("$root/$d" "${chroot_mounts[@]}"); done
    say "image: apt-get install $apt_pkgs"
    # shellcheck disable=SC2086
    chroot "$root" /bin/sh -ec "
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends $apt_pkgs
        update-ca-certificates
        useradd -m -s /bin/bash tester
        echo 'tester ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/tester
        chmod 440 /etc/sudoers.d/tester
        apt-get clean" > "$new/apt.log" 2>&1 \
        || { unmount_chroot; tail -5 "$new/apt.log" >&2; die "apt-get in the image failed (log: $new/apt.log)"; }
    unmount_chroot
    rm -f "$root/usr/sbin/policy-rc.d"
    local kver hdr
    kver=$(basename "$(ls -d "$root"/lib/modules/* | sort -V | tail -1)")
    hdr=$(readlink "$root/lib/modules/$kver/build" || true)
    [ -e "$root$hdr/include/generated/autoconf.h" ] || die "the image's kernel $kver has no matching headers ($hdr)"
    ssh-keygen -q -t ed25519 -N '' -C procsentry-test-service -f "$new/id_ed25519"
    install -d -m 700 -o 1000 -g 1000 "$root/home/tester/.ssh"
    install -m 600 -o 1000 -g 1000 "$new/id_ed25519.pub" "$root/home/tester/.ssh/authorized_keys"
    echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" > "$root/etc/fstab"
    echo procsentry-agent > "$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 procsentry-agent\n' > "$root/etc/hosts"
    printf 'auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n' > "$root/etc/network/interfaces"
    # A persistent journal: the evidence of the boot before the reboot stays readable.
    mkdir -p "$root/var/log/journal"
    cp "$root/boot/vmlinuz-$kver" "$new/vmlinuz"
    cp "$root/boot/initrd.img-$kver" "$new/initrd.img"
    echo "$kver" > "$new/kernel"
    say "image: ext4 from the tree, then qcow2 (kernel $kver)"
    mke2fs -q -t ext4 -L root -d "$root" "$new/disk.raw" 8G
    qemu-img convert -O qcow2 "$new/disk.raw" "$new/disk.qcow2"
    rm -rf "$new/disk.raw" "$root"
    echo "$recipe" > "$new/recipe"
    rm -rf "$img"
    mv "$new" "$img"
    say "image built in $((SECONDS - t0)) s: $img (kernel $kver)"
}

# ------------------------------------------------------------------------------------ the guest
port="" qemu_pid=""
gssh() {
    ssh -i "$img/id_ed25519" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 \
        -o ServerAliveInterval=15 -o ServerAliveCountMax=8 tester@127.0.0.1 "$@"
}
qemu_alive() { [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; }
stop_guest() {
    qemu_alive || return 0
    if [ "${KEEP:-0}" = 1 ]; then
        say "KEEP=1: the guest stays up (qemu pid $qemu_pid): ssh -i $img/id_ed25519 -p $port tester@127.0.0.1"
        return 0
    fi
    gssh sudo systemctl poweroff >/dev/null 2>&1 || true
    local end=$((SECONDS + 120))
    while qemu_alive && [ $SECONDS -lt $end ]; do sleep 2; done
    qemu_alive && kill "$qemu_pid"
    return 0
}
cleanup() { set +e; unmount_chroot; stop_guest; }
trap cleanup EXIT

boot_guest() {
    qemu-img create -q -f qcow2 -F qcow2 -b "$img/disk.qcow2" "$res/overlay.qcow2"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Software emulation always: this host's /dev/kvm boots only PVM guests (VM-TESTING.md).
    qemu-system-x86_64 -accel tcg -cpu max -smp "$cpus" -m "$mem" -display none -monitor none \
        -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 panic=10" \
        -drive "file=$res/overlay.qcow2,if=virtio,format=qcow2" \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
        -serial "file:$res/console.log" -pidfile "$res/qemu.pid" -daemonize
    qemu_pid=$(cat "$res/qemu.pid")
}

# wait_ssh SECONDS [BOOT_ID_TO_LEAVE]: until the guest answers over ssh (with another boot id).
wait_ssh() {
    local end=$((SECONDS + $1)) old=${2:-} now
    while :; do
        qemu_alive || die "QEMU exited (console: $res/console.log)"
        now=$(gssh cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)
        [ -n "$now" ] && [ "$now" != "$old" ] && { echo "$now"; return 0; }
        [ $SECONDS -lt $end ] || die "no ssh to the guest within $1 s (console: $res/console.log)"
        sleep 3
    done
}

# host_check NAME OK EVIDENCE: a check made from the host, in the guest checks' format.
host_check() {
    local line
    if [ "$2" = 0 ]; then line="PASS $1: $3"; else line="FAIL $1: $3"; fi
    echo "$line" | tee -a "$res/results.txt" "$res/run.log"
}

# phase NAME [ARGS]: one call of the guest checks; their lines go to the results.
phase() {
    local rc=0
    say "guest checks: $1"
    gssh sudo /usr/bin/python3 "$guest_repo/vagrant/agent-systemd-guest.py" "$@" > "$res/phase-$1.out" 2>&1 || rc=$?
    cat "$res/phase-$1.out" >> "$res/run.log"
    grep -E '^(PASS|FAIL) ' "$res/phase-$1.out" >> "$res/results.txt" || true
    grep -E '^(FAIL|Traceback)' "$res/phase-$1.out" >&2 || true
    [ $rc -eq 0 ] || [ $rc -eq 1 ] || host_check "phase:$1" 1 "the guest checks exited $rc (see run.log)"
}

# guest_make NAME TARGET...: `sudo make TARGET` in the guest's checkout, as the user; timed.
guest_make() {
    local name=$1 rc=0 t0=$SECONDS
    shift
    say "guest: sudo make $*"
    gssh "cd $guest_repo && sudo make $*" > "$res/$name.out" 2>&1 || rc=$?
    cat "$res/$name.out" >> "$res/run.log"
    host_check "$name" "$rc" "sudo make $* exited $rc in $((SECONDS - t0)) s; output: $(tr '\n' '|' < "$res/$name.out" | cut -c1-400)"
    return 0
}

mkdir -p "$res"
rm -f "$res"/*
t_all=$SECONDS
say "agent-systemd-check: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo '+changes') on $(uname -r)"
if [ "$(cat "$img/recipe" 2>/dev/null)" != "$recipe" ]; then
    build_image
else
    say "image: $img (kernel $(cat "$img/kernel"), built $(date -u -r "$img/disk.qcow2" +%FT%TZ))"
fi

exec 9>"$lock"
t_lock=$SECONDS
if ! flock -n 9; then
    say "waiting for another guest to finish ($lock)"
    flock 9
fi
t_lock=$((SECONDS - t_lock))
t_guest=$SECONDS
t0=$SECONDS
boot_guest
boot1=$(wait_ssh 600)
say "guest up: ssh after $((SECONDS - t0)) s (QEMU TCG, $cpus vCPU, $mem MiB, kernel $(cat "$img/kernel"))"
host_check boot.ssh 0 "guest answered over ssh $((SECONDS - t0)) s after QEMU started; boot id $boot1"

# The checkout as it is (tracked and untracked files, not what .gitignore excludes).
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -czf -) | gssh "rm -rf $guest_repo && mkdir -p $guest_repo && tar -xzf - -C $guest_repo"
phase boot

guest_make install install
phase installed "$guest_repo"
guest_make install.again install
if grep -q 'installing procsentry into' "$res/install.again.out"; then
    host_check install.again.no_pip 1 "the second install rebuilt the venv"
else
    host_check install.again.no_pip 0 "the second install did no pip work"
fi
phase reinstalled

say "guest: sudo systemctl reboot"
t0=$SECONDS
gssh sudo systemctl reboot >/dev/null 2>&1 || true
boot2=$(wait_ssh 900 "$boot1")
host_check reboot 0 "boot id $boot1 -> $boot2; ssh back $((SECONDS - t0)) s after systemctl reboot"
phase rebooted
phase killed
phase hardening
phase logrotate

gssh sudo journalctl -u procsentry.service --no-pager -o short-monotonic > "$res/journal.txt" 2>&1 || true
gssh "sudo sh -c 'cat /var/log/procsentry/events.jsonl*'" 2>/dev/null \
    | grep -E '"event":"(start|stats)"' > "$res/start-stats-events.jsonl" || true
guest_make uninstall uninstall
phase uninstalled
guest_make uninstall.again uninstall
guest_make uninstall.purge uninstall PURGE=1
phase purged
stop_guest

fails=$(grep -c '^FAIL' "$res/results.txt" || true)
passes=$(grep -c '^PASS' "$res/results.txt" || true)
{
    echo "# $(date -u +%FT%TZ) sudo make test-service: guest kernel $(cat "$img/kernel"), QEMU TCG $cpus vCPU / $mem MiB"
    echo "# $passes passed, $fails failed; guest $((SECONDS - t_guest)) s (boot to poweroff), waiting for the lock $t_lock s, in all $((SECONDS - t_all)) s"
} >> "$res/results.txt"
say "$passes checks passed, $fails failed; guest $((SECONDS - t_guest)) s, in all $((SECONDS - t_all)) s: $res/results.txt"
[ "$fails" -eq 0 ] && [ "$passes" -gt 0 ]
