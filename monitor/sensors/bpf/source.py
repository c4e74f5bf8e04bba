"""The BPF sensor as a source of sensor-neutral records (monitor/records.py).

Decodes the perf samples (wire.py) and turns each into an ExecRecord, ForkRecord or ExitRecord;
loss counts become LostRecords. What the kernel captured is exact at exec time, so exec records
are `kernel_captured`: procfs may only add to them (or disagree later, `differs`).
"""
from __future__ import annotations

from monitor.records import (NS_NAMES, DecodeErrorRecord, ExecRecord, ExitRecord, ForkRecord,
                             StdioFd, lost_since)
from monitor.sensors.bpf import limits, wire
from userspace.types import NSEC_PER_TICK

# Capture flags (bpf/events.h EXEC_*) by the names events carry in `capture`.
CAPTURE_FLAG_NAMES = (
    (wire.ARGV_TRUNCATED, "argv_truncated"),
    (wire.ARGV_READ_ERROR, "argv_read_error"),
    (wire.FILENAME_TRUNCATED, "filename_truncated"),
    (wire.EXE_UNLINKED, "exe_unlinked"),
    (wire.EXE_DETACHED, "exe_detached"),
    (wire.EXE_TRUNCATED, "exe_truncated"),
    (wire.EXE_ERROR, "exe_read_error"),
    (wire.CWD_DETACHED, "cwd_detached"),
    (wire.CWD_TRUNCATED, "cwd_truncated"),
    (wire.CWD_ERROR, "cwd_read_error"),
    (wire.NO_MM, "no_mm"),
    (wire.NO_FILES, "stdio_read_error"),
)
_ANY_FLAG = 0
for _bit, _name in CAPTURE_FLAG_NAMES:
    _ANY_FLAG |= _bit
_PATH_TRUNCATED = wire.EXE_TRUNCATED | wire.CWD_TRUNCATED
# What a truncated exe or cwd starts with instead of "/": only its leaf end was captured.
TRUNCATED_PATH_PREFIX = b"..."


# Superblock magics (include/uapi/linux/magic.h) that name what an inode is beyond its mode.
PIPEFS_MAGIC = 0x50495045
ANON_INODE_FS_MAGIC = 0x09041934
# S_IFMT kinds (include/uapi/linux/stat.h)
_S_IFMT = 0o170000
_KIND_BY_FMT = {0o140000: "socket", 0o100000: "file", 0o040000: "dir", 0o020000: "chr",
                0o060000: "blk", 0o010000: "fifo", 0o120000: "other"}
# AF_* (include/linux/socket.h), SOCK_* (include/linux/net.h), IPPROTO_* (uapi/linux/in.h)
SOCK_FAMILIES = {1: "unix", 2: "inet", 10: "inet6", 16: "netlink", 17: "packet", 40: "vsock"}
SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 4: "rdm", 5: "seqpacket", 6: "dccp", 10: "packet"}
IP_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite",
                262: "mptcp"}
_INET = (2, 10)


def _is_tty(major: int, minor: int) -> bool:
    """Terminal devices by their major number (Documentation/admin-guide/devices.txt): 4 virtual
    consoles and serial ports, 5:0 /dev/tty, 5:1 /dev/console, 136-143 Unix98 pty slaves
    (/dev/pts/N), 204 low-density serial ports, 188 USB serial."""
    return major in (4, 188, 204) or 136 <= major <= 143 or (major == 5 and minor <= 1)


def stdio_kind(fd: int, s: wire.RawStdio) -> StdioFd:
    """A wire stdio slot, named: the kind from the inode's mode (and, where the mode alone does
    not tell, its superblock: a pipe(2) is a FIFO on pipefs, an eventfd/epoll/timerfd/signalfd a
    file of anon_inodefs), the device number of a device, the family/type/protocol of a
    socket."""
    if s.state != wire.STDIO_OPEN:
        return StdioFd(fd, "closed" if s.state == wire.STDIO_CLOSED else "unknown")
    kind = _KIND_BY_FMT.get(s.mode & _S_IFMT, "other")
    if s.sb_magic == ANON_INODE_FS_MAGIC:
        kind = "anon"
    elif kind == "fifo" and s.sb_magic == PIPEFS_MAGIC:
        kind = "pipe"
    elif kind == "socket":
        fam = s.sock_family
        return StdioFd(fd, kind, s.ino, None, SOCK_FAMILIES.get(fam, f"af{fam}"),
                       SOCK_TYPES.get(s.sock_type, str(s.sock_type)),
                       IP_PROTOCOLS.get(s.sock_protocol, str(s.sock_protocol))
                       if fam in _INET and s.sock_protocol else None)
    if kind in ("chr", "blk"):
        major, minor = s.rdev >> 20, s.rdev & 0xFFFFF  # kernel dev_t: MINORBITS 20
        if kind == "chr" and _is_tty(major, minor):
            kind = "tty"
        return StdioFd(fd, kind, s.ino, f"{major}:{minor}")
    return StdioFd(fd, kind, s.ino)


_new = tuple.__new__  # builds a record without NamedTuple's Python-level __new__ (per-event path)


def exec_record(r: wire.RawExec) -> ExecRecord:
    flags = r.flags
    # A memfd (or other anonymous file) has no path on disk: the walk ends at a pseudo root
    # named "memfd:...". Unlinked without that is a deleted file.
    fileless = bool(flags & wire.EXE_DETACHED) and (r.exe or b"").startswith(b"/memfd:")
    exe, cwd = r.exe, r.cwd
    if flags & _PATH_TRUNCATED:
        # The walk kept the leaf end of a path deeper or longer than its limits: "/" + that
        # tail would be an absolute path that does not exist (a payload nested past the depth
        # under /tmp, out of every rule's and filter's reach), so the tail says it is one.
        if flags & wire.EXE_TRUNCATED and exe is not None:
            exe = TRUNCATED_PATH_PREFIX + exe
        if flags & wire.CWD_TRUNCATED and cwd is not None:
            cwd = TRUNCATED_PATH_PREFIX + cwd
    ppid = r.ppid
    loginuid, sessionid = r.loginuid, r.sessionid
    # Every field, in ExecRecord's order (tests/monitor/test_records.py checks it against the
    # keyword form).
    return _new(ExecRecord, (
        r.ts_ns, r.tgid, r.start_boottime // NSEC_PER_TICK, ppid or None,
        r.parent_start_boottime // NSEC_PER_TICK if ppid else None,
        r.comm, exe, cwd, r.argv, bool(flags & wire.ARGV_TRUNCATED),
        r.uid, r.euid, r.gid, r.egid, r.old_tid, r.filename, r.argc, r.argv_size, r.tty,
        None if loginuid == wire.UNSET_ID else loginuid,
        None if sessionid == wire.UNSET_ID else sessionid,
        _ns_dict(r.ns), r.cgroup_id, bool(flags & wire.EXE_UNLINKED) and not fileless,
        fileless,
        tuple(name for bit, name in CAPTURE_FLAG_NAMES if flags & bit) if flags & _ANY_FLAG else (),
        None, None, False, True, r.vpid, (r.arg_start, r.end_code) if r.arg_start else None,
        r.cap_effective, r.cap_permitted, r.suid, r.fsuid, _named_stdio(r.stdio)))


def _ns_dict(ns: tuple[int, ...]) -> dict[str, int]:
    """The namespaces as events print them; the few distinct sets of a host are built once and
    shared (never mutated downstream: records and events are values)."""
    got = _NS.get(ns)
    if got is None:
        if len(_NS) >= 4096:
            _NS.clear()
        got = _NS[ns] = dict(zip(NS_NAMES, ns))
    return got


_NS: dict[tuple[int, ...], dict[str, int]] = {}


def _named_stdio(raw: tuple) -> tuple[StdioFd, StdioFd, StdioFd]:
    """stdio_kind of the three slots, once per distinct triple (wire reuses equal triples)."""
    got = _NAMED.get(raw)
    if got is None:
        if len(_NAMED) >= 4096:
            _NAMED.clear()
        got = _NAMED[raw] = (stdio_kind(0, raw[0]), stdio_kind(1, raw[1]), stdio_kind(2, raw[2]))
    return got


_NAMED: dict[tuple, tuple[StdioFd, StdioFd, StdioFd]] = {}


def fork_record(r: wire.RawFork) -> ForkRecord:
    return ForkRecord(r.ts_ns, r.tgid, r.start_boottime // NSEC_PER_TICK, r.parent_tgid,
                      r.parent_start_boottime // NSEC_PER_TICK, r.vpid,
                      (r.arg_start, r.end_code) if r.arg_start else None)


def exit_record(r: wire.RawExit) -> ExitRecord:
    return ExitRecord(r.ts_ns, r.tgid, r.start_boottime // NSEC_PER_TICK, r.exit_code,
                      r.start_time, r.comm)


_CONVERT = {wire.RawExec: exec_record, wire.RawFork: fork_record, wire.RawExit: exit_record}


class BpfSource:
    name = "bpf"

    def __init__(self, perf_pages: int = limits.PERF_PAGES,
                 wakeup_events: int = limits.WAKEUP_EVENTS, record_to=None) -> None:
        from monitor.sensors.bpf.loader import Sensor  # noqa: PLC0415 - bcc only where used
        self.sensor = Sensor(perf_pages=perf_pages, wakeup_events=wakeup_events)
        self.record_to = record_to  # file object: raw records as hex lines (monitor --record)
        self._lost_seen: dict[int, int] = {}

    def start(self) -> None:
        self.sensor.start()

    def poll(self, timeout_ms: int) -> None:
        self.sensor.poll(min(timeout_ms, self.sensor.max_block_ms))

    def sync(self) -> None:
        """Read every sample already in the rings, without waiting. The tracepoints submit
        synchronously (an exec's record is in its CPU's ring before execve returns, an exit's
        before the task is reaped), so after sync() every record of anything procfs showed
        before the call is in hand, unless it was lost (and then counted)."""
        self.sensor.poll(0)
        self.sensor.account_losses(force=True)

    def drain(self) -> list:
        q = self.sensor.queue
        out: list = []
        decode = wire.decode
        convert = _CONVERT
        record_to = self.record_to
        while q:
            _cpu, data = q.popleft()
            if record_to is not None:
                record_to.write(data.hex() + "\n")
            try:
                r = decode(data)
            except wire.DecodeError:
                out.append(DecodeErrorRecord(0))
                continue
            out.append(convert[type(r)](r))
        # Per-CPU buffers are drained one CPU after another: restore kernel order.
        out.sort(key=_ts)
        lost = self.sensor.stats.lost_per_cpu
        if lost != self._lost_seen:
            out.extend(lost_since(self._lost_seen, lost, out[-1].ts_ns if out else 0))
        return out

    def pending(self) -> int:
        return len(self.sensor.queue)

    def lost_per_cpu(self) -> dict[int, int]:
        return dict(self.sensor.stats.lost_per_cpu)

    def counters(self) -> dict[str, int]:
        return self.sensor.counters()

    def close(self) -> None:
        self.sensor.close()


def _ts(rec) -> int:
    return rec[0]

