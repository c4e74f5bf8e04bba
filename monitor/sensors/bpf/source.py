"""The BPF sensor as a source of sensor-neutral records (monitor/records.py).

Decodes the perf samples (wire.py) and turns each into an ExecRecord, ForkRecord or ExitRecord;
loss counts become LostRecords. What the kernel captured is exact at exec time, so exec records
are `kernel_captured`: procfs may only add to them (or disagree later, `differs`).
"""
from __future__ import annotations

from monitor.records import (NS_NAMES, DecodeErrorRecord, ExecRecord, ExitRecord, ForkRecord,
                             lost_since)
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
)
_ANY_FLAG = 0
for _bit, _name in CAPTURE_FLAG_NAMES:
    _ANY_FLAG |= _bit


_new = tuple.__new__  # builds a record without NamedTuple's Python-level __new__ (per-event path)


def exec_record(r: wire.RawExec) -> ExecRecord:
    flags = r.flags
    # A memfd (or other anonymous file) has no path on disk: the walk ends at a pseudo root
    # named "memfd:...". Unlinked without that is a deleted file.
    fileless = bool(flags & wire.EXE_DETACHED) and (r.exe or b"").startswith(b"/memfd:")
    ppid = r.ppid
    loginuid, sessionid = r.loginuid, r.sessionid
    # Every field, in ExecRecord's order (tests/monitor/test_records.py checks it against the
    # keyword form).
    return _new(ExecRecord, (
        r.ts_ns, r.tgid, r.start_boottime // NSEC_PER_TICK, ppid or None,
        r.parent_start_boottime // NSEC_PER_TICK if ppid else None,
        r.comm, r.exe, r.cwd, r.argv, bool(flags & wire.ARGV_TRUNCATED),
        r.uid, r.euid, r.gid, r.egid, r.old_tid, r.filename, r.argc, r.argv_size, r.tty,
        None if loginuid == wire.UNSET_ID else loginuid,
        None if sessionid == wire.UNSET_ID else sessionid,
        dict(zip(NS_NAMES, r.ns)), r.cgroup_id, bool(flags & wire.EXE_UNLINKED) and not fileless,
        fileless,
        tuple(name for bit, name in CAPTURE_FLAG_NAMES if flags & bit) if flags & _ANY_FLAG else (),
        None, None, False, True, r.vpid, (r.arg_start, r.end_code) if r.arg_start else None))


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

