#!/usr/bin/env bash
# NOT YET PROVEN: virtme-ng --systemd did not run the guest script here (see vagrant/README.md).
# The host agent under a real systemd (issue 15), in two boots of a virtme-ng guest whose PID 1
# is systemd (vng --systemd), over this host's root filesystem read-only. What the agent
# installs is kept between the boots in host directories under $VM_DIR/agent-state (mapped
# with --rwdir), so boot 2 sees what boot 1 enabled. Needs the kernel and virtme-ng that
# `sudo VM_MODE=smoke make test-kernels KERNELS=trixie` fetches into $VM_DIR.
#
#   sudo VM_DIR=/tmp/vm bash vagrant/agent-systemd-check.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vm_dir=${VM_DIR:-$repo/vm}
vng=$vm_dir/tools/venv/bin/vng
kernel=$(ls -d "$vm_dir"/kernels/*/boot/vmlinuz-* | sort -V | tail -1)
state=$vm_dir/agent-state
res=$vm_dir/results/agent-systemd
[ -x "$vng" ] && [ -e "$kernel" ] || { echo "run: sudo VM_DIR=$vm_dir VM_MODE=smoke make test-kernels KERNELS=trixie" >&2; exit 1; }
rm -rf "$state" "$res"
mkdir -p "$res" "$state/opt" "$state/varlib" "$state/varlog" "$state/varcache" "$state/etcproc" "$state/usrlocal/bin"
cp -a /etc/systemd/system "$state/etcsystemd"
maps=(--rwdir "/vmres=$res" --rwdir "/opt=$state/opt" --rwdir "/etc/systemd/system=$state/etcsystemd"
      --rwdir "/etc/procsentry=$state/etcproc" --rwdir "/var/lib/procsentry=$state/varlib"
      --rwdir "/var/log/procsentry=$state/varlog" --rwdir "/var/cache/procsentry=$state/varcache"
      --rwdir "/usr/local=$state/usrlocal" --overlay-rwdir /var)
for phase in 1 2; do
    t0=$(date +%s)
    PATH=$vm_dir/tools/venv/bin:$PATH timeout 1800 "$vng" --systemd --disable-kvm --force-9p --cpus 2 --memory 2G --network user \
        -r "$kernel" "${maps[@]}" -- "$repo/vagrant/agent-systemd-guest.sh" "$phase" "$repo" \
        > "$res/vng$phase.log" 2>&1 || true
    echo "boot $phase: $(cat "$res/boot$phase.result" 2>/dev/null || echo 'no result') ($(( $(date +%s) - t0 )) s)"
done
