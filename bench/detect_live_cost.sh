#!/bin/bash
# Monitor CPU per 1,000 execs with and without detection, live (root, BPF):
#   sudo bench/detect_live_cost.sh [N_EXECS] [RULES_DIR]
# For each configuration (no rules; the built-in pack; the built-in pack plus RULES_DIR) a
# `procsentry watch` runs while tests/progs/fork_storm execs /bin/true N times, and its final
# stats event gives its CPU time and the execs it saw (the host's own execs included: CPU is
# divided by every exec the monitor processed). Startup (imports, BPF compile, rule loading) is
# measured by an idle run of the same length and subtracted.
set -euo pipefail
n=${1:-3000}
rules=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PY:-$here/.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc -O2 -o "$tmp/fork_storm" "$here/tests/progs/fork_storm.c"
run() {  # label execs args... -> "cpu_s execs"
    local out="$tmp/$1-$2.jsonl" count=$2; shift 2
    (cd "$here" && "$py" -m monitor watch --sensor bpf --events stats --stats-interval 3600 \
        --sweep-interval 0 --format json "$@" > "$out" 2>/dev/null) &
    local mp=$!
    sleep 6
    if [ "$count" -gt 0 ]; then "$tmp/fork_storm" "$count" /bin/true > /dev/null; fi
    sleep 4
    kill -INT "$(pgrep -P $mp || echo $mp)" 2>/dev/null || true
    wait $mp || true
    python3 -c "
import json,sys
s=[json.loads(l) for l in open('$out') if '\"stats\"' in l][-1]
print(s['cpu_time_s'], s['events'].get('exec', 0))"
}
for cfg in none builtin rules; do
    case $cfg in
        none) args=(--no-builtin-rules) ;;
        builtin) args=() ;;
        rules) [ -n "$rules" ] || continue; args=(--rules "$rules") ;;
    esac
    read -r c0 e0 < <(run "$cfg" 0 "${args[@]}")
    read -r c1 e1 < <(run "$cfg" "$n" "${args[@]}")
    python3 -c "
c0,e0,c1,e1=$c0,$e0,$c1,$e1
print(f'$cfg: idle {c0:.2f} s CPU / {e0} execs; storm {c1:.2f} s / {e1} execs; '
      f'{(c1-c0)/max(e1-e0,1)*1000:.3f} CPU-s per 1,000 execs')"
done
