#!/usr/bin/env bash
# Build a Debian 12 (bookworm) Vagrant box for the libvirt provider from Debian packages alone,
# for hosts that cannot reach Vagrant Cloud. Takes ~3 min; needs root and loop devices.
#
#   vagrant/build-debian-box.sh            -> $VM_DIR/boxes/debian12-local.box, added as procsentry/debian12-local
#   PROCSENTRY_BOX=procsentry/debian12-local make vagrant-test BOX=debian12
#
# The box: debootstrap rootfs (systemd, udev, sshd, sudo, ifupdown + dhclient, python3, rsync, the
# distribution kernel), user vagrant with Vagrant's public insecure key and passwordless sudo,
# one ext4 partition booted by extlinux, serial console, converted to qcow2.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=vagrant/debian-rootfs.sh
. "$repo/vagrant/debian-rootfs.sh"
vm_dir=${VM_DIR:-$repo/vm}
suite=${BOX_SUITE:-bookworm}
name=${BOX_NAME:-procsentry/debian12-local}
size_gb=${BOX_SIZE_GB:-4}
mirror=${BOX_MIRROR:-http://deb.debian.org/debian}
work=$vm_dir/boxes/work
box=$vm_dir/boxes/debian12-local.box

say() { printf 'build-debian-box: %s\n' "$*" >&2; }
die() { printf 'build-debian-box: error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'build-debian-box: remedy: %s\n' "$2" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "debootstrap, loop devices and mounts need root." "run with sudo."

bash "$repo/vagrant/host-libvirt.sh"
missing=()
for p in debootstrap extlinux syslinux-common fdisk e2fsprogs qemu-utils debian-archive-keyring; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed." "run it by hand to see why."
fi
pubkey=""
for f in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub; do
    [ -e "$f" ] && { pubkey=$f; break; }
done
[ -n "$pubkey" ] || die "Vagrant's insecure public key (keys/vagrant.pub) was not found." "install vagrant."

mnt=$work/mnt loop=""
cleanup() {
    set +e
    for d in dev/pts dev proc sys; do mountpoint -q "$mnt/$d" && umount "$mnt/$d"; done
    mountpoint -q "$mnt" && umount "$mnt"
    [ -n "$loop" ] && losetup -d "$loop"
}
trap cleanup EXIT
rm -rf "$work"; mkdir -p "$work" "$mnt"
t0=$(date +%s)

# ---------------------------------------------------------------- disk: one bootable ext4 partition
raw=$work/disk.raw
truncate -s "${size_gb}G" "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
loop=$(losetup -f --show -P "$raw")
part=${loop}p1
for _ in 1 2 3 4 5; do [ -b "$part" ] && break; sleep 1; partx -a "$loop" 2>/dev/null || true; done
[ -b "$part" ] || die "no partition device $part appeared." "check that loop devices support partitions (losetup -P)."
# extlinux 6.04 cannot boot from ext4 with 64bit or metadata_csum_seed.
mkfs.ext4 -q -L root -O ^64bit,^metadata_csum_seed "$part"
uuid=$(blkid -s UUID -o value "$part")
mount "$part" "$mnt"

# ---------------------------------------------------------------- rootfs
say "debootstrap $suite (~2 min)"
debootstrap --variant=minbase --components=main \
    --include=systemd-sysv,udev,dbus,openssh-server,sudo,ifupdown,isc-dhcp-client,iproute2,netbase,linux-image-amd64,initramfs-tools,python3,rsync,ca-certificates,procps,kmod,less \
    "$suite" "$mnt" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log: $work/debootstrap.log)." "check that $mirror is reachable."; }

write_apt_sources "$mnt" "$suite"
echo "UUID=$uuid / ext4 errors=remount-ro 0 1" > "$mnt/etc/fstab"
echo procsentry-box > "$mnt/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 procsentry-box\n' > "$mnt/etc/hosts"
# net.ifnames=0 on the kernel command line makes the first NIC eth0 whatever the bus slot.
printf 'auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n' > "$mnt/etc/network/interfaces"
cat > "$mnt/etc/ssh/sshd_config.d/vagrant.conf" <<'EOF'
UseDNS no
PasswordAuthentication yes
EOF
# A host behind a TLS-intercepting proxy trusts it through extra CAs in /usr/local/share/ca-certificates;
# the box is built for this host, so it trusts the same ones (apt uses plain http, pip does not).
extra_ca=0
for crt in /usr/local/share/ca-certificates/*.crt; do
    [ -e "$crt" ] || continue
    install -m 644 "$crt" "$mnt/usr/local/share/ca-certificates/"; extra_ca=1
done
if [ $extra_ca -eq 1 ]; then
    say "trusting this host's extra CA certificates in the box: $(cd /usr/local/share/ca-certificates && echo *.crt)"
    # pip in a venv uses its own bundle unless told otherwise.
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$mnt/etc/pip.conf"
fi
for d in dev dev/pts proc sys; do mount --bind "/$d" "$mnt/$d"; done
chroot "$mnt" /bin/sh -ec '
    useradd -m -s /bin/bash vagrant
    echo vagrant:vagrant | chpasswd
    install -d -m 700 -o vagrant -g vagrant /home/vagrant/.ssh
    echo "vagrant ALL=(ALL) NOPASSWD: ALL" > /etc/sudoers.d/vagrant
    chmod 440 /etc/sudoers.d/vagrant
    systemctl enable ssh >/dev/null 2>&1 || true
    update-ca-certificates >/dev/null 2>&1 || true
    apt-get clean
'
install -m 600 -o 1000 -g 1000 "$pubkey" "$mnt/home/vagrant/.ssh/authorized_keys"
# Host keys from debootstrap would be shared by every box built here: make them per machine.
rm -f "$mnt"/etc/ssh/ssh_host_*
cat > "$mnt/etc/systemd/system/ssh-hostkeys.service" <<'EOF'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
EOF
chroot "$mnt" systemctl enable ssh-hostkeys.service >/dev/null 2>&1
for d in dev/pts dev proc sys; do umount "$mnt/$d"; done

# ---------------------------------------------------------------- bootloader
kver=$(basename "$(ls -d "$mnt"/lib/modules/* | sort -V | tail -1)")
mkdir -p "$mnt/boot/extlinux"
extlinux --install "$mnt/boot/extlinux" >/dev/null 2>&1
cat > "$mnt/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
TIMEOUT 1
PROMPT 0
SERIAL 0 115200
LABEL debian
    LINUX /boot/vmlinuz-$kver
    INITRD /boot/initrd.img-$kver
    APPEND root=UUID=$uuid ro console=tty0 console=ttyS0,115200 net.ifnames=0 biosdevname=0
EOF
dd if=/usr/lib/EXTLINUX/mbr.bin of="$loop" bs=440 count=1 conv=notrunc status=none
sync
umount "$mnt"; losetup -d "$loop"; loop=""

# ---------------------------------------------------------------- box
say "converting to qcow2 and packing the box (kernel $kver)"
qemu-img convert -O qcow2 "$raw" "$work/box.img"
rm -f "$raw"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%d}\n' "$size_gb" > "$work/metadata.json"
cat > "$work/Vagrantfile" <<'EOF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
  end
end
EOF
mkdir -p "$(dirname "$box")"
tar -C "$work" -cf "$box" metadata.json Vagrantfile box.img
rm -f "$work/box.img"
vagrant box add --force --name "$name" "$box" >/dev/null
# vagrant-libvirt copies a box into the storage pool on first use and keeps that copy: drop copies
# of an earlier build so the next `vagrant up` uploads this one.
vol_prefix="${name//\//-VAGRANTSLASH-}_vagrant_box_image_"
for vol in $(virsh -c qemu:///system vol-list default 2>/dev/null | awk -v p="$vol_prefix" 'index($1, p) == 1 {print $1}'); do
    say "removing the pool copy of an earlier build: $vol"
    virsh -c qemu:///system vol-delete --pool default "$vol" >/dev/null || true
done
say "built $box ($(du -h "$box" | cut -f1), kernel $kver) in $(( $(date +%s) - t0 )) s and added it as $name"
say "use it with: PROCSENTRY_BOX=$name make vagrant-test BOX=debian12"
