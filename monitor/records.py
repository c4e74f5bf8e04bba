"""Sensor-neutral records: what every sensor hands the pipeline, whatever it listens to.

A sensor (monitor/sensors/) turns its own input (BPF perf samples, netlink connector messages,
procfs diffs) into these records and nothing else; the pipeline alone applies them to the
process table and decides what to emit. A sensor says what it does not know: None in a field,
and for an exec a `missing` map with the reason (`gone`: the process exited before it could be
read). It never calls back into the pipeline.

Time: ts_ns is CLOCK_MONOTONIC (bpf_ktime_get_ns(), time.monotonic_ns()); the pipeline holds
records in that order. Identity: (pid, start_ticks) with start_ticks as procfs <pid>/stat field
22 (task->start_boottime in clock ticks); None where the sensor cannot tell, and the pipeline
then takes the newest process it knows with that PID.

Records are NamedTuples: one is built per kernel event, and a tuple is the cheapest typed value
to build and to read on that path.
"""
from __future__ import annotations

from typing import NamedTuple

from userspace.types import ProcessSnapshot


class StdioFd(NamedTuple):
    """What descriptor 0, 1 or 2 referred to at exec (named by the sensor, see
    monitor/sensors/bpf/source.py stdio_kind)."""

    fd: int
    kind: str  # closed file dir pipe fifo socket tty chr blk anon other unknown
    inode: int | None = None  # the N of socket:[N] / pipe:[N] in /proc/<pid>/fd, any inode
    dev: str | None = None  # "major:minor" of a character or block device
    family: str | None = None  # sockets: unix, inet, inet6, netlink, ... (AF_*)
    type: str | None = None  # sockets: stream, dgram, raw, seqpacket, ...
    protocol: str | None = None  # inet sockets: tcp, udp, ... (IPPROTO_*)


class ExecRecord(NamedTuple):
    """A process started running a new program (or, observed=True, was seen running one)."""

    ts_ns: int
    pid: int  # tgid
    start_ticks: int | None
    ppid: int | None
    parent_start_ticks: int | None
    comm: bytes | None
    exe: bytes | None
    cwd: bytes | None
    argv: tuple[bytes, ...] | None
    argv_truncated: bool = False
    uid: int | None = None
    euid: int | None = None
    gid: int | None = None
    egid: int | None = None
    tid: int | None = None  # the thread that called execve (it becomes the leader)
    filename: bytes | None = None  # as passed to execve
    argc: int | None = None
    argv_size: int | None = None
    tty: bytes | None = None
    loginuid: int | None = None
    sessionid: int | None = None
    ns: dict[str, int | None] | None = None
    cgroup_id: int | None = None
    exe_deleted: bool = False
    exe_fileless: bool = False
    capture: tuple[str, ...] = ()  # capture flags: truncations and read errors
    # What the sensor read from procfs itself (connector, poll), so the pipeline reads nothing
    # more; None for a kernel-captured exec, which the pipeline enriches from procfs.
    snapshot: ProcessSnapshot | None = None
    # Fields this sensor could not learn, with why ("gone": the process had already exited).
    missing: dict[str, str] | None = None
    # True when the sensor saw the process running rather than the exec itself (polling):
    # already known to the table means already reported.
    observed: bool = False
    kernel_captured: bool = False  # argv/cwd/euid were taken at exec: procfs may differ later
    vpid: int | None = None  # the tgid in the process's own PID namespace
    # The new image's (mm->arg_start, mm->end_code): what ProcKey.image_id hashes, read alike
    # by the sensor and a sweep (procfs <pid>/stat fields 48 and 27); None where unknown.
    layout: tuple[int, int] | None = None
    # The new credentials' capability masks and saved/filesystem uids (kernel sensor: cred at
    # exec; None where the sensor does not know them).
    cap_eff: int | None = None
    cap_prm: int | None = None
    suid: int | None = None
    fsuid: int | None = None
    # Descriptors 0, 1, 2 as the new program inherited them; None where not captured.
    stdio: tuple[StdioFd, ...] | None = None


class ForkRecord(NamedTuple):
    """A new process (not a thread): a copy of its parent until it execs."""

    ts_ns: int
    pid: int
    start_ticks: int
    ppid: int
    parent_start_ticks: int | None  # None: the sensor gives the parent's PID only
    vpid: int | None = None
    parent_layout: tuple[int, int] | None = None  # the forking image's (arg_start, end_code)


class ExitRecord(NamedTuple):
    """The last thread of a process exited."""

    ts_ns: int
    pid: int
    start_ticks: int | None
    status: int | None  # wait(2) status; None where the sensor does not know it
    start_mono_ns: int | None = None  # CLOCK_MONOTONIC start, for the duration
    comm: bytes | None = None


class LostRecord(NamedTuple):
    """count records the sensor lost on cpu (-1: not per CPU) since its last LostRecord."""

    ts_ns: int
    cpu: int
    count: int


class CommRecord(NamedTuple):
    """A running process renamed itself (prctl(PR_SET_NAME), a write to comm)."""

    ts_ns: int
    pid: int
    comm: bytes


class CredRecord(NamedTuple):
    """A running process changed its real/effective uid (what="uid") or gid (what="gid")."""

    ts_ns: int
    pid: int
    what: str
    real: int
    effective: int


class DecodeErrorRecord(NamedTuple):
    """The sensor received something it could not decode (counted, never fatal)."""

    ts_ns: int


Record = ExecRecord | ForkRecord | ExitRecord | LostRecord | CommRecord | CredRecord | DecodeErrorRecord


def lost_since(seen: dict[int, int], totals: dict[int, int], ts_ns: int) -> list[LostRecord]:
    """LostRecords for what a sensor's loss counters (per CPU, running totals) grew by since
    they were last seen; updates seen."""
    out = []
    for cpu, total in totals.items():
        delta = total - seen.get(cpu, 0)
        if delta > 0:
            seen[cpu] = total
            out.append(LostRecord(ts_ns, cpu, delta))
    return out


def exec_from_snapshot(snap: ProcessSnapshot, ts_ns: int, observed: bool = False) -> ExecRecord:
    """A process read from procfs, as an exec record (connector, poll, sweeps)."""
    uids, gids = snap.uids, snap.gids
    ns = None
    if snap.ns is not None:
        ns = {k: getattr(snap.ns, k) for k in NS_NAMES}
    return ExecRecord(
        ts_ns, snap.pid, snap.start_ticks, snap.ppid, None, snap.comm, snap.exe, snap.cwd,
        snap.argv, uid=uids[0] if uids else None, euid=uids[1] if uids else None,
        gid=gids[0] if gids else None, egid=gids[1] if gids else None,
        loginuid=snap.loginuid, sessionid=snap.sessionid, ns=ns,
        exe_deleted=snap.exe_deleted, exe_fileless=snap.exe_memfd, snapshot=snap,
        observed=observed, vpid=snap.vpid, cap_eff=snap.cap_eff, cap_prm=snap.cap_prm,
        suid=uids[2] if uids else None, fsuid=uids[3] if uids else None,
        layout=(snap.arg_start, snap.end_code)
        if snap.arg_start is not None and snap.end_code is not None else None)


# Namespace names in the order the BPF record carries them (and events print them).
NS_NAMES = ("pid", "mnt", "net", "user", "uts", "ipc", "cgroup")
