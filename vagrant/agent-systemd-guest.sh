#!/usr/bin/env bash
# NOT YET PROVEN: virtme-ng --systemd did not run the guest script here (see vagrant/README.md).
# Runs inside a virtme-ng guest booted with systemd as PID 1 (vagrant/agent-systemd-check.sh).
#   boot 1: make install -> the service starts; it streams; systemctl kill -s KILL -> restarted
#   boot 2: the service was started at boot; make uninstall removes it
set -uo pipefail
res=/vmres
phase=$1
repo=$2
log=$res/boot$phase.log
exec >>"$log" 2>&1
say() { printf '[%s] %s\n' "$(date -u +%T)" "$*"; }
fail() { say "FAIL: $*"; echo "FAIL $*" > "$res/boot$phase.result"; exit 1; }
wait_for() {  # wait_for SECONDS WHAT CMD...
    local t=$1 what=$2; shift 2
    local end=$((SECONDS + t))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || fail "timed out after ${t}s waiting for $what"
        sleep 2
    done
    say "ok: $what"
}
events=/var/log/procsentry/events.jsonl
starts() { grep -h '"event":"start"' "$events" 2>/dev/null; }

say "boot $phase: $(uname -r), PID 1 is $(cat /proc/1/comm)"
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is not systemd"
systemctl is-system-running --wait || true
say "system: $(systemctl is-system-running)"

if [ "$phase" = 1 ]; then
    t0=$SECONDS
    make -C "$repo" install || fail "make install"
    say "make install took $((SECONDS - t0))s"
    systemctl is-enabled procsentry.service || fail "not enabled"
    wait_for 600 "procsentry status exit 0 (running, not losing events)" /opt/procsentry/bin/procsentry status
    /opt/procsentry/bin/procsentry status
    /bin/echo agent-vm-marker-1 >/dev/null
    wait_for 120 "the marker exec in $events" grep -q '"agent-vm-marker-1"' "$events"
    ls -l /var/log/procsentry /var/lib/procsentry
    pid1=$(systemctl show -p MainPID --value procsentry.service)
    restarts1=$(systemctl show -p NRestarts --value procsentry.service)
    say "MainPID $pid1, NRestarts $restarts1; systemctl kill -s KILL"
    systemctl kill -s KILL procsentry.service
    wait_for 120 "a new main process" bash -c "p=\$(systemctl show -p MainPID --value procsentry.service); [ \"\$p\" != 0 ] && [ \"\$p\" != $pid1 ]"
    wait_for 300 "a start event saying the previous run crashed" bash -c "grep -h '\"event\":\"start\"' $events | tail -1 | grep -q '\"previous_end\":\"crash\"'"
    restarts2=$(systemctl show -p NRestarts --value procsentry.service)
    say "after the kill: MainPID $(systemctl show -p MainPID --value procsentry.service), NRestarts $restarts2, $(systemctl is-active procsentry.service)"
    [ "$restarts2" = $((restarts1 + 1)) ] || fail "NRestarts $restarts2, expected $((restarts1 + 1))"
    starts
    journalctl -u procsentry.service --no-pager | tail -20
    echo PASS > "$res/boot1.result"
    say "boot 1 PASS; powering off (the service is stopped in order)"
else
    wait_for 600 "procsentry.service active after boot" systemctl is-active procsentry.service
    systemctl status procsentry.service --no-pager | head -12
    wait_for 600 "procsentry status exit 0" /opt/procsentry/bin/procsentry status
    starts
    last=$(starts | tail -1)
    say "this boot's start event: $last"
    case $last in *'"previous_end":"clean"'*) ;; *) fail "expected previous_end clean (stopped by the shutdown)";; esac
    t0=$SECONDS
    make -C "$repo" uninstall || fail "make uninstall"
    say "make uninstall took $((SECONDS - t0))s"
    ! systemctl is-active -q procsentry.service || fail "still active after uninstall"
    [ ! -e /etc/systemd/system/procsentry.service ] || fail "unit left behind"
    [ ! -e /opt/procsentry/bin ] || fail "/opt/procsentry left behind"
    [ -e "$events" ] || fail "the events file (data) should stay"
    systemctl status procsentry.service --no-pager 2>&1 | head -3
    echo PASS > "$res/boot2.result"
    say "boot 2 PASS"
fi
systemctl poweroff
