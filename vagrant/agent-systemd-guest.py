#!/usr/bin/python3
"""The checks of `sudo make test-service`, run inside its guest (systemd as PID 1) as root.

vagrant/agent-systemd-check.sh boots the guest, runs `sudo make install` / `make uninstall`
over ssh, reboots it, and calls this script once per phase:

    agent-systemd-guest.py boot           PID 1 is systemd, headers match the kernel, bcc imports
    agent-systemd-guest.py installed      files and modes, unit enabled and active, it streams
    agent-systemd-guest.py reinstalled    a second install with the same sources left it running
    agent-systemd-guest.py rebooted       after a reboot: started at boot, streams, clean previous end
    agent-systemd-guest.py killed         systemctl kill -s KILL: systemd restarts it, it streams
    agent-systemd-guest.py hardening      systemctl show and /proc/<MainPID> agree with the unit
    agent-systemd-guest.py logrotate      the logrotate snippet rotates; SIGHUP reopens, no restart
    agent-systemd-guest.py uninstalled    unit, venv, settings gone; data directories kept
    agent-systemd-guest.py purged         PURGE=1: the data directories gone too

Each check prints one line, `PASS name: evidence` or `FAIL name: evidence`; the exit status is 1
if any failed. What one phase learns for a later one (MainPID, boot id) is kept in STATE, on the
guest's disk, so it survives the reboot.
"""
from __future__ import annotations

import calendar
import glob
import json
import os
import secrets
import subprocess
import sys
import time

UNIT = "procsentry.service"
LOGDIR = "/var/log/procsentry"
EVENTS = f"{LOGDIR}/events.jsonl"
DATADIRS = ("/var/lib/procsentry", "/var/log/procsentry", "/var/cache/procsentry")
STATE = "/root/agent-check.json"
# The unit's CapabilityBoundingSet= and AmbientCapabilities= (capability numbers from
# linux/capability.h): what /proc/<pid>/status must show for the running agent.
CAPS = {"cap_dac_read_search": 2, "cap_net_admin": 12, "cap_sys_ptrace": 19,
        "cap_perfmon": 38, "cap_bpf": 39}
DROPIN = "/etc/systemd/system/procsentry.service.d/perf-event-paranoid.conf"


def paranoid() -> int:
    with open("/proc/sys/kernel/perf_event_paranoid") as f:
        return int(f.read())


def expected_caps() -> dict[str, int]:
    """The unit's five, plus CAP_SYS_ADMIN from make install's drop-in where
    kernel.perf_event_paranoid > 2 (Debian's default 3: perf_event_open needs it there)."""
    return {**CAPS, "cap_sys_admin": 21} if paranoid() > 2 else dict(CAPS)

failures = 0


def check(name: str, ok: bool, evidence: str) -> bool:
    global failures
    failures += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {evidence}", flush=True)
    return ok


def note(text: str) -> None:
    print(f"  {text}", flush=True)


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def until(seconds: float, probe):
    """probe() until it returns something true, at most `seconds`; its last value either way."""
    end = time.monotonic() + seconds
    while True:
        value = probe()
        if value or time.monotonic() > end:
            return value
        time.sleep(2)


def show(*props: str) -> dict[str, str]:
    out = run("systemctl", "show", UNIT, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def load_state() -> dict:
    try:
        with open(STATE) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def save_state(**kv) -> None:
    state = load_state()
    state.update(kv)
    with open(STATE, "w") as f:
        json.dump(state, f)


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def boot_time() -> int:
    with open("/proc/stat") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("btime "))


def event_epoch(ev: dict) -> int:
    """An event's `time` (UTC, 2026-12-01T17:10:00.123456789Z) in whole seconds since the epoch."""
    return calendar.timegm(time.strptime(ev["time"][:19], "%Y-%m-%dT%H:%M:%S"))


def events(current_only: bool = False) -> list[dict]:
    """Every event in the events files (the rotated, uncompressed ones too), oldest file first."""
    paths = [EVENTS] if current_only else sorted(
        (p for p in glob.glob(EVENTS + "*") if not p.endswith(".gz")), reverse=True)
    out = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:  # a line being written
                pass
    return out


def short(ev: dict) -> str:
    keys = ("event", "time", "pid", "ppid", "exec_id", "exe", "argv", "sensor", "source",
            "previous_end", "version")
    return json.dumps({k: ev[k] for k in keys if k in ev})


def main_pid() -> int:
    return int(show("MainPID").get("MainPID") or 0)


def streams(name: str, timeout: float = 240, current_only: bool = False) -> bool:
    """Run a process with a unique argv (spaces, an empty argument) and find its exec event, by
    its PID, with exactly that argv."""
    tag = f"procsentry-check-{name}-{secrets.token_hex(4)}"
    argv = ["/bin/sh", "-c", "exit 0", tag, "two words", ""]
    p = subprocess.Popen(argv)
    p.wait()

    def seen():
        return [e for e in events(current_only) if e.get("event") == "exec" and e.get("pid") == p.pid]

    t0 = time.monotonic()
    found = until(timeout, lambda: [e for e in seen() if e.get("argv") == argv])
    took = time.monotonic() - t0
    if found:
        return check(f"{name}.streams", True,
                     f"pid {p.pid} argv {json.dumps(argv)} seen after {took:.1f}s: {short(found[0])}")
    others = seen()
    return check(f"{name}.streams", False,
                 f"no exec event for pid {p.pid} with argv {json.dumps(argv)} within {timeout}s"
                 + (f"; events of that pid: {[short(e) for e in others]}" if others else ""))


def starts() -> list[dict]:
    return [e for e in events() if e.get("event") == "start"]


def wait_active(name: str, timeout: float = 300) -> bool:
    state = until(timeout, lambda: (s := show("ActiveState", "SubState", "MainPID"))
                  ["ActiveState"] == "active" and s)
    s = show("ActiveState", "SubState", "MainPID", "NRestarts", "ExecMainStartTimestamp")
    return check(f"{name}.active", bool(state), " ".join(f"{k}={v}" for k, v in s.items()))


def journal_since(cursor_time: str) -> str:
    return run("journalctl", "-u", UNIT, "--no-pager", "-o", "short-monotonic",
               "--since", cursor_time).stdout


# ------------------------------------------------------------------------------------------------
def phase_boot() -> None:
    with open("/proc/1/comm") as f:
        comm = f.read().strip()
    check("boot.pid1", comm == "systemd", f"PID 1 is {comm!r}")
    r = run("timeout", "300", "systemctl", "is-system-running", "--wait")
    check("boot.system", r.stdout.strip() in ("running", "degraded"),
          f"systemctl is-system-running: {r.stdout.strip()}"
          + ("" if r.stdout.strip() == "running" else
             "; failed units: " + run("systemctl", "--failed", "--plain", "--no-legend").stdout.strip()))
    kernel = os.uname().release
    build = os.path.realpath(f"/lib/modules/{kernel}/build")
    check("boot.headers", os.path.exists(f"{build}/include/generated/autoconf.h")
          and build.endswith(kernel), f"kernel {kernel}, /lib/modules/{kernel}/build -> {build}")
    r = run("/usr/bin/python3", "-c", "import bcc; print(bcc.__file__)")
    check("boot.bcc", r.returncode == 0, (r.stdout or r.stderr).strip())
    r = run("systemctl", "cat", UNIT)
    check("boot.not_installed", r.returncode != 0 and not os.path.exists("/opt/procsentry"),
          f"systemctl cat {UNIT}: exit {r.returncode}; /opt/procsentry absent")
    save_state(boot1=boot_id())
    note(f"boot id {boot_id()}")


def phase_installed(repo: str) -> None:
    files = {"/etc/systemd/system/procsentry.service": 0o644, "/etc/logrotate.d/procsentry": 0o644,
             "/etc/procsentry/procsentry.toml": 0o600, "/opt/procsentry/bin/procsentry": 0o755}
    for path, mode in files.items():
        st = os.stat(path) if os.path.exists(path) else None
        check(f"installed.file:{path}", st is not None and (st.st_mode & 0o7777) == mode and st.st_uid == 0,
              f"mode {oct(st.st_mode & 0o7777)} uid {st.st_uid}" if st else "missing")
    for path in DATADIRS:
        st = os.stat(path) if os.path.exists(path) else None
        check(f"installed.dir:{path}", st is not None and (st.st_mode & 0o777) == 0o700,
              f"mode {oct(st.st_mode & 0o777)}" if st else "missing")
    level = paranoid()
    check("installed.paranoid_dropin", os.path.exists(DROPIN) == (level > 2),
          f"kernel.perf_event_paranoid {level}; {DROPIN} {'present' if os.path.exists(DROPIN) else 'absent'}")
    link = "/usr/local/bin/procsentry"
    check("installed.link", os.path.islink(link) and os.readlink(link) == "/opt/procsentry/bin/procsentry",
          f"{link} -> {os.readlink(link) if os.path.islink(link) else 'missing'}")
    with open(f"{repo}/contrib/procsentry.service", "rb") as a, \
            open("/etc/systemd/system/procsentry.service", "rb") as b:
        check("installed.unit_is_contrib", a.read() == b.read(), "equal to contrib/procsentry.service")
    with open("/opt/procsentry/pyvenv.cfg") as f:
        cfg = f.read()
    check("installed.venv", "include-system-site-packages = true" in cfg,
          " ".join(line for line in cfg.splitlines() if line.startswith(("home", "include"))))
    r = run("/opt/procsentry/bin/python", "-c", "import bcc, monitor; print(bcc.__file__, monitor.__file__)")
    check("installed.venv_imports", r.returncode == 0 and "/opt/procsentry/lib/" in r.stdout,
          (r.stdout or r.stderr).strip())
    r = run("/opt/procsentry/bin/procsentry", "config", "check")
    check("installed.config_check", r.returncode == 0, f"exit {r.returncode}")
    r = run("systemctl", "is-enabled", UNIT)
    check("installed.enabled", r.stdout.strip() == "enabled",
          f"is-enabled: {r.stdout.strip()}; {os.path.islink('/etc/systemd/system/multi-user.target.wants/procsentry.service') and 'multi-user.target.wants link present' or 'no wants link'}")
    wait_active("installed")
    first = until(300, starts)
    check("installed.start_event", bool(first), short(first[-1]) if first else "no start event")
    if first:
        check("installed.sensor_bpf", first[-1].get("sensor") == "bpf", f"sensor {first[-1].get('sensor')}")
    streams("installed")
    r = until(120, lambda: (x := run("/usr/local/bin/procsentry", "status")).returncode == 0 and x)
    check("installed.status", bool(r), (r.stdout.splitlines()[0] if r else
                                        run("/usr/local/bin/procsentry", "status").stdout.strip()[:300]))
    s = show("MainPID", "NRestarts", "ExecMainStartTimestampMonotonic")
    save_state(installed_pid=int(s["MainPID"]), installed_start=s["ExecMainStartTimestampMonotonic"],
               installed_starts=len(starts()))


def phase_reinstalled() -> None:
    state = load_state()
    s = show("MainPID", "ActiveState", "ExecMainStartTimestampMonotonic")
    check("reinstalled.not_restarted", int(s["MainPID"]) == state["installed_pid"]
          and s["ExecMainStartTimestampMonotonic"] == state["installed_start"] and s["ActiveState"] == "active",
          f"MainPID {s['MainPID']} (was {state['installed_pid']}), {s['ActiveState']}, "
          f"start events {len(starts())} (were {state['installed_starts']})")


def phase_rebooted() -> None:
    state = load_state()
    now = boot_id()
    check("rebooted.new_boot", now != state.get("boot1"), f"boot id {state.get('boot1')} -> {now}")
    r = run("systemctl", "is-enabled", UNIT)
    check("rebooted.enabled", r.stdout.strip() == "enabled", f"is-enabled: {r.stdout.strip()}")
    wait_active("rebooted")
    s = show("NRestarts", "ExecMainStartTimestampMonotonic", "MainPID")
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    check("rebooted.started_by_systemd_at_boot", s["NRestarts"] == "0" and int(s["MainPID"]) > 0,
          f"MainPID {s['MainPID']} started {int(s['ExecMainStartTimestampMonotonic']) / 1e6:.1f}s after "
          f"boot (uptime now {up:.0f}s), NRestarts {s['NRestarts']}")
    r = run("journalctl", "-b", "-u", UNIT, "--no-pager", "-o", "short-monotonic")
    note("journal of this boot:\n    " + "\n    ".join(r.stdout.splitlines()[:8]))
    # The start event of this boot: written after the kernel booted.
    booted = boot_time()
    found = until(300, lambda: [e for e in starts() if event_epoch(e) >= booted])
    check("rebooted.start_event", bool(found), short(found[-1]) if found else "no start event after the reboot")
    if found:
        check("rebooted.previous_end_clean", found[-1].get("previous_end") == "clean",
              f"previous_end {found[-1].get('previous_end')} (the shutdown stopped it with SIGTERM)")
    streams("rebooted")


def phase_killed() -> None:
    before = show("MainPID", "NRestarts")
    pid0, n0 = int(before["MainPID"]), int(before["NRestarts"])
    starts0 = len(starts())
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    r = run("systemctl", "kill", "-s", "KILL", UNIT)
    check("killed.kill", r.returncode == 0, f"systemctl kill -s KILL {UNIT}: exit {r.returncode}, MainPID was {pid0}")
    new = until(120, lambda: (s := show("MainPID", "ActiveState", "NRestarts"))["ActiveState"] == "active"
                and int(s["MainPID"]) not in (0, pid0) and s)
    s = show("MainPID", "ActiveState", "SubState", "NRestarts", "Result")
    check("killed.restarted", bool(new) and int(s["NRestarts"]) == n0 + 1,
          f"MainPID {pid0} -> {s['MainPID']}, NRestarts {n0} -> {s['NRestarts']}, {s['ActiveState']}/{s['SubState']}")
    journal = journal_since(since)
    lines = [x for x in journal.splitlines() if "KILL" in x or "restart" in x.lower() or "Started" in x]
    check("killed.journal", any("status=9/KILL" in x for x in lines) and any("Scheduled restart job" in x for x in lines),
          " | ".join(x.split("]: ", 1)[-1] for x in lines))
    found = until(300, lambda: starts()[starts0:])
    check("killed.previous_end_crash", bool(found) and found[-1].get("previous_end") == "crash",
          short(found[-1]) if found else "no start event after the kill")
    streams("killed")


def phase_hardening() -> None:
    props = ("CapabilityBoundingSet", "AmbientCapabilities", "NoNewPrivileges", "ProtectSystem",
             "ProtectHome", "PrivateTmp", "Restart", "RestartUSec", "StartLimitBurst",
             "StartLimitIntervalUSec", "LimitMEMLOCK", "RestrictSUIDSGID", "LockPersonality",
             "RestrictRealtime", "ProtectKernelModules", "ProtectKernelLogs", "ProtectKernelTunables",
             "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RemoveIPC",
             "SystemCallArchitectures", "RestrictAddressFamilies", "RestrictNamespaces", "UMask",
             "StateDirectory", "CacheDirectory", "LogsDirectory", "RestartPreventExitStatus", "User")
    s = show(*props)
    for k in props:
        note(f"{k}={s.get(k, '')}")
    want = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "read-only",
            "PrivateTmp": "yes", "Restart": "on-failure", "RestartUSec": "2s", "StartLimitBurst": "5",
            "StartLimitIntervalUSec": "10min", "LimitMEMLOCK": "infinity", "RestrictSUIDSGID": "yes",
            "LockPersonality": "yes", "RestrictRealtime": "yes",
            "ProtectKernelLogs": "yes", "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes",
            "ProtectClock": "yes", "ProtectHostname": "yes", "RemoveIPC": "yes",
            "SystemCallArchitectures": "native",
            "RestrictNamespaces": "yes", "UMask": "0077", "StateDirectory": "procsentry",
            "CacheDirectory": "procsentry", "LogsDirectory": "procsentry"}
    for k, v in want.items():
        check(f"hardening.show.{k}", s.get(k) == v, f"{k}={s.get(k)} (unit: {v})")
    caps = expected_caps()
    note(f"DropInPaths={show('DropInPaths').get('DropInPaths')}")
    for k, v in (("CapabilityBoundingSet", caps), ("AmbientCapabilities", caps),
                 ("RestrictAddressFamilies", ("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"))):
        check(f"hardening.show.{k}", sorted(s.get(k, "").split()) == sorted(v), f"{k}={s.get(k)}")
    pid = main_pid()
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Uid"):
        note(f"/proc/{pid}/status {field}: {status.get(field)}")
    mask = sum(1 << n for n in caps.values())
    for field in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        check(f"hardening.proc.{field}", int(status[field], 16) == mask,
              f"{status[field]} (the unit's {', '.join(sorted(caps))}: {mask:016x})")
    check("hardening.proc.NoNewPrivs", status["NoNewPrivs"] == "1", f"NoNewPrivs {status['NoNewPrivs']}")
    check("hardening.proc.Seccomp", status["Seccomp"] == "2",
          f"Seccomp {status['Seccomp']} (filter mode: SystemCallArchitectures, RestrictAddressFamilies, ...)")
    check("hardening.proc.uid0", status["Uid"].split()[:2] == ["0", "0"], f"Uid {status['Uid']}")
    # ProtectSystem=strict, ProtectHome=read-only, PrivateTmp: the agent's mount namespace.
    mounts = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            mounts.append((fields[4], fields[5].split(","), fields[3]))

    def mount_of(path: str):
        # The last of the longest matching mount points: a later mount on the same point hides
        # the earlier ones.
        return max((m for m in reversed(mounts) if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
                   key=lambda m: len(m[0]))

    for path, mode in (("/usr", "ro"), ("/etc", "ro"), ("/opt/procsentry", "ro"), ("/home", "ro"),
                       ("/var/log/procsentry", "rw"), ("/var/lib/procsentry", "rw"),
                       ("/var/cache/procsentry", "rw"), ("/tmp", "rw")):
        mnt, opts, root = mount_of(path)
        check(f"hardening.mount:{path}", mode in opts, f"{path} on {mnt} ({opts[0]}, root {root})")
    mnt, _, root = mount_of("/tmp")
    check("hardening.private_tmp", mnt == "/tmp" and "systemd-private-" in root, f"/tmp is {root}")


def phase_logrotate() -> None:
    pid0 = main_pid()
    r = run("logrotate", "-f", "/etc/logrotate.d/procsentry")
    check("logrotate.run", r.returncode == 0, f"logrotate -f /etc/logrotate.d/procsentry: exit {r.returncode} {r.stderr.strip()}")
    files = sorted(os.listdir(LOGDIR))
    check("logrotate.rotated", f"{os.path.basename(EVENTS)}.1" in files, f"{LOGDIR}: {' '.join(files)}")
    # SIGHUP (the snippet's postrotate): the agent reopens events.jsonl by name, same process.
    streams("logrotate", current_only=True)
    check("logrotate.same_process", main_pid() == pid0, f"MainPID {pid0} -> {main_pid()}")
    st = os.stat(EVENTS)
    check("logrotate.mode", (st.st_mode & 0o777) == 0o600, f"{EVENTS} mode {oct(st.st_mode & 0o777)}")


def phase_uninstalled() -> None:
    r = run("systemctl", "status", UNIT, "--no-pager")
    check("uninstalled.unit_unknown", r.returncode == 4,
          f"systemctl status: exit {r.returncode}: {(r.stderr or r.stdout).strip()[:200]}")
    r = run("systemctl", "list-units", "--all", "--plain", "--no-legend", "procsentry*")
    check("uninstalled.no_unit_loaded", r.stdout.strip() == "", f"list-units --all procsentry*: {r.stdout.strip()!r}")
    r = run("systemctl", "list-unit-files", "--plain", "--no-legend", "procsentry*")
    check("uninstalled.no_unit_file", r.stdout.strip() == "", f"list-unit-files procsentry*: {r.stdout.strip()!r}")
    r = run("pgrep", "-af", "/opt/procsentry")
    check("uninstalled.no_process", r.returncode == 1, f"pgrep -af /opt/procsentry: {r.stdout.strip()!r}")
    for path in ("/etc/systemd/system/procsentry.service", "/etc/systemd/system/multi-user.target.wants/procsentry.service",
                 os.path.dirname(DROPIN),
                 "/opt/procsentry", "/etc/procsentry", "/etc/logrotate.d/procsentry", "/usr/local/bin/procsentry"):
        check(f"uninstalled.gone:{path}", not os.path.lexists(path), "absent" if not os.path.lexists(path) else "still there")
    for path in DATADIRS:
        check(f"uninstalled.kept:{path}", os.path.isdir(path),
              f"kept: {' '.join(sorted(os.listdir(path)))}" if os.path.isdir(path) else "removed")


def phase_purged() -> None:
    for path in DATADIRS:
        check(f"purged.gone:{path}", not os.path.lexists(path), "absent" if not os.path.lexists(path) else "still there")


def main() -> int:
    phase = sys.argv[1]
    {"boot": phase_boot, "installed": lambda: phase_installed(sys.argv[2]), "reinstalled": phase_reinstalled,
     "rebooted": phase_rebooted, "killed": phase_killed, "hardening": phase_hardening,
     "logrotate": phase_logrotate, "uninstalled": phase_uninstalled, "purged": phase_purged}[phase]()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
