#!/usr/bin/env bash
# Make this host ready for `vagrant up --provider=libvirt`, idempotently:
#   - Debian packages: vagrant, vagrant-libvirt, libvirt (sysv flavour: no systemd needed),
#     QEMU, dnsmasq and iptables for the NAT network, rsync for the synced folder;
#   - virtlogd and libvirtd started by hand when no init system runs them (containers, CI hosts);
#   - libvirt's `default` NAT network started (the guests reach the mirrors through it).
# Run as root. Used by vagrant/run-matrix.sh and vagrant/build-debian-box.sh.
set -euo pipefail

say() { printf 'host-libvirt: %s\n' "$*" >&2; }
die() { printf 'host-libvirt: error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'host-libvirt: remedy: %s\n' "$2" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "libvirt's system instance needs root." "run with sudo."
command -v apt-get >/dev/null || die "this helper knows only Debian-family hosts." \
    "install vagrant, vagrant-libvirt, libvirt and QEMU with your package manager, start libvirtd and 'virsh net-start default'."

# Without Recommends: with them vagrant alone pulls ~250 packages, a kernel and systemd.
pkgs=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-system-sysv libvirt-daemon-driver-qemu
      libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base iptables rsync openssh-client)
missing=()
for p in "${pkgs[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null; }
    install || { apt-get update -qq >/dev/null && install; } || die "apt-get install ${missing[*]} failed." "run it by hand to see why."
fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! running /run/virtlogd.pid; then
    say "starting virtlogd"
    virtlogd -d
fi
if ! running /run/libvirtd.pid; then
    say "starting libvirtd"
    libvirtd -d
    for _ in $(seq 1 30); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 1; done
fi
virsh -c qemu:///system version >/dev/null 2>&1 || die "libvirtd does not answer on qemu:///system." "look at /var/log/libvirt/libvirtd.log."

if ! virsh -c qemu:///system net-info default >/dev/null 2>&1; then
    say "defining libvirt's default network"
    virsh -c qemu:///system net-define /usr/share/libvirt/networks/default.xml >/dev/null
fi
# (grep on captured text: `virsh | grep -q` under pipefail fails when grep closes the pipe early)
if ! grep -q '^Active: *yes' <<<"$(virsh -c qemu:///system net-info default 2>/dev/null)"; then
    say "starting libvirt's default network"
    virsh -c qemu:///system net-start default >/dev/null || die "cannot start libvirt's default NAT network." \
        "check that dnsmasq-base and iptables are installed and that 192.168.122.0/24 is free."
fi
# vagrant-libvirt keeps box volumes in the 'default' storage pool.
if ! virsh -c qemu:///system pool-info default >/dev/null 2>&1; then
    say "defining libvirt's default storage pool"
    mkdir -p /var/lib/libvirt/images
    virsh -c qemu:///system pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
fi
grep -q '^State: *running' <<<"$(virsh -c qemu:///system pool-info default 2>/dev/null)" \
    || virsh -c qemu:///system pool-start default >/dev/null
say "libvirt ready (qemu:///system, network and pool 'default')"
