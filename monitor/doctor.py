"""`procsentry doctor`: can this host run the BPF sensor, and if not, what to do about it.

One check a line: PASS / WARN / FAIL, what was found, and for a failure the one remedy.
WARN never fails the run (e.g. mismatched headers: the sensor reads structs through BTF, so
they only need to exist). Exit status 0 only when every required check passes.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from monitor.sensors.bpf import offsets
from monitor.sensors.bpf.btf import BTF, BTFError
from monitor.sensors.bpf.loader import SensorUnavailable, check_privileges, effective_caps
from userspace.procfs import ProcFS, ProcFSError, default_root

TRACEFS = Path("/sys/kernel/tracing")
TRACEPOINTS = ("sched_process_exec", "sched_process_fork", "sched_process_exit")
LOCKDOWN = Path("/sys/kernel/security/lockdown")
MIN_KERNEL = (5, 8)  # bounded loops (5.3), bpf_probe_read_kernel/user (5.5), CAP_BPF (5.8)


@dataclass
class Check:
    name: str
    status: str  # PASS | WARN | FAIL
    detail: str
    remedy: str = ""


def _kernel_version(release: str) -> tuple[int, int]:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def check_privileges_() -> Check:
    if os.geteuid() == 0:
        return Check("privileges", "PASS", "running as root")
    try:
        check_privileges()
        return Check("privileges", "PASS", f"CAP_BPF and CAP_PERFMON (CapEff {effective_caps():#x})")
    except SensorUnavailable:
        return Check("privileges", "FAIL", f"uid {os.geteuid()} without CAP_BPF/CAP_PERFMON",
                     "run as root: sudo procsentry ...")


def check_kernel() -> Check:
    release = os.uname().release
    v = _kernel_version(release)
    if v >= MIN_KERNEL:
        return Check("kernel", "PASS", release)
    return Check("kernel", "FAIL", f"{release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}",
                 "use --sensor connector or --sensor poll on this kernel, or upgrade it")


def check_btf() -> tuple[Check, BTF | None]:
    path = offsets.BTF_PATH
    if not os.path.exists(path):
        return Check("btf", "FAIL", f"{path} is missing",
                     "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (all current distro kernels are)"), None
    try:
        btf = BTF.from_file(path)
        offsets.resolve(btf)
    except (BTFError, offsets.OffsetsError) as e:
        return Check("btf", "FAIL", str(e), "report this kernel version: a struct member moved"), None
    return Check("btf", "PASS", f"{path}: every struct offset the sensor needs resolved"), btf


def _is_dir(path: Path) -> bool | None:
    """True/False, or None when we may not look (tracefs is root-only)."""
    try:
        return path.is_dir()
    except PermissionError:
        return None


def check_tracefs() -> Check:
    mounted = _is_dir(TRACEFS / "events")
    if mounted is None:
        return Check("tracefs", "FAIL", f"cannot look inside {TRACEFS}: permission denied",
                     "run procsentry doctor as root")
    if mounted:
        return Check("tracefs", "PASS", f"mounted at {TRACEFS}")
    return Check("tracefs", "FAIL", f"not mounted at {TRACEFS}",
                 "mount -t tracefs tracefs /sys/kernel/tracing (sudo make run does it)")


def check_tracepoints() -> list[Check]:
    out = []
    for tp in TRACEPOINTS:
        present = _is_dir(TRACEFS / "events" / "sched" / tp)
        if present is None:
            out.append(Check(f"tracepoint:{tp}", "FAIL", "cannot tell: tracefs is root-only",
                             "run procsentry doctor as root"))
        elif present:
            out.append(Check(f"tracepoint:{tp}", "PASS", "present"))
        elif not _is_dir(TRACEFS / "events"):
            out.append(Check(f"tracepoint:{tp}", "FAIL", "cannot tell: tracefs is not mounted",
                             "mount tracefs (sudo make run does it)"))
        else:
            out.append(Check(f"tracepoint:{tp}", "FAIL", "absent",
                             "use a kernel with CONFIG_TRACEPOINTS, or --sensor connector"))
    return out


def check_bcc() -> Check:
    from monitor.sensors.bpf.bccinfo import bcc_module  # noqa: PLC0415
    found = bcc_module()
    if found is None:
        return Check("bcc", "FAIL", "the bcc Python module is not importable",
                     "apt-get install python3-bpfcc (Fedora: dnf install python3-bcc); "
                     "never 'pip install bcc', an unrelated package")
    return Check("bcc", "PASS", f"bcc {found[0]} from {found[1]}")


def headers_release(build: Path) -> str | None:
    """UTS_RELEASE of a headers tree, or None when it has none."""
    for rel in ("include/generated/utsrelease.h", "include/linux/utsrelease.h"):
        try:
            text = (build / rel).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if "UTS_RELEASE" in line and '"' in line:
                return line.split('"')[1]
    return None


def check_headers() -> Check:
    release = os.uname().release
    src = os.environ.get("BCC_KERNEL_SOURCE")
    build = Path(src) if src else Path(f"/lib/modules/{release}/build")
    if not build.exists():
        return Check("headers", "FAIL", f"{build} does not exist",
                     "sudo make run installs headers (the generic ones if none match this kernel)")
    found = headers_release(build.resolve())
    if found == release:
        return Check("headers", "PASS", f"matching headers for {release}")
    return Check("headers", "WARN",
                 f"mismatched fallback: {build} -> {build.resolve()} is for {found or 'an unknown kernel'}, "
                 f"not {release}; bcc compiles with them and every struct offset comes from BTF")


def check_ringbuf(btf: BTF | None) -> Check:
    if btf is not None and btf.has_struct("bpf_ringbuf"):
        return Check("ringbuf", "PASS", "BPF ring buffer supported (procsentry uses the perf buffer)")
    return Check("ringbuf", "WARN", "no BPF ring buffer (kernel < 5.8); the perf buffer is used anyway")


def check_paranoid(fs: ProcFS) -> Check:
    try:
        value = int(fs.read_bytes(None, "sys/kernel/perf_event_paranoid").strip())
    except (ProcFSError, ValueError):
        return Check("perf_event_paranoid", "WARN", "unreadable")
    note = "root and CAP_PERFMON are not limited by it" if value > 1 else "permissive"
    return Check("perf_event_paranoid", "PASS", f"kernel.perf_event_paranoid = {value} ({note})")


def check_lockdown() -> Check:
    try:
        text = LOCKDOWN.read_text().strip()
    except OSError:
        return Check("lockdown", "PASS", "no lockdown LSM interface: not locked down")
    mode = text[text.find("[") + 1:text.find("]")] if "[" in text else text
    if mode == "confidentiality":
        return Check("lockdown", "FAIL", "kernel lockdown=confidentiality forbids reading kernel memory from BPF",
                     "boot with lockdown=integrity or none, or use --sensor connector")
    return Check("lockdown", "PASS", f"lockdown mode: {mode}")


def check_load() -> Check:
    from monitor.sensors.bpf.loader import Sensor  # noqa: PLC0415
    sensor = Sensor(perf_pages=1)
    try:
        sensor.start()
    except SensorUnavailable as e:
        return Check("sensor", "FAIL", str(e), "fix the failures above, then run procsentry doctor again")
    finally:
        sensor.close()
    return Check("sensor", "PASS", "the BPF programs compile, load and attach")


def check_container_identity(fs: ProcFS) -> Check:
    """Can the kernel's cgroup id name a container after its process is gone? Proven on this
    process's own cgroup: its id from name_to_handle_at, resolved back to its path."""
    from userspace import parsers as P  # noqa: PLC0415
    from userspace.cgroups import CgroupResolver, kernfs_id_of  # noqa: PLC0415

    resolver = CgroupResolver(fs)
    try:
        if resolver.method is None:
            if "no cgroup2 mount" in (resolver.reason or ""):
                return Check("container_identity", "WARN",
                             "cgroup v1 only: the kernel's cgroup id is that of the unused v2 root "
                             "(1) for every process, so it names no container; container ids come "
                             "from procfs only, and a container whose processes all exit before "
                             "they are read is not identified",
                             "mount cgroup2 (systemd.unified_cgroup_hierarchy=1 on the kernel command line)")
            return Check("container_identity", "WARN", f"cgroup ids cannot be resolved: {resolver.reason}; "
                         "container ids come from procfs only, for processes still alive when read")
        mount = resolver.mount
        layout = ("v2 only" if resolver.unified_only else
                  "hybrid: v1 hierarchies in use too; a container that a runtime's cgroupfs driver "
                  "puts in v1 hierarchies only is identified from procfs, while a process lives")
        entries = fs.read_parsed("self", "cgroup", P.parse_cgroup)
        own = next((e.path for e in entries if e.hierarchy == 0 and not e.controllers), None)
        if own is None or (own != mount.root and not own.startswith(mount.root.rstrip(b"/") + b"/")):
            return Check("container_identity", "WARN",
                         f"this process's cgroup {own!r} is not under the cgroup2 mount "
                         f"{mount.mount_point!r}; cannot prove ids resolve")
        below = own[len(mount.root.rstrip(b"/")):] or b"/"
        own_dir = mount.mount_point.rstrip(b"/") + (b"" if below == b"/" else below)
        try:
            own_id = kernfs_id_of(own_dir)
        except (OSError, ValueError):
            own_id = os.stat(own_dir).st_ino  # the kernfs ino is the id on 64-bit kernels
        got = resolver.resolve(own_id)
        how = ("open_by_handle_at" if resolver.method == "handle"
               else f"walking the cgroup2 tree (no handles: {resolver.handle_unusable})")
        where = mount.mount_point.decode(errors="backslashreplace")
        if got is None or got.path != own:
            return Check("container_identity", "WARN",
                         f"cgroup2 at {where}, but this process's cgroup id {own_id} resolved to "
                         f"{got.path if got else None!r}, not {own!r}; container ids come from procfs only")
        return Check("container_identity", "PASS",
                     f"cgroup2 at {where} ({layout}); cgroup ids resolve to paths by {how} "
                     f"(this process: {own_id} -> {own.decode(errors='backslashreplace')}): a container "
                     "is named from its first exec on, even when its processes are gone before "
                     "procfs is read")
    finally:
        resolver.close()


def _guarded(name: str, check, *args):
    """A check that crashes is a failed check with the error, never a traceback."""
    try:
        return check(*args)
    except Exception as e:  # noqa: BLE001
        return Check(name, "FAIL", f"the check itself failed: {type(e).__name__}: {e}",
                     "run procsentry doctor as root; report this if it persists")


def run_checks(load: bool = True) -> list[Check]:
    fs = ProcFS(default_root())
    checks = [_guarded("privileges", check_privileges_), _guarded("kernel", check_kernel)]
    try:
        btf_check, btf = check_btf()
    except Exception as e:  # noqa: BLE001
        btf_check, btf = Check("btf", "FAIL", f"{type(e).__name__}: {e}", "run as root"), None
    checks += [btf_check, _guarded("tracefs", check_tracefs)]
    try:
        checks += check_tracepoints()
    except Exception as e:  # noqa: BLE001
        checks.append(Check("tracepoints", "FAIL", f"{type(e).__name__}: {e}", "run as root"))
    checks += [_guarded("bcc", check_bcc), _guarded("headers", check_headers),
               _guarded("ringbuf", check_ringbuf, btf), _guarded("perf_event_paranoid", check_paranoid, fs),
               _guarded("lockdown", check_lockdown)]
    if load and all(c.status != "FAIL" for c in checks):
        checks.append(check_load())
    try:  # not needed to run the sensor: a crash here is a WARN, never a FAIL
        checks.append(check_container_identity(fs))
    except Exception as e:  # noqa: BLE001
        checks.append(Check("container_identity", "WARN", f"the check itself failed: {type(e).__name__}: {e}"))
    checks.append(check_auto_sensor(checks))
    return checks


def check_auto_sensor(checks: list[Check]) -> Check:
    """What `watch --sensor auto` would choose: BPF when nothing above failed, else the first
    fallback that starts here (the connector, else polling), and what it costs."""
    from monitor.sensors.bpf.loader import DISABLE_ENV  # noqa: PLC0415
    from monitor.sensors import probe_auto  # noqa: PLC0415

    failed = [c for c in checks if c.status == "FAIL"]
    if os.environ.get(DISABLE_ENV) == "1" and not failed:
        failed = [Check("sensor", "FAIL", f"the BPF sensor is disabled by {DISABLE_ENV}=1")]
    if not failed:
        return Check("auto_sensor", "PASS", "auto would choose bpf")
    first = failed[0]
    reason = first.detail if first.name == "sensor" else f"{first.name}: {first.detail}"
    name, note = probe_auto(bpf_unavailable=reason)
    return Check("auto_sensor", "WARN", f"auto would choose {name} ({note})")


def main(fmt: str = "text", load: bool = True) -> int:
    checks = run_checks(load)
    ok = all(c.status != "FAIL" for c in checks)
    if fmt == "json":
        sys.stdout.buffer.write(orjson.dumps({"ok": ok, "checks": [asdict(c) for c in checks]},
                                             option=orjson.OPT_APPEND_NEWLINE))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            line = f"{c.status:<4}  {c.name:<{width}}  {c.detail}"
            if c.remedy and c.status == "FAIL":
                line += f"\n      {'':<{width}}  remedy: {c.remedy}"
            print(line)
        print("ready: the BPF sensor can run here" if ok else "not ready: fix the FAIL lines above")
    sys.stdout.flush()
    return 0 if ok else 1
