#!/usr/bin/env bash
# procsentry kernel matrix: boot Debian's current 5.10 (bullseye), 6.1 (bookworm) and 6.12 (trixie)
# kernels under virtme-ng with software emulation and run the kernel tests and the daemon check
# inside each one.
#
#   scripts/test-kernels.sh [SUITE...]     SUITE: bullseye, bookworm, trixie (default: all three,
#                                          one at a time)
#
# What it does, per suite:
#   1. resolves the suite's current kernel ABI from a private apt root (the host's apt state is
#      never touched), e.g. linux-image-amd64 -> linux-image-6.12.118+deb13-amd64;
#   2. fetches that image and its *matching* headers with `apt-get download` and unpacks them with
#      `dpkg -x` (no install) under $VM_DIR/kernels/<abi>/, then links lib/modules/<abi>/{build,source}
#      to the unpacked headers so bcc in the guest compiles against exactly that kernel's headers;
#   3. boots it with `vng --disable-kvm --force-9p` (TCG: this machine has no usable KVM, see
#      VM-TESTING.md) and runs scripts/vm-guest-run.sh, which runs the VM_TESTS checks in one
#      pytest process (so tests/bpf compiles the BPF programs once per boot) and writes junit xml,
#      per-check counts and an exit code into the guest's --rwdir, because without udev `vng`
#      always exits 255;
#   4. prints one line per kernel (verdict, totals, and per check how many of the selected tests
#      passed) and appends it to $VM_DIR/results/test-kernels.txt.
#
# Exit status: 0 only if every kernel booted, every check selected at least one test, and no test
# failed, errored or skipped.
#
# Environment (all optional):
#   VM_DIR        cache and results (default: <repo>/vm, gitignored); downloads are reused
#   VM_MODE       pytest (default) | smoke: a one-file bcc check instead of the suite | fetch:
#                 download and unpack the kernels only, boot nothing
#   VM_CPUS       guest vCPUs (default 1: TCG, 2 host cores shared with builds)
#   VM_MEMORY     guest memory (default 2G)
#   VM_TIMEOUT    seconds one boot may take before it is killed and failed (default 720; the
#                 guest's pytest gets 60 s less, then stops and reports)
#   VM_REFRESH    seconds before the package indexes are refreshed (default 21600)
#   VM_TESTS      the guest's checks, LABEL=PATH words (PATH relative to the repo: a directory, a
#                 file or a node id). Default, selected to fit the time budget (each `procsentry
#                 watch` compiles the sensor again, ~20 s under TCG; tests/bpf shares one compile):
#                   kernel=tests/bpf                  the sensor on this kernel, exact values
#                   daemon=tests/pipeline/test_daemon_check.py
#                                                     procsentry watch end to end, one compile
#                   connector=tests/sensors/test_each_sensor.py::test_process_tree[connector]
#                 Not selected: tests/pipeline/test_containers.py (issue 18), nine watches, a
#                 compile each (~60 s apiece in a 5.10 guest): the daemon check runs its
#                 every-runtime and namespaced-container checks in its one watch instead (the
#                 results line says which cgroup layout the guest booted with), and make test
#                 runs them all.
#   VM_DESELECT   pytest node ids not run in the guest (default: none; under PROCSENTRY_VM=1 the
#                 10,000-exec storm scales to 300 and the loader overflow burst to 150)
#   VM_PYTEST_ARGS extra pytest arguments for the guest (e.g. "-k offsets")
#   PROCSENTRY_VENV  the venv whose python runs in the guest (default: <repo>/.venv)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vm_dir=${VM_DIR:-$repo/vm}
mode=${VM_MODE:-pytest}
cpus=${VM_CPUS:-1}
memory=${VM_MEMORY:-2G}
boot_timeout=${VM_TIMEOUT:-720}
refresh=${VM_REFRESH:-21600}
venv=${PROCSENTRY_VENV:-$repo/.venv}
default_tests=(
    kernel=tests/bpf
    daemon=tests/pipeline/test_daemon_check.py
    "connector=tests/sensors/test_each_sensor.py::test_process_tree[connector]"
)
vm_tests=${VM_TESTS:-${default_tests[*]}}
# Tests that are right natively but cost minutes under TCG (~50x slower process creation): the
# 10,000-exec storm takes ~13 min in a 1-vCPU TCG guest, more than the whole matrix's budget.
vm_deselect=${VM_DESELECT-}
vng_version=1.42
mirror=http://deb.debian.org/debian
security=http://deb.debian.org/debian-security
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

say() { printf 'test-kernels: %s\n' "$*" >&2; }
die() { printf 'test-kernels: error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'test-kernels: remedy: %s\n' "$2" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }

[ "$(id -u)" -eq 0 ] || die "the kernel matrix fetches packages and runs guests as root." "run it as 'sudo make test-kernels'."
[ "$(uname -m)" = x86_64 ] || die "only x86_64 hosts are supported (Debian amd64 kernels)." ""
case $mode in pytest|smoke|fetch) ;; *) die "VM_MODE must be pytest, smoke or fetch, not '$mode'." "" ;; esac
[ -x "$venv/bin/python" ] || die "$venv/bin/python is missing: the guest runs the tests with the host's venv." "run 'sudo make setup' first."
if [ $# -gt 0 ]; then suites=("$@"); else suites=(bullseye bookworm trixie); fi
for s in "${suites[@]}"; do
    case $s in bullseye|bookworm|trixie) ;; *) die "unknown suite '$s'." "use bullseye (5.10), bookworm (6.1) and/or trixie (6.12)." ;; esac
done

# ---------------------------------------------------------------- host tools (idempotent)
apt_updated=0
apt_install() {
    # Install only what is missing; `apt-get update` only if a first try fails (fresh machine).
    local p missing=()
    for p in "$@"; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    say "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null 2>&1; then
        [ $apt_updated -eq 0 ] || die "apt-get install ${missing[*]} failed." "run it by hand to see why."
        apt-get update -qq >/dev/null || die "apt-get update failed." "check the network."
        apt_updated=1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed." "run 'apt-get install ${missing[*]}' by hand to see why."
    fi
}
# qemu-system-x86 runs the guests; kmod and a static busybox are what virtme-ng needs to build the
# initramfs that loads the 9p/virtio modules of a distribution kernel; debian-archive-keyring
# verifies the private apt roots; python3-venv holds virtme-ng.
apt_install qemu-system-x86 qemu-utils kmod busybox-static debian-archive-keyring python3-venv

tools=$vm_dir/tools
vng=$tools/venv/bin/vng
if [ "$("$tools/venv/bin/python" -m pip show virtme-ng 2>/dev/null | awk '/^Version:/ {print $2}')" != "$vng_version" ]; then
    say "installing virtme-ng $vng_version into $tools/venv"
    mkdir -p "$tools"
    [ -x "$tools/venv/bin/python" ] || /usr/bin/python3 -m venv "$tools/venv" || die "cannot create $tools/venv." "install python3-venv."
    "$tools/venv/bin/python" -m pip install -q --disable-pip-version-check "virtme-ng==$vng_version" \
        || die "pip could not install virtme-ng $vng_version." "run '$tools/venv/bin/pip install virtme-ng==$vng_version' to see why."
fi

# ---------------------------------------------------------------- kernels as packages, not installs
apt_root() {
    # A private apt configuration per suite: its own sources, lists, cache and an empty dpkg status.
    local suite=$1 root=$vm_dir/apt/$1
    mkdir -p "$root/etc/preferences.d" "$root/state/lists/partial" "$root/cache/archives/partial"
    [ -e "$root/state/status" ] || : > "$root/state/status"
    cat > "$root/etc/sources.list" <<EOF
deb [signed-by=$keyring] $mirror $suite main
deb [signed-by=$keyring] $mirror $suite-updates main
deb [signed-by=$keyring] $security $suite-security main
EOF
    apt_opts=(-o "Dir::Etc::sourcelist=$root/etc/sources.list" -o Dir::Etc::sourceparts=-
        -o "Dir::Etc::preferencesparts=$root/etc/preferences.d" -o "Dir::State=$root/state"
        -o "Dir::State::status=$root/state/status" -o "Dir::Cache=$root/cache"
        -o APT::Architecture=amd64 -o APT::Architectures::=amd64 -o Acquire::Languages=none
        -o APT::Sandbox::User=root -o Debug::NoLocking=1 -o Acquire::Retries=3 -q)
    local stamp=$root/state/updated age
    age=$(( $(date +%s) - $(stat -c %Y "$stamp" 2>/dev/null || echo 0) ))
    if [ "$age" -ge "$refresh" ]; then
        if apt-get "${apt_opts[@]}" update >"$root/update.log" 2>&1; then
            touch "$stamp"
        elif [ -e "$stamp" ]; then
            say "$suite: could not refresh the package indexes; using the ones from $(date -r "$stamp" '+%F %R')."
        else
            cat "$root/update.log" >&2
            die "$suite: cannot fetch package indexes from $mirror." "check that Debian's mirror is reachable."
        fi
    fi
}

pkg_depends_on() {
    # The first dependency of package $1 (candidate version) that matches the prefix $2.
    apt-cache "${apt_opts[@]}" show --no-all-versions "$1" 2>/dev/null \
        | sed -n 's/^Depends: //p' | tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep -m1 "^$2" || true
}

fetch_kernel() {
    # Sets kdir, abi and vmlinuz for suite $1, downloading and unpacking only what is not cached.
    local suite=$1 image headers common deb
    apt_root "$suite"
    image=$(pkg_depends_on linux-image-amd64 linux-image-)
    abi=${image#linux-image-}
    [ -n "$abi" ] || die "$suite: cannot resolve the kernel ABI from linux-image-amd64." "look at $vm_dir/apt/$suite/update.log."
    headers=$(pkg_depends_on linux-headers-amd64 linux-headers-)
    [ "$headers" = "linux-headers-$abi" ] \
        || die "$suite: linux-image-amd64 points at $abi but linux-headers-amd64 at ${headers#linux-headers-}." "try again after the mirror settles."
    common=$(pkg_depends_on "$headers" "linux-headers-${abi%-amd64}-common")
    [ -n "$common" ] || die "$suite: cannot find the -common headers of $headers." ""
    kdir=$vm_dir/kernels/$abi
    if [ ! -e "$kdir/.unpacked" ]; then
        local debs=$vm_dir/debs/$suite
        mkdir -p "$debs"
        say "$suite: fetching $image $headers $common"
        (cd "$debs" && apt-get "${apt_opts[@]}" download "$image" "$headers" "$common" >/dev/null) \
            || die "$suite: apt-get download failed." "check that Debian's mirror is reachable."
        rm -rf "$kdir"; mkdir -p "$kdir"
        for deb in "$debs/${image}_"*.deb "$debs/${headers}_"*.deb "$debs/${common}_"*.deb; do
            [ -e "$deb" ] || die "$suite: $deb was not downloaded." ""
            dpkg -x "$deb" "$kdir"
        done
        # Drop debs of other ABIs of this suite so the cache stays one kernel per suite.
        find "$debs" -name '*.deb' ! -name "*${abi%-amd64}*" -delete
        touch "$kdir/.unpacked"
        echo "$suite" > "$kdir/.suite"
    fi
    # Other unpacked kernels of this suite are stale (the ABI moved on at a point release).
    local other
    for other in "$vm_dir"/kernels/*/.suite; do
        [ -e "$other" ] || continue
        [ "$(cat "$other")" = "$suite" ] && [ "$(dirname "$other")" != "$kdir" ] && rm -rf "$(dirname "$other")"
    done
    vmlinuz=$kdir/boot/vmlinuz-$abi
    [ -e "$vmlinuz" ] || die "$suite: $vmlinuz is missing from the image package." "delete $kdir and run again."
    # trixie is merged-/usr (usr/lib/modules), bookworm is not (lib/modules).
    local moddir
    for moddir in "$kdir/lib/modules/$abi" "$kdir/usr/lib/modules/$abi" ""; do
        [ -d "$moddir" ] && break
    done
    [ -n "$moddir" ] || die "$suite: no lib/modules/$abi in the image package." "delete $kdir and run again."
    # bcc looks for /lib/modules/$(uname -r)/build (generated headers) and .../source (the tree);
    # the guest sees the host filesystem at the same paths, so absolute links resolve there too.
    ln -sfn "$kdir/usr/src/linux-headers-$abi" "$moddir/build"
    ln -sfn "$kdir/usr/src/$common" "$moddir/source"
}

# ---------------------------------------------------------------- one guest per kernel, in turn
results=$vm_dir/results
mkdir -p "$results"
summary_file=$results/test-kernels.txt
run_id=$(date -u +%Y-%m-%dT%H:%M:%SZ)
total_pass=0 total_fail=0 total_skip=0 failed_kernels=()

run_kernel() {
    local suite=$1 t0 t1 t2 out
    t0=$(now)
    fetch_kernel "$suite"
    t1=$(now)
    out=$results/$suite
    rm -rf "$out"; mkdir -p "$out"
    echo "$abi" > "$out/expected-kernel"
    # What the guest needs to know travels as a file in its --rwdir, not through the kernel cmdline.
    {
        printf 'PROCSENTRY_VM_PYTHON=%q\n' "$venv/bin/python"
        printf 'PROCSENTRY_REPO=%q\n' "$repo"
        printf 'VM_PYTEST_ARGS=%q\n' "${VM_PYTEST_ARGS:-}"
        printf 'VM_TESTS=%q\n' "$vm_tests"
        printf 'VM_DESELECT=%q\n' "$vm_deselect"
        # The guest stops pytest with SIGINT before the host kills the guest, to keep its report.
        printf 'VM_TEST_BUDGET=%d\n' "$(( boot_timeout - 60 ))"
    } > "$out/guest.env"
    say "$suite: booting $abi under TCG (${cpus} vCPU, $memory), mode $mode"
    # `timeout` ends a hung guest (qemu is vng's child); the verdict comes from files in $out.
    set +e
    PATH=$tools/venv/bin:$PATH timeout -k 10 "$boot_timeout" "$vng" --disable-kvm --force-9p \
        --cpus "$cpus" --memory "$memory" --name "procsentry-$suite" -r "$vmlinuz" --verbose \
        --rwdir="$out" --cwd "$repo" \
        -- "$(printf '%q ' bash "$repo/scripts/vm-guest-run.sh" "$out" "$mode")" \
        </dev/null >"$out/console.log" 2>&1
    local vng_rc=$?
    set -e
    t2=$(now)
    local kernel rc ran doctor cgroup v tests=0 failures=0 errors=0 skipped=0 passed=0 boot verdict reason=""
    kernel=$(cat "$out/uname-r" 2>/dev/null || echo "-")
    rc=$(cat "$out/rc" 2>/dev/null || echo "")
    boot=$(cat "$out/boot-seconds" 2>/dev/null || echo "-")
    ran=$(cat "$out/ran" 2>/dev/null || true)
    doctor=$(cat "$out/doctor" 2>/dev/null || echo "-")
    cgroup=$(cat "$out/cgroup" 2>/dev/null || echo "-")
    if [ -e "$out/counts" ]; then
        local k
        for k in tests failures errors skipped; do
            v=$(grep -o "$k=[0-9]*" "$out/counts" | head -1 | cut -d= -f2)
            printf -v "$k" '%d' "${v:-0}"
        done
    fi
    passed=$(( tests - failures - errors - skipped ))
    if [ "$vng_rc" -eq 124 ] || [ "$vng_rc" -eq 137 ]; then reason="timed out after ${boot_timeout}s"
    elif [ "$kernel" = "-" ]; then reason="guest never ran the test script (vng exit $vng_rc)"
    elif [ "$kernel" != "$abi" ]; then reason="guest ran $kernel, not $abi"
    elif [ -z "$rc" ]; then reason="guest test run did not finish"
    elif [ "$rc" -eq 124 ]; then reason="tests stopped after the guest budget of $(( boot_timeout - 60 ))s"
    elif [ "$rc" -ne 0 ]; then reason="guest tests exited $rc"
    elif [ "$tests" -eq 0 ] || [ "$passed" -le 0 ]; then reason="no test ran"
    elif [ "$skipped" -gt 0 ]; then reason="$skipped kernel test(s) skipped"
    elif [ -z "$ran" ]; then reason="no per-check counts from the guest"
    elif grep -qE '(^| )[^ :]+:[0-9]+/0( |,|$)' <<<"$ran"; then reason="a check selected no test"
    elif [[ $doctor != ready* ]]; then reason="procsentry doctor is not ready here: $doctor"
    fi
    if [ -z "$reason" ]; then verdict=PASS; else verdict=FAIL; failed_kernels+=("$suite"); fi
    total_pass=$(( total_pass + (passed > 0 ? passed : 0) ))
    total_skip=$(( total_skip + skipped ))
    local line
    line=$(printf '%s  %-8s  %-24s  %-4s  tests=%d passed=%d failed=%d errors=%d skipped=%d  boot=%ss fetch=%ss guest=%ss  ran: %s  doctor: %s  cgroup: %s%s' \
        "$run_id" "$suite" "$kernel" "$verdict" "$tests" "$passed" "$failures" "$errors" "$skipped" \
        "$boot" "$(elapsed "$t0" "$t1")" "$(elapsed "$t1" "$t2")" "${ran:--}" "$doctor" "$cgroup" "${reason:+  ($reason)}")
    echo "$line" >> "$summary_file"
    # A kernel that failed without a failing test (no boot, no tests) still counts as one failure.
    if [ "$verdict" = FAIL ] && [ $(( failures + errors )) -eq 0 ]; then failures=1; fi
    total_fail=$(( total_fail + failures + errors ))
    echo "$line"
    if [ "$verdict" = FAIL ]; then
        local shown=$out/console.log
        [ -s "$out/pytest.log" ] && shown=$out/pytest.log
        say "$suite: last lines of $shown:"
        tail -n 40 "$shown" | sed 's/^/    /' >&2
    fi
}

if [ "$mode" = fetch ]; then
    # Downloads only (CI caches, or preparing while another guest runs): no boot, no result line.
    for s in "${suites[@]}"; do fetch_kernel "$s"; say "$s: $abi ready in $kdir"; done
    exit 0
fi
for s in "${suites[@]}"; do run_kernel "$s"; done

say "results in $summary_file; per-kernel logs and junit xml in $results/<suite>/"
if [ ${#failed_kernels[@]} -gt 0 ]; then
    say "FAILED on: ${failed_kernels[*]}"
fi
# The plain closing line that CI reads (tests summed over the kernels).
echo "test-kernels: $total_pass passed, $total_fail failed, $total_skip skipped"
[ ${#failed_kernels[@]} -eq 0 ]
