#!/usr/bin/env bash
# Benchmark setup: the contenders' packages (only when missing) and py-spy for the profile.
#
# Idempotent: a second run does no package-manager work. A package that cannot be installed is
# not fatal: the harness then lists that contender as "not available" with the reason.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${PROCSENTRY_VENV:-$here/.venv}"

say() { printf 'bench-setup: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { say "error: the benchmark loads BPF programs and audit rules, so it must run as root (sudo make bench)."; exit 1; }

# The workload binaries are compiled by bench/run.py itself (into bench/bin, gitignored).
command -v cc >/dev/null || { say "error: no C compiler (cc) for the workload; install gcc."; exit 1; }

# ---------------------------------------------------------------- contenders (only when missing)
missing=()
for p in stress-ng forkstat auditd bpftrace; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null; then
        say "installing ${missing[*]}"
        apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed; trying the cached lists"
        for p in "${missing[@]}"; do
            # One at a time: a package that is not to be had must not keep the others out.
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 \
                || say "could not install $p: that contender will be reported as not available"
        done
    else
        say "no apt-get: ${missing[*]} will be reported as not available unless installed by hand"
    fi
fi

# ---------------------------------------------------------------- py-spy for the profile
if [ ! -x "$venv/bin/py-spy" ]; then
    say "installing py-spy into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check py-spy >/dev/null 2>&1 \
        || say "could not install py-spy: the profile falls back to none"
fi
exit 0
