#!/usr/bin/env bash
# procsentry host setup: the one script behind `make run`, `make test`, CI and Vagrant provisioning.
#
# Idempotent. A second run does no package-manager work: every step first checks whether it is
# already done. Each failure ends with one line saying what to do about it.
#
#   scripts/setup.sh            system packages, headers, tracefs/debugfs, .venv with the project
#   scripts/setup.sh --system   only the system part (used by Vagrant provisioning before `make test`)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${PROCSENTRY_VENV:-$here/.venv}"
system_only=0
[ "${1:-}" = "--system" ] && system_only=1

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'setup: remedy: %s\n' "$2" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "setup installs system packages and mounts tracefs, so it must run as root." \
    "run it as 'sudo make run' or 'sudo make test'."

kernel=$(uname -r)
. /etc/os-release 2>/dev/null || die "cannot read /etc/os-release to tell which distribution this is." \
    "install bcc's Python bindings, kernel headers and python3-venv by hand, then run again."
family=""
case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "*|*" ubuntu "*) family=apt ;;
    *" fedora "*|*" rhel "*|*" centos "*|*" rocky "*|*" almalinux "*) family=dnf ;;
esac
[ -n "$family" ] || die "unsupported distribution '${ID:-unknown}'." \
    "install bcc's Python bindings (python3-bcc), headers for kernel $kernel and Python >= 3.10 with venv by hand, then run again."

# ---------------------------------------------------------------- system packages (only when missing)
apt_missing() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    echo "${missing[@]:-}"
}
apt_updated=0
apt_install() {
    [ $# -gt 0 ] || return 0
    say "installing $*"
    if [ $apt_updated -eq 0 ]; then
        apt-get update -qq >/dev/null || die "apt-get update failed." "check the network and /etc/apt/sources.list, then run again."
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed." "run 'apt-get install $*' by hand to see why."
}
apt_has_candidate() {
    # A package exists for this distribution when apt knows a candidate version for it.
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$cand" ] && [ "$cand" != "(none)" ]
}

headers_dir_ok() { [ -e "$1/include/generated/autoconf.h" ] || [ -e "$1/include/linux/kconfig.h" ] || [ -e "$1/Makefile" ]; }

install_system_apt() {
    # netcat-openbsd, socat, curl: the detection tests run real nc and socat reverse shells and
    # a real curl download (tests/detect).
    # shellcheck disable=SC2046
    apt_install $(apt_missing python3-bpfcc python3-venv python3-pip make gcc libc6-dev netcat-openbsd socat curl)
    # The delivery tests start real collectors on 127.0.0.1 with their own config and data
    # directories (never the system's): rsyslog with RELP and TLS, redis-server, and openssl to
    # make the test CAs. Installing them does not configure them to receive anything.
    # shellcheck disable=SC2046
    apt_install $(apt_missing rsyslog rsyslog-relp rsyslog-gnutls redis-server openssl)
    if headers_dir_ok "/lib/modules/$kernel/build"; then
        return 0
    fi
    if [ -z "$(apt_missing "linux-headers-$kernel")" ]; then return 0; fi
    if [ $apt_updated -eq 0 ] && ! apt_has_candidate "linux-headers-$kernel" && ! apt_has_candidate linux-headers-amd64 && ! apt_has_candidate linux-headers-generic; then
        apt-get update -qq >/dev/null || true; apt_updated=1
    fi
    if apt_has_candidate "linux-headers-$kernel"; then
        apt_install "linux-headers-$kernel"
        return 0
    fi
    # No headers for this exact kernel (custom, cloud or CI kernels). bcc refuses to compile
    # without some, so take the distro's generic ones; procsentry never trusts their struct
    # layouts (every offset comes from the running kernel's BTF, see monitor/sensors/bpf/offsets.py).
    local arch generic
    arch=$(dpkg --print-architecture)
    for generic in "linux-headers-$arch" linux-headers-generic; do
        if apt_has_candidate "$generic"; then
            # shellcheck disable=SC2046
            apt_install $(apt_missing "$generic")
            return 0
        fi
    done
    die "no kernel headers package for $kernel nor a generic one." "install headers for a nearby kernel and link them at /lib/modules/$kernel/build."
}

install_system_dnf() {
    local missing=() p
    for p in python3-bcc python3 make gcc nmap-ncat socat curl rsyslog rsyslog-relp rsyslog-gnutls redis openssl; do rpm -q "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if ! headers_dir_ok "/lib/modules/$kernel/build"; then
        if dnf -q list --available "kernel-devel-$kernel" >/dev/null 2>&1 || rpm -q "kernel-devel-$kernel" >/dev/null 2>&1; then
            rpm -q "kernel-devel-$kernel" >/dev/null 2>&1 || missing+=("kernel-devel-$kernel")
        else
            rpm -q kernel-devel >/dev/null 2>&1 || missing+=(kernel-devel)
        fi
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        dnf install -y -q "${missing[@]}" >/dev/null || die "dnf install ${missing[*]} failed." "run 'dnf install ${missing[*]}' by hand to see why."
    fi
}

case $family in
    apt) install_system_apt ;;
    dnf) install_system_dnf ;;
esac

# ---------------------------------------------------------------- host-agent checks
# The tests run `systemd-analyze verify` on the unit and `logrotate --debug` on the snippet
# (contrib/). Both work without systemd as PID 1; the systemd package provides the analyzer.
case $family in
    # shellcheck disable=SC2046
    apt) apt_install $(apt_missing systemd logrotate) ;;
    dnf) for p in systemd logrotate; do rpm -q "$p" >/dev/null 2>&1 || dnf install -y -q "$p" >/dev/null \
            || die "dnf install $p failed." "run 'dnf install $p' by hand to see why."; done ;;
esac

# ---------------------------------------------------------------- kernel headers where bcc looks
# bcc compiles against /lib/modules/$(uname -r)/build (and .../source). When no headers match the
# running kernel, link the newest generic ones there and say so once.
if ! headers_dir_ok "/lib/modules/$kernel/build"; then
    build="" source=""
    for d in $(ls -d /usr/src/linux-headers-* /usr/src/kernels/* 2>/dev/null | sort -V -r); do
        case $d in
            *-common|*-common-*) continue ;;
        esac
        if [ -e "$d/include/generated/autoconf.h" ]; then build=$d; break; fi
    done
    [ -n "$build" ] || die "no kernel headers found under /usr/src." "install your distribution's kernel headers package."
    # Debian splits headers into an arch part (generated files) and a -common part (the tree).
    common=$(ls -d "${build%-*}-common" 2>/dev/null || true)
    [ -n "$common" ] && source=$common || source=$build
    mkdir -p "/lib/modules/$kernel"
    ln -sfn "$build" "/lib/modules/$kernel/build"
    ln -sfn "$source" "/lib/modules/$kernel/source"
    say "no kernel headers match $kernel: using $(basename "$build") instead (struct offsets come from BTF, so this is safe)."
fi

# ---------------------------------------------------------------- tracefs and debugfs
if [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null \
        || die "cannot mount tracefs at /sys/kernel/tracing." "check that the kernel has CONFIG_TRACING and that this is not a locked-down container."
fi
if [ ! -e /sys/kernel/debug/tracing ] && [ -d /sys/kernel/debug ] && ! mountpoint -q /sys/kernel/debug; then
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || say "debugfs could not be mounted (not needed: tracefs is)."
fi

[ $system_only -eq 1 ] && exit 0

# ---------------------------------------------------------------- .venv on the distro's Python
# bcc's bindings live in the distro Python's dist-packages, so the venv must be built from that
# interpreter with --system-site-packages, not from a pyenv or conda Python.
py=""
for cand in /usr/bin/python3 /usr/libexec/platform-python; do
    [ -x "$cand" ] && { py=$cand; break; }
done
[ -n "$py" ] || die "the distribution's /usr/bin/python3 is missing." "install python3."
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$("$py" -V) is too old: procsentry needs Python >= 3.10." "use Ubuntu 22.04, Debian 12 or newer."

if [ -x "$venv/bin/python" ] && [ "$(readlink -f "$venv/bin/python")" != "$(readlink -f "$py")" ]; then
    say "recreating $venv: it was not built from $py"
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv --system-site-packages "$venv" || die "could not create $venv." "install python3-venv."
fi
stamp="$venv/.procsentry-installed"
want=$(cat "$here/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing procsentry and its Python dependencies into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here[test]" \
        || die "pip could not install procsentry." "run '$venv/bin/pip install -e .[test]' to see why."
    echo "$want" > "$stamp"
fi
"$venv/bin/python" -c 'import bcc' 2>/dev/null \
    || die "bcc's Python bindings are not importable from $venv." "install python3-bpfcc (Debian/Ubuntu) or python3-bcc (Fedora)."
exit 0
