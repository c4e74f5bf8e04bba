#!/bin/bash
# Monitor CPU per 1,000 execs with and without detection, live (root, BPF):
#   sudo bench/detect_live_cost.sh [N_EXECS] [RULES_DIR] [REPS]
# For each configuration (no rules; the built-in pack; the built-in pack plus RULES_DIR) a
# `procsentry watch --stats-interval 1` runs while tests/progs/fork_storm execs /bin/true N
# times, writing every event to a file. The cost is read from the monitor's own stats between the last one before the storm
# and the last one after it (CPU time and execs seen, the host's own execs included): startup
# (imports, BPF compile, rule loading) is outside that window, so it needs no subtraction.
# Configurations are interleaved within each repetition; the medians are printed at the end.
set -euo pipefail
n=${1:-3000}
rules=${2:-}
reps=${3:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PY:-$here/.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc -O2 -o "$tmp/fork_storm" "$here/tests/progs/fork_storm.c"
configs=(none builtin)
[ -z "$rules" ] || configs+=(rules)
run() {  # label rep args... -> appends "label cpu_s execs" to $tmp/results
    local label=$1 out="$tmp/$1-$2.jsonl"; shift 2
    # Every event is written, as in use: with --events stats the monitor would build no event
    # at all without detection, and detection needs every one built.
    (cd "$here" && "$py" -m monitor watch --sensor bpf --stats-interval 1 \
        --sweep-interval 0 --format json "$@" > "$out" 2>/dev/null) &
    local mp=$!
    sleep 6
    local t0; t0=$(date +%s.%N)
    "$tmp/fork_storm" "$n" /bin/true > /dev/null
    sleep 3
    kill -INT "$(pgrep -P $mp || echo $mp)" 2>/dev/null || true
    wait $mp || true
    "$py" - "$out" "$t0" "$label" >> "$tmp/results" <<'EOF'
import datetime, json, sys
path, t0, label = sys.argv[1], float(sys.argv[2]), sys.argv[3]
stats = [json.loads(l) for l in open(path) if '"event":"stats"' in l]
when = lambda s: datetime.datetime.fromisoformat(s["time"][:26].rstrip("Z") + "+00:00").timestamp()
before = [s for s in stats if when(s) < t0][-1]
after = stats[-1]
print(label, after["cpu_time_s"] - before["cpu_time_s"],
      after["events"].get("exec", 0) - before["events"].get("exec", 0))
EOF
}
for rep in $(seq "$reps"); do
    for cfg in "${configs[@]}"; do
        case $cfg in
            none) run none "$rep" --no-builtin-rules ;;
            builtin) run builtin "$rep" ;;
            rules) run rules "$rep" --rules "$rules" ;;
        esac
    done
done
"$py" - "$tmp/results" <<'EOF'
import statistics, sys
per = {}
for line in open(sys.argv[1]):
    label, cpu, execs = line.split()
    per.setdefault(label, []).append(float(cpu) / max(int(execs), 1) * 1000)
base = statistics.median(per["none"])
for label, xs in per.items():
    m = statistics.median(xs)
    print(f"{label:8s} median {m:.3f} CPU-s per 1,000 execs ({m / base - 1:+.0%} vs none); "
          f"runs {', '.join(f'{x:.3f}' for x in xs)}")
EOF
