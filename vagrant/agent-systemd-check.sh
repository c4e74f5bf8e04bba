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
# The guest script runs as a service of the guest's systemd (virtme-ng's own command path
# through a serial getty did not run here), from the unit directory that persists.
cat > "$state/etcsystemd/agent-check.service" <<UNIT
[Unit]
Description=procsentry agent check (vagrant/agent-systemd-guest.sh)
After=network.target
[Service]
Type=simple
Environment=PIP_NO_INDEX=1 PIP_FIND_LINKS=/vmres/wheels
ExecStart=/bin/bash -c '$repo/vagrant/agent-systemd-guest.sh \$(cat /vmres/phase) $repo'
StandardOutput=journal+console
UNIT
mkdir -p "$state/etcsystemd/multi-user.target.wants"
ln -sfn ../agent-check.service "$state/etcsystemd/multi-user.target.wants/agent-check.service"
# pip in the guest has no index: the wheels make install needs, fetched here once.
"$repo/.venv/bin/python" -m pip download -q -d "$res/wheels" orjson pyroute2 prometheus_client \
    setuptools wheel >/dev/null
# Few mappings: each adds to the kernel command line, and past a point vng fails silently.
maps=(--rwdir "/vmres=$res" --rwdir "/opt=$state/opt" --rwdir "/etc/systemd/system=$state/etcsystemd"
      --rwdir "/etc/procsentry=$state/etcproc" --rwdir "/var/lib/procsentry=$state/varlib"
      --overlay-rwdir /var --overlay-rwdir /usr/local)
for phase in 1 2; do
    t0=$(date +%s)
    echo "$phase" > "$res/phase"
    PATH=$vm_dir/tools/venv/bin:$PATH timeout --foreground 1500 "$vng" --systemd --disable-kvm --force-9p --cpus 2 --memory 2G \
        -r "$kernel" "${maps[@]}" -- sleep 3000 > "$res/vng$phase.log" 2>&1 < /dev/null || true
    echo "boot $phase: $(cat "$res/boot$phase.result" 2>/dev/null || echo 'no result') ($(( $(date +%s) - t0 )) s)"
done
