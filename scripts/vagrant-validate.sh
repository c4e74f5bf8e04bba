#!/usr/bin/env bash
# Static check of vagrant/Vagrantfile: `vagrant validate` for the libvirt and the VirtualBox
# provider, with and without PROCSENTRY_BOX. Needs no box, no network and no hypervisor (~10 s).
#
#   scripts/vagrant-validate.sh          (run by `make vagrant-validate`, hence by `make test-kernels`)
#
# Vagrant validates only the default provider's keys, and the VirtualBox provider refuses to load
# without VBoxManage, so a fake VBoxManage that prints a version stands in for it (VM-TESTING.md).
# Installs vagrant and vagrant-libvirt (without Recommends, which would pull ~250 packages) when
# missing; needs root only for that.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf 'vagrant-validate: %s\n' "$*" >&2; }
die() { printf 'vagrant-validate: error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'vagrant-validate: remedy: %s\n' "$2" >&2; exit 1; }

if ! command -v vagrant >/dev/null || [ "$(dpkg-query -W -f='${Status}' vagrant-libvirt 2>/dev/null)" != "install ok installed" ]; then
    [ "$(id -u)" -eq 0 ] || die "vagrant and vagrant-libvirt are not installed." "run 'sudo apt-get install --no-install-recommends vagrant vagrant-libvirt'."
    command -v apt-get >/dev/null || die "vagrant is missing and this is not a Debian-family host." "install vagrant and the vagrant-libvirt plugin."
    say "installing vagrant vagrant-libvirt"
    install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 vagrant vagrant-libvirt >/dev/null 2>&1; }
    install || { apt-get update -qq >/dev/null && install; } \
        || die "apt-get install vagrant vagrant-libvirt failed." "run 'apt-get install --no-install-recommends vagrant vagrant-libvirt' by hand to see why."
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
printf '#!/bin/sh\n# stand-in for VirtualBox so vagrant validates the virtualbox provider block\necho 7.0.14r161095\n' > "$tmp/bin/VBoxManage"
chmod +x "$tmp/bin/VBoxManage"

failed=0
check() {
    # check LABEL ENV...: one `vagrant validate` in vagrant/ with a throwaway VAGRANT_HOME.
    local label=$1; shift
    if (cd "$repo/vagrant" && env VAGRANT_HOME="$tmp/home" VAGRANT_CHECKPOINT_DISABLE=1 "$@" vagrant validate >"$tmp/out" 2>&1); then
        say "ok: $label"
    else
        say "FAILED: $label"; sed 's/^/    /' "$tmp/out" >&2; failed=1
    fi
}
check "libvirt"                        VAGRANT_DEFAULT_PROVIDER=libvirt
check "libvirt, PROCSENTRY_BOX"        VAGRANT_DEFAULT_PROVIDER=libvirt PROCSENTRY_BOX=procsentry/debian12-local
check "libvirt, kvm driver"            VAGRANT_DEFAULT_PROVIDER=libvirt PROCSENTRY_LIBVIRT_DRIVER=kvm
check "virtualbox"                     VAGRANT_DEFAULT_PROVIDER=virtualbox PATH="$tmp/bin:$PATH"
check "virtualbox, PROCSENTRY_BOX"     VAGRANT_DEFAULT_PROVIDER=virtualbox PATH="$tmp/bin:$PATH" PROCSENTRY_BOX=procsentry/debian12-local
[ $failed -eq 0 ] || die "vagrant/Vagrantfile does not validate." "fix the settings named above."
say "vagrant/Vagrantfile validates for libvirt and virtualbox"
