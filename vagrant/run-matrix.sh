#!/usr/bin/env bash
# The Vagrant matrix: for each machine, one at a time, `vagrant up` (which provisions it with
# scripts/setup.sh --system), record `uname -r`, run `sudo make test` in the guest, destroy it.
#
#   vagrant/run-matrix.sh [MACHINE...]     (`make vagrant-test [BOX="debian12 ubuntu2404"]`)
#
# Environment: PROVIDER (libvirt, the default, or virtualbox), PROCSENTRY_BOX (a box standing in
# for every machine, e.g. procsentry/debian12-local), KEEP=1 (do not destroy), VM_DIR (logs),
# plus the Vagrantfile's PROCSENTRY_VM_CPUS / PROCSENTRY_VM_MEMORY.
# Writes $VM_DIR/vagrant/<machine>.log and appends one line per machine to
# $VM_DIR/vagrant/results.txt; exits non-zero if any machine failed.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vm_dir=${VM_DIR:-$repo/vm}
provider=${PROVIDER:-libvirt}
out=$vm_dir/vagrant
mkdir -p "$out"

say() { printf 'vagrant-test: %s\n' "$*" >&2; }
die() { printf 'vagrant-test: error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'vagrant-test: remedy: %s\n' "$2" >&2; exit 1; }

all=(ubuntu2204 ubuntu2404 debian12 debian13 fedora43 rocky9)
if [ $# -gt 0 ]; then machines=("$@"); else machines=("${all[@]}"); fi
for m in "${machines[@]}"; do
    [[ " ${all[*]} " == *" $m "* ]] || die "unknown machine '$m'." "choose from: ${all[*]}."
done

case $provider in
    libvirt)
        [ "$(id -u)" -eq 0 ] || die "the libvirt provider runs against qemu:///system here." "run 'sudo make vagrant-test'."
        bash "$repo/vagrant/host-libvirt.sh" || exit 1 ;;
    virtualbox)
        command -v VBoxManage >/dev/null || die "VirtualBox is not installed." "install it, or use PROVIDER=libvirt." ;;
    *) die "unknown provider '$provider'." "use libvirt or virtualbox." ;;
esac

cd "$repo/vagrant"
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_DEFAULT_PROVIDER=$provider
failed=()
for m in "${machines[@]}"; do
    log=$out/$m.log
    : > "$log"
    box=${PROCSENTRY_BOX:-public}
    t0=$(date +%s)
    say "$m: vagrant up --provider=$provider (box: $box), log: $log"
    kernel="-" result=FAIL reason="" t_up=0 t_test=0
    {
        echo "### $(date -u +%FT%TZ) vagrant up $m --provider=$provider (PROCSENTRY_BOX=${PROCSENTRY_BOX:-})"
    } >> "$log"
    if vagrant up "$m" --provider="$provider" >> "$log" 2>&1; then
        t_up=$(( $(date +%s) - t0 ))
        kernel=$(vagrant ssh "$m" -c 'uname -r' -- -q 2>>"$log" | tr -d '\r' | tail -1)
        echo "### uname -r: $kernel" >> "$log"
        echo "### sudo make test" >> "$log"
        t1=$(date +%s)
        if vagrant ssh "$m" -c 'cd /procsentry && sudo make test' >> "$log" 2>&1; then
            result=PASS
        else
            reason="sudo make test failed"
        fi
        t_test=$(( $(date +%s) - t1 ))
    else
        reason="vagrant up failed"
    fi
    summary=$(grep -E '^=*.*[0-9]+ (passed|failed)' "$log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')
    if [ "${KEEP:-0}" != 1 ]; then
        echo "### vagrant destroy -f $m" >> "$log"
        vagrant destroy -f "$m" >> "$log" 2>&1 || say "$m: destroy failed, see $log"
    fi
    total=$(( $(date +%s) - t0 ))
    line=$(printf '%s  %-10s  %-9s  %-28s  %-24s  %-4s  up=%ss test=%ss total=%ss  %s%s' \
        "$(date -u +%FT%TZ)" "$m" "$provider" "$box" "$kernel" "$result" "$t_up" "$t_test" "$total" \
        "${summary:-no pytest summary}" "${reason:+  ($reason)}")
    echo "$line" >> "$out/results.txt"
    echo "$line"
    [ "$result" = PASS ] || { failed+=("$m"); tail -n 30 "$log" | sed 's/^/    /' >&2; }
done

say "results appended to $out/results.txt"
[ ${#failed[@]} -eq 0 ] || die "failed on: ${failed[*]}" "read $out/<machine>.log."
