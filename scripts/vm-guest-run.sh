#!/usr/bin/env bash
# Runs inside a virtme-ng guest started by scripts/test-kernels.sh; not meant to be run by hand.
#
#   vm-guest-run.sh OUT_DIR [pytest|smoke]
#
# The guest sees the host's root read-only (tmpfs overlays on /etc, /tmp, ... are thrown away),
# so everything worth keeping goes to OUT_DIR, the --rwdir shared with the host:
#   uname-r        the kernel that actually booted
#   boot-seconds   guest uptime when this script started (boot cost under TCG)
#   pytest.log     the test output; junit.xml; counts (tests= failures= errors= skipped=);
#                  ran (per check of VM_TESTS: passed/selected, scripts/vm-junit-summary.py)
#   doctor.json    `procsentry doctor --no-load --format json`; doctor: its one-line summary
#   cgroup         the cgroup layout the guest booted with (v2, hybrid, v1), from its mounts
#   rc             the test exit code, written last: its absence means the run did not finish
# Without udev on the host, `vng` exits 255 whatever happens here, so these files are the verdict.
set -u

out=${1:?usage: vm-guest-run.sh OUT_DIR [pytest|smoke]}
mode=${2:-pytest}
awk '{ printf "%.1f\n", $1 }' /proc/uptime > "$out/boot-seconds"
uname -r > "$out/uname-r"
[ -e "$out/guest.env" ] && . "$out/guest.env"
repo=${PROCSENTRY_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
py=${PROCSENTRY_VM_PYTHON:-$repo/.venv/bin/python}

finish() { echo "$1" > "$out/rc"; echo "vm-guest-run: exit $1 on $(uname -r)"; exit "$1"; }
log() { echo "vm-guest-run: $*"; }

log "kernel $(uname -r), up $(cat "$out/boot-seconds") s, python $py"
# virtme-ng mounts tracefs itself; be explicit in case a version stops doing so.
[ -e /sys/kernel/tracing/events ] || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
[ -e "/sys/kernel/tracing/events/sched/sched_process_exec" ] || log "warning: no sched_process_exec tracepoint"
[ -e /sys/kernel/btf/vmlinux ] || log "warning: no BTF at /sys/kernel/btf/vmlinux"
build=/lib/modules/$(uname -r)/build
if [ -e "$build/include/generated/autoconf.h" ]; then
    log "headers: $(readlink -f "$build")"
else
    log "error: no kernel headers at $build (bcc cannot compile)"
    finish 3
fi

# The checkout is read-only here: no bytecode, no pytest cache, hypothesis data in a tmpfs.
export PYTHONDONTWRITEBYTECODE=1
export HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis
# A skipped kernel test is a failure here too (the matrix exists to run them).
export PROCSENTRY_REQUIRE_BPF=1
# Tells tests they run on a kernel whose headers match exactly (tests/bpf/test_offsets_vs_headers.py).
export PROCSENTRY_VM=1
export PROCSENTRY_KERNEL_HEADERS=$build

smoke() {
    # A tiny bcc program: raw tracepoint sched_process_exec, reads task->tgid through the
    # header-compiled offset, and must see the pid of a /bin/true we start.
    "$py" - "$out" <<'EOF'
import ctypes, json, subprocess, sys, time
from bcc import BPF

t0 = time.monotonic()
b = BPF(text=r"""
#include <linux/sched.h>
BPF_HASH(seen, u32, u64);
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    /* TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) */
    struct task_struct *p = (struct task_struct *)ctx->args[0];
    u32 tgid = p->tgid;
    u64 ts = bpf_ktime_get_ns();
    seen.update(&tgid, &ts);
    return 0;
}
""")
compile_s = time.monotonic() - t0
child = subprocess.Popen(["/bin/true"])
child.wait()
time.sleep(0.2)
keys = [k.value for k in b["seen"].keys()]
ok = child.pid in keys
print(json.dumps({"check": "smoke", "compile_seconds": round(compile_s, 1),
                  "child_pid": child.pid, "seen": len(keys), "ok": ok}))
with open(sys.argv[1] + "/counts", "w") as f:
    f.write("tests=1 failures=%d errors=0 skipped=0\n" % (0 if ok else 1))
with open(sys.argv[1] + "/ran", "w") as f:
    f.write("smoke:%d/1\n" % ok)
sys.exit(0 if ok else 1)
EOF
}

run_pytest() {
    # One pytest process, so a session-scoped fixture compiles the BPF programs once per boot.
    # It runs under a budget ending in SIGINT: pytest then stops, still writes junit xml and its
    # summary, and the host gets counts instead of a killed guest.
    # VM_TESTS words are LABEL=PATH (PATH a file, directory or node id; LABEL names the check in
    # the results line; a bare PATH is its own label).
    local args=() words=() paths=() word
    # shellcheck disable=SC2206
    [ -n "${VM_PYTEST_ARGS:-}" ] && args=($VM_PYTEST_ARGS)
    set -f  # node ids carry [params]: no globbing of the words
    # shellcheck disable=SC2206
    words=(${VM_TESTS:-kernel=tests/bpf})
    for word in ${VM_DESELECT:-}; do args+=(--deselect "$word"); log "deselected (too slow under emulation): $word"; done
    set +f
    for word in "${words[@]}"; do paths+=("$repo/${word#*=}"); done
    cd "$repo" || return 4
    # bpf: the kernel tests; vm: tests that mean something only here; root: the connector check
    # (root, no BPF). Nothing outside what VM_TESTS names is collected.
    timeout -s INT -k 30 "${VM_TEST_BUDGET:-600}" \
        "$py" -m pytest -m "bpf or vm or root" -p no:cacheprovider -v -ra --durations=15 \
        -o faulthandler_timeout=240 --rootdir "$repo" --junitxml "$out/junit.xml" \
        "${args[@]}" "${paths[@]}"
    local rc=$?
    # counts (the totals) and ran (per label: passed/selected) for the host's results line
    "$py" "$repo/scripts/vm-junit-summary.py" "$out" "${words[@]}"
    [ $rc -eq 124 ] && log "tests stopped: over the budget of ${VM_TEST_BUDGET:-600} s"
    return $rc
}

doctor() {
    # What `procsentry doctor` says about this kernel (without its trial load: the tests load the
    # sensor anyway). Every check that is not PASS is named in the host's results line, so a
    # feature degraded on an old kernel shows there with the reason doctor gives.
    "$py" -m monitor doctor --no-load --format json > "$out/doctor.json" 2>"$out/doctor.err"
    local rc=$?
    "$py" - "$out" "$rc" <<'EOF'
import json, sys
out, rc = sys.argv[1], sys.argv[2]
try:
    with open(out + "/doctor.json") as f:
        checks = json.load(f)["checks"]
except (OSError, ValueError, KeyError):
    summary = f"no report (exit {rc})"
else:
    for c in checks:
        if c["status"] != "PASS":
            print(f"vm-guest-run: doctor {c['status']} {c['name']}: {c['detail']}")
    other = [f"{c['status']}:{c['name']}" for c in checks if c["status"] != "PASS"]
    summary = ("ready" if rc == "0" else f"exit {rc}") + (" " + ",".join(other) if other else "")
with open(out + "/doctor", "w") as f:
    f.write(summary + "\n")
EOF
}

cgroup_layout() {
    # Which cgroup layout this boot has: the container tests' meaning depends on it (issue 18:
    # ids resolve to paths on cgroup2; a v1-only host names containers from procfs only).
    awk '$3 == "cgroup2" { v2 = v2 (v2 ? "," : "") $2 } $3 == "cgroup" { v1++ }
         END { if (v2 && v1) print "hybrid (cgroup2 at " v2 ", " v1 " v1 hierarchies)";
               else if (v2) print "v2 (cgroup2 at " v2 ")";
               else if (v1) print "v1 only (" v1 " hierarchies, no cgroup2)";
               else print "none mounted" }' /proc/self/mounts > "$out/cgroup"
    log "cgroup layout: $(cat "$out/cgroup")"
}

cgroup_layout
doctor
start=$(date +%s)
case $mode in
    smoke) smoke 2>&1 | tee "$out/pytest.log"; rc=${PIPESTATUS[0]} ;;
    pytest) run_pytest 2>&1 | tee "$out/pytest.log"; rc=${PIPESTATUS[0]} ;;
    *) log "unknown mode $mode"; rc=2 ;;
esac
log "tests took $(( $(date +%s) - start )) s"
finish "$rc"
