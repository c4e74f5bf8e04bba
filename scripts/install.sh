#!/usr/bin/env bash
# procsentry as a host agent: `sudo make install` / `sudo make uninstall` (mk/install.mk).
#
#   scripts/install.sh install      venv under /opt/procsentry, unit, default settings,
#                                   logrotate snippet, data directories; enable + start the
#                                   service when systemd is running
#   scripts/install.sh uninstall    stop + disable, remove all of that; the data directories
#                                   (/var/lib, /var/log, /var/cache procsentry) stay unless
#                                   PURGE=1, and so does a settings file the admin changed
#
# Idempotent: a second install with the same sources does no pip work and changes nothing (a
# running service is restarted only when its venv, unit or drop-in changed); a second uninstall
# finds nothing to do. DESTDIR=/some/root stages everything under that root (no systemctl then);
# the venv's scripts are rewritten to name the final paths.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
action=${1:-}
D=${DESTDIR:-}
D=${D%/}
prefix=/opt/procsentry
unit=/etc/systemd/system/procsentry.service
confdir=/etc/procsentry
conf=$confdir/procsentry.toml
logrotate=/etc/logrotate.d/procsentry
dropin_dir=/etc/systemd/system/procsentry.service.d
dropin=$dropin_dir/perf-event-paranoid.conf
link=/usr/local/bin/procsentry
datadirs=(/var/lib/procsentry /var/log/procsentry /var/cache/procsentry)

# Set when something the service runs was replaced (the venv, the unit, its drop-in): a running
# service is restarted then, and only then.
changed=0

say() { printf 'install: %s\n' "$*" >&2; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run it as root: sudo make $action"
systemd_running() { [ -z "$D" ] && [ -d /run/systemd/system ]; }

# The sources that make up the installed venv: when their digest is the one recorded, pip has
# nothing to do.
sources_digest() {
    (cd "$here" && find pyproject.toml monitor userspace bpf -type f \
        ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum) \
        | sha256sum | cut -d' ' -f1
}

install_venv() {
    local py=/usr/bin/python3 venv=$D$prefix want stamp
    [ -x "$py" ] || die "the distribution's /usr/bin/python3 is missing (bcc's bindings come with it)"
    want=$(sources_digest)
    stamp=$venv/.installed-sources
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    say "installing procsentry into $venv"
    changed=1
    [ -x "$venv/bin/python" ] || "$py" -m venv --system-site-packages "$venv" \
        || die "could not create $venv (install python3-venv)"
    # Build from a copy: pip must not leave build/ or *.egg-info in the checkout.
    local tmp
    tmp=$(mktemp -d)
    (cd "$here" && tar -cf - --exclude=__pycache__ pyproject.toml README.md monitor userspace bpf) \
        | tar -xf - -C "$tmp"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-warn-script-location \
        --upgrade "$tmp" || { rm -rf "$tmp"; die "pip could not install procsentry into $venv"; }
    rm -rf "$tmp"
    if [ -n "$D" ]; then
        # A staged venv names its final place: /opt/procsentry, not $DESTDIR/opt/procsentry.
        grep -rlI --null -F "$D$prefix" "$venv/bin" "$venv/pyvenv.cfg" 2>/dev/null \
            | xargs -0 -r sed -i "s|$D$prefix|$prefix|g"
    fi
    find "$venv" -name __pycache__ -prune -o -type f -print0 | xargs -0 chmod go-w
    echo "$want" > "$stamp"
}

# install -C: copy only when different (keeps the mtime, and the file, when nothing changed).
put() { install -C -D -m "$1" "$2" "$D$3"; }

# Debian's kernels (and others with its patch) add kernel.perf_event_paranoid levels above 2;
# Debian's default is 3, and there perf_event_open(2) needs CAP_SYS_ADMIN: CAP_PERFMON is not
# enough. The sensor loads and attaches its programs without it, but its perf buffer is a
# perf_event_open per CPU: under the unit's capabilities alone the agent fell back to the
# connector ("cannot open the perf buffers: Permission denied", Debian 12, `make test-service`).
# There, and only there, a drop-in adds CAP_SYS_ADMIN. Read at install time: after changing the
# sysctl, run `make install` again (setting it to 2 removes the drop-in).
paranoid_dropin() {
    local level
    level=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo 2)
    [ "$level" -gt 2 ] || return 0
    cat <<EOF
# Written by \`make install\` (scripts/install.sh): kernel.perf_event_paranoid is $level here, and
# above 2 (a Debian kernel patch) perf_event_open(2), which the BPF sensor's perf buffer needs,
# requires CAP_SYS_ADMIN. With kernel.perf_event_paranoid=2 run \`make install\` again: it removes
# this file.
[Service]
CapabilityBoundingSet=CAP_SYS_ADMIN
AmbientCapabilities=CAP_SYS_ADMIN
EOF
}

# The drop-in that this kernel needs, or none (not under DESTDIR: the target's kernel is unknown).
install_dropin() {
    local want=""
    [ -n "$D" ] || want=$(paranoid_dropin)
    if [ -n "$want" ]; then
        if [ "$(cat "$dropin" 2>/dev/null)" != "$want" ]; then
            install -d -m 0755 "$dropin_dir"
            printf '%s\n' "$want" > "$dropin.new"
            chmod 0644 "$dropin.new"
            mv "$dropin.new" "$dropin"
            changed=1
            say "kernel.perf_event_paranoid > 2: $dropin adds CAP_SYS_ADMIN (see the file)"
        fi
    elif [ -e "$D$dropin" ]; then
        rm -f "$D$dropin"
        rmdir "$D$dropin_dir" 2>/dev/null || true
        changed=1
    fi
}

do_install() {
    install_venv
    install -d -m 0755 "$D$prefix/share"
    put 0644 "$here/README.md" "$prefix/share/README.md"
    cmp -s "$here/contrib/procsentry.service" "$D$unit" || changed=1
    put 0644 "$here/contrib/procsentry.service" "$unit"
    put 0644 "$here/contrib/procsentry.logrotate" "$logrotate"
    install_dropin
    install -d -m 0755 "$D$confdir"
    # The settings file is the admin's once written: never overwritten. Its digest as written is
    # kept, so uninstall can tell whether it was changed.
    if [ ! -e "$D$conf" ]; then
        "$D$prefix/bin/python" -m monitor config default > "$D$conf.new"
        chmod 0600 "$D$conf.new"
        mv "$D$conf.new" "$D$conf"
        sha256sum < "$D$conf" | cut -d' ' -f1 > "$D$prefix/.default-config-sha256"
        say "wrote $conf (check it with: procsentry config check)"
    fi
    install -d -m 0755 "$D$(dirname "$link")"
    if [ -L "$D$link" ] || [ ! -e "$D$link" ]; then
        ln -sfn "$prefix/bin/procsentry" "$D$link"
    fi
    local d
    for d in "${datadirs[@]}"; do install -d -m 0700 "$D$d"; done
    if systemd_running; then
        systemctl daemon-reload
        systemctl enable procsentry.service >/dev/null 2>&1
        if ! systemctl is-active -q procsentry.service; then
            systemctl start procsentry.service
            say "procsentry.service enabled and started (procsentry status)"
        elif [ $changed = 1 ]; then
            systemctl restart procsentry.service
            say "procsentry.service enabled and restarted on the new version (procsentry status)"
        else
            say "procsentry.service enabled and running: nothing changed, not restarted"
        fi
    elif [ -z "$D" ]; then
        say "systemd is not running: start it by hand: $prefix/bin/procsentry watch --config $conf"
    fi
}

do_uninstall() {
    if systemd_running; then
        systemctl disable --now procsentry.service >/dev/null 2>&1 || true
    fi
    rm -f "$D$unit" "$D$logrotate" "$D$dropin"
    rmdir "$D$dropin_dir" 2>/dev/null || true
    if [ -L "$D$link" ] && [ "$(readlink "$D$link")" = "$prefix/bin/procsentry" ]; then
        rm -f "$D$link"
    fi
    if [ -e "$D$conf" ]; then
        local was now
        was=$(cat "$D$prefix/.default-config-sha256" 2>/dev/null || true)
        now=$(sha256sum < "$D$conf" | cut -d' ' -f1)
        if [ "${PURGE:-0}" = 1 ] || [ "$was" = "$now" ]; then
            rm -f "$D$conf"
            rmdir "$D$confdir" 2>/dev/null || true
        else
            say "kept $conf: it was changed after install (PURGE=1 removes it)"
        fi
    fi
    rm -rf "${D:-}$prefix"
    if [ "${PURGE:-0}" = 1 ]; then
        local d
        for d in "${datadirs[@]}"; do rm -rf "${D:-}$d"; done
    fi
    if systemd_running; then
        systemctl daemon-reload
    fi
}

case $action in
    install) do_install ;;
    uninstall) do_uninstall ;;
    *) die "usage: $0 install|uninstall" ;;
esac
