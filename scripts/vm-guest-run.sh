#!/usr/bin/env bash
# Runs inside a virtme-ng guest started by scripts/test-kernels.sh; not meant to be run by hand.
#
#   vm-guest-run.sh OUT_DIR [pytest|smoke]
#
# The guest sees the host's root read-only (tmpfs overlays on /etc, /tmp, ... are thrown away),
# so everything worth keeping goes to OUT_DIR, the --rwdir shared with the host:
#   uname-r        the kernel that actually booted
#   boot-seconds   guest uptime when this script started (boot cost under TCG)
#   pytest.log     the test output; junit.xml; counts (tests= failures= errors= skipped=)
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
sys.exit(0 if ok else 1)
EOF
}

run_pytest() {
    # One pytest process, so a session-scoped fixture compiles the BPF programs once per boot.
    # It runs under a budget ending in SIGINT: pytest then stops, still writes junit xml and its
    # summary, and the host gets counts instead of a killed guest.
    local args=() paths=()
    # shellcheck disable=SC2206
    [ -n "${VM_PYTEST_ARGS:-}" ] && args=($VM_PYTEST_ARGS)
    local p
    for p in ${VM_TESTS:-tests/bpf}; do paths+=("$repo/$p"); done
    for p in ${VM_DESELECT:-}; do args+=(--deselect "$p"); log "deselected (too slow under emulation): $p"; done
    cd "$repo" || return 4
    timeout -s INT -k 30 "${VM_TEST_BUDGET:-600}" \
        "$py" -m pytest -m "bpf or vm" -p no:cacheprovider -v -ra --durations=15 \
        -o faulthandler_timeout=240 --rootdir "$repo" --junitxml "$out/junit.xml" \
        "${args[@]}" "${paths[@]}"
    local rc=$?
    "$py" - "$out" <<'EOF'
import sys, xml.etree.ElementTree as ET
out = sys.argv[1]
try:
    root = ET.parse(out + "/junit.xml").getroot()
except (OSError, ET.ParseError):
    sys.exit(0)
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
with open(out + "/counts", "w") as f:
    f.write(" ".join("%s=%d" % kv for kv in tot.items()) + "\n")
EOF
    [ $rc -eq 124 ] && log "tests stopped: over the budget of ${VM_TEST_BUDGET:-600} s"
    return $rc
}

start=$(date +%s)
case $mode in
    smoke) smoke 2>&1 | tee "$out/pytest.log"; rc=${PIPESTATUS[0]} ;;
    pytest) run_pytest 2>&1 | tee "$out/pytest.log"; rc=${PIPESTATUS[0]} ;;
    *) log "unknown mode $mode"; rc=2 ;;
esac
log "tests took $(( $(date +%s) - start )) s"
finish "$rc"
