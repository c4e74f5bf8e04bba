"""The live pipeline: sensor records -> process table -> enrichment -> records -> sink.

One thread. Each turn: poll the sensor (bcc drains every per-CPU buffer into a deque), decode
the batch, order it by kernel timestamp (per-CPU buffers interleave), apply it to the table,
enrich what is still alive, emit. Capture never waits on enrichment: when a batch is large, the
records beyond `backlog` go out without procfs enrichment (`enrichment: "partial"`, counted)
instead of leaving samples to be lost in the kernel.

Sweeps: once at start (after the sensor is attached, so nothing falls between the two: every
process already running becomes an `existing` event) and periodically (default 30 s, and at
once after lost samples): a process in procfs the table does not know becomes `missed`; a live
table entry gone from procfs without an exit record gets an inferred `exit`.
"""
from __future__ import annotations

import bisect
import fnmatch
import logging
import os
import resource
import time
from dataclasses import dataclass, field

from monitor import enrich as E
from monitor.clock import Clock
from monitor.events import Ancestor, ExitEvent, LostEvent, ProcessEvent, StatsEvent, split_wait_status
from monitor.output import Sink, argv_raw, text, text_or_none, texts
from monitor.table import Entry, Key, ProcessTable
from monitor.sensors.bpf import wire
from userspace.procfs import ProcessGone, ProcFS, ProcFSError
from userspace.process import read_stat
from userspace.sweep import sort_parents_first
from userspace.types import NSEC_PER_TICK, Depth, ProcessSnapshot, ProcKey

log = logging.getLogger("procsentry.pipeline")

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
NS_KEYS = wire.NS_NAMES


@dataclass
class Filters:
    pid: int | None = None
    uid: int | None = None
    comm: str | None = None
    exe: str | None = None  # glob
    events: frozenset[str] | None = None
    container: str | None = None  # id prefix

    def match(self, ev: ProcessEvent) -> bool:
        if self.events is not None and ev.event not in self.events:
            return False
        if self.pid is not None and ev.pid != self.pid:
            return False
        if self.uid is not None and self.uid not in (ev.uid, ev.euid):
            return False
        if self.comm is not None and ev.comm != self.comm:
            return False
        if self.exe is not None and not fnmatch.fnmatchcase(ev.exe or "", self.exe):
            return False
        if self.container is not None and not (ev.container_id or "").startswith(self.container):
            return False
        return True

    def passes_lost_and_stats(self, kind: str) -> bool:
        return self.events is None or kind in self.events


@dataclass
class Config:
    sweep_interval_s: float = 30.0
    stats_interval_s: float = 60.0
    duration_s: float | None = None
    count: int | None = None
    ancestry_depth: int = 10
    backlog: int = 1024  # records in one batch past which enrichment is skipped
    enrich_delay_ns: int = 5_000_000  # hold window: see Pipeline.drain
    max_held: int = 65536  # records the window may hold before it is released regardless
    environ: bool = False
    poll_timeout_ms: int = 100
    filters: Filters = field(default_factory=Filters)


class Counters:
    def __init__(self) -> None:
        self.events: dict[str, int] = {}
        self.enrichment: dict[str, int] = {"full": 0, "partial": 0, "gone": 0, "skipped_backlog": 0}
        self.missed = 0
        self.inferred_exits = 0
        self.decode_errors = 0
        self.queue_peak = 0

    def event(self, kind: str) -> None:
        self.events[kind] = self.events.get(kind, 0) + 1


class Pipeline:
    def __init__(self, source, sink: Sink, fs: ProcFS, config: Config | None = None,
                 depth: Depth = Depth.FULL, detector=None) -> None:
        self.detector = detector  # detection (issue 13): monitor/detect Detector, or None
        self.source = source
        self.sink = sink
        self.fs = fs
        self.cfg = config or Config()
        self.table = ProcessTable()
        self.clock = Clock()
        self.enricher = E.Enricher(fs, depth, environ=self.cfg.environ)
        self.users = E.UserNames()
        self.counters = Counters()
        self.boot_id = fs.boot_id()
        self.self_pid = os.getpid()
        self.stop_requested = False
        self.emitted = 0
        self.started = time.monotonic()
        self._lost_seen: dict[int, int] = {}
        self._window: list[tuple] = []  # (kind, record, ts_ns), in kernel time order
        self._last_reconcile = 0.0
        self._reconcile_due: str | None = None

    # -- identity --------------------------------------------------------------------------
    def exec_id(self, key: Key) -> str:
        return ProcKey(self.boot_id, key[0], key[1]).exec_id

    def _entry(self, key: Key) -> Entry:
        """The table entry for key, created if new."""
        return self.table.get(key) or self.table.add(Entry(key[0], key[1], self.exec_id(key)))

    def _link_parent(self, entry: Entry, ppid: int | None, pkey: Key | None) -> None:
        entry.ppid = ppid
        entry.parent_key = pkey
        entry.parent_exec_id = self.exec_id(pkey) if pkey else None

    @staticmethod
    def _set_image(entry: Entry, comm: bytes | None, exe: bytes | None, cwd: bytes | None,
                   argv: tuple[bytes, ...] | None) -> None:
        """A new program image: its text, decoded once here (see monitor/output.py)."""
        entry.comm, entry.exe, entry.cwd = text_or_none(comm), text_or_none(exe), text_or_none(cwd)
        entry.argv = texts(argv)
        entry.ancestor = None

    # -- emit ------------------------------------------------------------------------------
    def emit_process(self, ev: ProcessEvent) -> None:
        self.counters.event(ev.event)
        # --- detection (issue 13): every process event, before the output filters; alerts go
        # out like lost/stats records, so `--events alert` selects them. observe() never raises.
        if self.detector is not None:
            for alert in self.detector.observe(ev):
                self.emit_other(alert)
        # --- end detection
        if not self.cfg.filters.match(ev):
            return
        self.sink.write(ev)
        self.emitted += 1
        if self.cfg.count is not None and self.emitted >= self.cfg.count:
            self.stop_requested = True

    def emit_other(self, rec) -> None:
        self.counters.event(rec.event)
        if self.cfg.filters.passes_lost_and_stats(rec.event):
            self.sink.write(rec)

    def _ancestry(self, entry: Entry) -> tuple[Ancestor, ...]:
        out = []
        for a in self.table.ancestry(entry, self.cfg.ancestry_depth):
            if a.ancestor is None:  # built once per exec image, shared by every descendant
                argv, cut = _bounded_argv(a.argv)
                a.ancestor = Ancestor(a.pid, a.exec_id, a.exe, argv, cut)
            out.append(a.ancestor)
        return tuple(out)

    def _event_from_entry(self, kind: str, entry: Entry, when: str, source: str, **extra) -> ProcessEvent:
        return ProcessEvent(
            event=kind, time=when, source=source, pid=entry.pid, ppid=entry.ppid,
            exec_id=entry.exec_id, parent_exec_id=entry.parent_exec_id,
            uid=entry.uid, euid=entry.euid, gid=entry.gid, egid=entry.egid, user=entry.user,
            comm=entry.comm, exe=entry.exe, argv=entry.argv, argv_truncated=entry.argv_truncated,
            cwd=entry.cwd, start_time=entry.start_ticks, container_id=entry.container_id,
            ns=entry.ns, **extra)

    # -- kernel records ------------------------------------------------------------------------
    def on_exec(self, r: wire.RawExec, source: str = "bpf", exited: bool = False) -> None:
        ticks = r.start_boottime // NSEC_PER_TICK
        key = (r.tgid, ticks)
        pkey = (r.ppid, r.parent_start_boottime // NSEC_PER_TICK) if r.ppid else None
        entry = self._entry(key)
        self._link_parent(entry, r.ppid, pkey)
        self._set_image(entry, r.comm, r.exe, r.cwd, r.argv)
        entry.argv_truncated = bool(r.flags & wire.ARGV_TRUNCATED)
        entry.uid, entry.euid, entry.gid, entry.egid = r.uid, r.euid, r.gid, r.egid
        entry.user = self.users(r.uid)
        entry.ns = dict(zip(NS_KEYS, r.ns))

        missing: dict[str, str] = {}
        snap = None
        if exited:
            enrichment = "gone"  # its exit is already in the hold window: nothing to read
            self.counters.enrichment["gone"] += 1
        elif self._backlogged:
            enrichment = "partial"
            missing["proc"] = "skipped_backlog"
            self.counters.enrichment["skipped_backlog"] += 1
        else:
            snap = self.enricher.read_after_exec(r.tgid, ticks, r.ns[2], r.cgroup_id)
            enrichment = E.outcome(snap)
            self.counters.enrichment[enrichment] += 1
        differs = None
        proc = None
        if snap is not None:
            proc = E.details(snap)
            missing.update({k: v for k, v in snap.missing.items() if v != "not_requested"})
            entry.container_id = snap.container_id
            differs = self._differences(r, snap)
        else:
            known = self.enricher.container_of(r.cgroup_id)
            if known is not None:
                entry.container_id = known[1]
            elif r.cgroup_id > 1:
                missing["container_id"] = missing.get("proc", "gone")
        capture = tuple(name for bit, name in CAPTURE_FLAG_NAMES if r.flags & bit)
        ev = self._event_from_entry(
            "exec", entry, self.clock.from_mono(r.ts_ns), source,
            enrichment=enrichment, tid=r.old_tid, filename=text(r.filename), argc=r.argc,
            argv_size=r.argv_size, argv_raw=argv_raw(r.argv),
            exe_deleted=bool(r.flags & wire.EXE_UNLINKED) and not _is_memfd(r),
            exe_fileless=_is_memfd(r), tty=text_or_none(r.tty),
            loginuid=None if r.loginuid == wire.UNSET_ID else r.loginuid,
            sessionid=None if r.sessionid == wire.UNSET_ID else r.sessionid,
            cgroup_id=r.cgroup_id, capture=capture, missing=missing, differs=differs,
            ancestry=self._ancestry(entry), proc=proc)
        self.emit_process(ev)

    @staticmethod
    def _differences(r: wire.RawExec, snap: ProcessSnapshot) -> dict[str, object] | None:
        """What procfs says now where it disagrees with what the kernel captured at exec."""
        out: dict[str, object] = {}
        if snap.argv is not None and not (r.flags & wire.ARGV_TRUNCATED) and snap.argv != r.argv:
            out["argv"] = texts(snap.argv)
        if snap.cwd is not None and r.cwd is not None and snap.cwd != r.cwd:
            out["cwd"] = text(snap.cwd)
        if snap.uids is not None and snap.uids[1] != r.euid:
            out["euid"] = snap.uids[1]
        return out or None

    def on_fork(self, ts_ns: int, pid: int, ticks: int, ppid: int, pticks: int | None,
                source: str = "bpf") -> None:
        key = (pid, ticks)
        pkey = (ppid, pticks) if pticks is not None else self.table.key_for_pid(ppid)
        parent = self.table.get(pkey) if pkey else None
        entry = self.table.get(key)
        if entry is None:
            entry = Entry(pid, ticks, self.exec_id(key))
            if parent is not None:  # a fork child is a copy of its parent until it execs
                for name in ("comm", "exe", "argv", "argv_truncated", "cwd", "uid", "euid", "gid",
                             "egid", "user", "container_id", "ns"):
                    setattr(entry, name, getattr(parent, name))
            self.table.add(entry)
        self._link_parent(entry, ppid, pkey)
        enrichment = "full" if parent is not None else "partial"
        missing = {} if parent is not None else {"parent": "unknown"}
        ev = self._event_from_entry("fork", entry, self.clock.from_mono(ts_ns), source,
                                    enrichment=enrichment, missing=missing)
        self.emit_process(ev)

    def on_exec_gone(self, ts_ns: int, pid: int, ticks: int, ppid: int | None,
                     comm: bytes | None, source: str) -> None:
        """An exec that a sensor reports by PID alone (the connector), of a process that was
        gone before procfs could be read: identity, parent and comm, nothing else to say."""
        entry = self._entry((pid, ticks))
        pkey = self.table.key_for_pid(ppid) if ppid else None
        if entry.parent_key is not None and entry.parent_key[0] == ppid:
            pkey = entry.parent_key  # from its fork: exact even if the parent's PID was reused
        self._link_parent(entry, ppid, pkey)
        # What the fork copied from the parent is not this image's: unknown, not inherited.
        self._set_image(entry, comm, None, None, None)
        entry.ns = entry.container_id = None
        entry.uid = entry.euid = entry.gid = entry.egid = entry.user = None
        entry.argv_truncated = False
        self.counters.enrichment["gone"] += 1
        missing = dict.fromkeys(("argv", "exe", "cwd", "uids", "gids", "ns", "container_id"), "gone")
        if comm is None:
            missing["comm"] = "gone"
        ev = self._event_from_entry("exec", entry, self.clock.from_mono(ts_ns), source,
                                    enrichment="gone", missing=missing,
                                    ancestry=self._ancestry(entry))
        self.emit_process(ev)

    def on_exit(self, ts_ns: int, pid: int, ticks: int | None, status: int | None,
                start_mono_ns: int | None, comm: bytes | None, source: str = "bpf",
                inferred: bool = False) -> None:
        key = (pid, ticks) if ticks is not None else self.table.key_for_pid(pid)
        entry = self.table.get(key) if key else None
        if entry is None:
            # Exit of a process we never saw start (lost, or it predates a gap): a tombstone.
            if key is None:
                key = (pid, 0)
            entry = self.table.add(Entry(pid, key[1], self.exec_id(key), comm=text_or_none(comm)))
        if entry.exited_at is not None:
            return  # already reported (a sweep inferred it, then the record arrived)
        if comm and entry.comm is None:
            entry.comm = text_or_none(comm)
        code, sig, core = split_wait_status(status) if status is not None else (None, None, False)
        duration = None
        if start_mono_ns is not None:
            duration = max(0, ts_ns - start_mono_ns)
        elif entry.exec_start_ns is not None:
            duration = max(0, ts_ns - entry.exec_start_ns)
        when = self.clock.from_mono(ts_ns)
        ev = ExitEvent(
            event="exit", time=when, source=source, pid=entry.pid, ppid=entry.ppid,
            exec_id=entry.exec_id, parent_exec_id=entry.parent_exec_id, uid=entry.uid,
            euid=entry.euid, gid=entry.gid, egid=entry.egid, user=entry.user, comm=entry.comm,
            exe=entry.exe, argv=entry.argv, argv_truncated=entry.argv_truncated, cwd=entry.cwd,
            start_time=entry.start_ticks, container_id=entry.container_id, ns=entry.ns,
            enrichment="full" if entry.exe is not None or entry.argv is not None else "partial",
            exit_code=code, signal=sig, core_dumped=core, duration_ns=duration, inferred=inferred)
        self.table.mark_exited(key)
        if inferred:
            self.counters.inferred_exits += 1
        self.emit_process(ev)

    def on_lost(self, cpu: int, count: int) -> None:
        self.emit_other(LostEvent("lost", self.clock.now(), self.source.name, cpu, count))
        self._reconcile_due = "lost"

    # -- procfs-sourced processes ---------------------------------------------------------------
    def on_snapshot(self, snap: ProcessSnapshot, kind: str, source: str,
                    when: str | None = None) -> Entry:
        """existing / missed (sweeps), and exec for sensors that only give PIDs."""
        key = (snap.pid, snap.start_ticks)
        entry = self._entry(key)
        self._link_parent(entry, snap.ppid, self.table.key_for_pid(snap.ppid) if snap.ppid else None)
        self._set_image(entry, snap.comm, snap.exe, snap.cwd, snap.argv)
        if snap.uids is not None:
            entry.uid, entry.euid = snap.uids[0], snap.uids[1]
        if snap.gids is not None:
            entry.gid, entry.egid = snap.gids[0], snap.gids[1]
        entry.user = self.users(entry.uid)
        entry.container_id = snap.container_id
        if snap.ns is not None:
            entry.ns = {k: getattr(snap.ns, k) for k in NS_KEYS}
        enrichment = E.outcome(snap)
        self.counters.enrichment[enrichment] += 1
        missing = {k: v for k, v in snap.missing.items() if v != "not_requested"}
        ev = self._event_from_entry(
            kind, entry, when or self.clock.now(), source, enrichment=enrichment,
            argv_raw=argv_raw(snap.argv), exe_deleted=snap.exe_deleted, exe_fileless=snap.exe_memfd,
            loginuid=snap.loginuid, sessionid=snap.sessionid, missing=missing,
            ancestry=self._ancestry(entry) if kind != "existing" else None, proc=E.details(snap))
        self.emit_process(ev)
        return entry

    def sweep_existing(self, pids: list[int] | None = None) -> int:
        """Every process already running (or those in pids), parents first, as `existing`."""
        snaps = []
        for pid in (pids if pids is not None else self._pids()):
            if pid == self.self_pid:
                continue
            snap = self.enricher.read(pid, None)
            if snap is not None:
                snaps.append(snap)
        n = 0
        for snap in sort_parents_first(snaps):
            if (snap.pid, snap.start_ticks) in self.table:
                continue  # the sensor already told us
            entry = self.on_snapshot(snap, "existing", "sweep")
            if snap.zombie:
                self.table.mark_exited((entry.pid, entry.start_ticks))
            n += 1
        return n

    def _pids(self) -> list[int]:
        try:
            return self.fs.pids()
        except ProcFSError as e:
            log.warning("sweep.list_failed: %s", e)
            return []

    def reconcile(self) -> None:
        """Cheap sweep: stat of every PID against the table."""
        started = time.monotonic()
        self._last_reconcile = started
        self._reconcile_due = None
        self.drain(flush=True)
        seen: dict[Key, tuple[str, bytes]] = {}
        for pid in self._pids():
            if pid == self.self_pid:
                continue
            try:
                st = read_stat(self.fs, pid)
            except ProcFSError:
                continue
            seen[(pid, st.starttime)] = (st.state, st.comm)
        self.drain(flush=True)  # records for processes that started or ended while we listed
        new = []
        for key, (state, comm) in seen.items():
            entry = self.table.get(key)
            if entry is None:
                snap = self.enricher.read(key[0], key[1])
                if snap is not None:
                    new.append(snap)
            elif state == "Z" and entry.exited_at is None:
                self.on_exit(time.monotonic_ns(), key[0], key[1], None, None, None,
                             source="sweep", inferred=True)
            elif entry.exited_at is None and entry.comm is not None and text(comm) != entry.comm:
                # Known from its fork, but running another program: its exec record was lost
                # (the entry still shows the parent's image). A comm changed by prctl alone
                # is told apart by exe and argv, which only an exec replaces.
                snap = self.enricher.read(key[0], key[1])
                if snap is not None and (text_or_none(snap.exe) != entry.exe
                                         or texts(snap.argv) != entry.argv):
                    new.append(snap)
        for snap in sort_parents_first(new):
            self.counters.missed += 1
            self.on_snapshot(snap, "missed", "sweep")
            if snap.zombie:
                self.on_exit(time.monotonic_ns(), snap.pid, snap.start_ticks, None, None, None,
                             source="sweep", inferred=True)
        for key in self.table.live_keys():
            if key in seen or key[0] == self.self_pid:
                continue
            entry = self.table.get(key)
            if entry is None or entry.first_seen >= started:
                continue
            if self._alive(key):
                continue
            self.on_exit(time.monotonic_ns(), key[0], key[1], None, None, None,
                         source="sweep", inferred=True)

    def _alive(self, key: Key) -> bool:
        try:
            st = read_stat(self.fs, key[0])
        except ProcessGone:
            return False
        except ProcFSError:
            return True  # cannot tell: do not invent an exit
        return st.starttime == key[1] and st.state != "Z"

    # -- the loop -------------------------------------------------------------------------------
    _backlogged = False

    def drain(self, flush: bool = False) -> None:
        """Take what the source has buffered into the hold window, then apply every record
        older than the enrichment delay (all of them with flush=True).

        The window does two things. Records of different CPUs are merged back into kernel
        time order even across poll batches. And an exec whose process exits within the delay
        is not read from procfs at all: the kernel already captured what it ran, and reading
        a process in its last microseconds is the costliest part of the per-exec work (about
        0.4 ms against ~0.05 ms for the rest, measured under a /bin/true storm). Enrichment is
        spent on processes that live long enough for it to pay."""
        records = self.source.drain()
        n = len(records)
        if n > self.counters.queue_peak:
            self.counters.queue_peak = n
        if records and len(records[0]) == 2:  # a source without timestamps of its own
            records = [(k, r, getattr(r, "ts_ns", 0)) for k, r in records]
        window = self._window
        if records:
            if window and records[0][2] < window[-1][2]:
                window.extend(records)
                window.sort(key=_ts)
            else:
                window.extend(records)
        if not window:
            self._report_lost()
            return
        if flush or len(window) > self.cfg.max_held:
            cut = len(window)  # a full window is released at once (enrichment then mostly skipped)
        else:
            limit = time.monotonic_ns() - self.cfg.enrich_delay_ns
            cut = bisect.bisect_right(window, limit, key=_ts)
        if cut == 0:
            self._report_lost()
            return
        # Processes that exit anywhere in the window: no procfs read for their execs.
        exiting = {(rec[1].tgid, rec[1].start_boottime) for rec in window
                   if type(rec[1]) is wire.RawExit}
        ready = window[:cut]
        del window[:cut]
        backlog = self.cfg.backlog
        self_pid = self.self_pid
        name = self.source.name
        n = len(ready)
        for i, rec in enumerate(ready):
            kind = rec[0]
            if kind == "decode_error":
                self.counters.decode_errors += 1
                continue
            r = rec[1]
            if kind == "exec":
                if r.tgid != self_pid:
                    self._backlogged = n - i - 1 > backlog  # records still waiting behind it
                    self.on_exec(r, name, exited=(r.tgid, r.start_boottime) in exiting)
            elif kind == "fork":
                if r.parent_tgid != self_pid:
                    self.on_fork(r.ts_ns, r.tgid, r.start_boottime // NSEC_PER_TICK, r.parent_tgid,
                                 r.parent_start_boottime // NSEC_PER_TICK, name)
            elif kind == "exit":
                if r.tgid != self_pid:
                    self.on_exit(r.ts_ns, r.tgid, r.start_boottime // NSEC_PER_TICK, r.exit_code,
                                 r.start_time, r.comm, name)
            else:
                self.source.handle(self, rec)
        self._backlogged = False
        self._report_lost()

    def next_due_ms(self) -> int:
        """How long the loop may block in poll before a held record is due."""
        if not self._window:
            return self.cfg.poll_timeout_ms
        # Wake a little after the oldest record is due, not exactly then: records keep
        # arriving, and one turn of the loop for several milliseconds' worth of them costs
        # far less than a turn per millisecond (the per-turn overhead dominated a storm's
        # profile). Latency grows by at most BATCH_SLACK_MS.
        due = self._window[0][2] + self.cfg.enrich_delay_ns - time.monotonic_ns()
        return max(1, min(self.cfg.poll_timeout_ms, due // 1_000_000 + BATCH_SLACK_MS))

    def _report_lost(self) -> None:
        for cpu, total in self.source.lost_per_cpu().items():
            delta = total - self._lost_seen.get(cpu, 0)
            if delta:
                self._lost_seen[cpu] = total
                self.on_lost(cpu, delta)

    def stats(self) -> StatsEvent:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        rss = 0
        try:
            statm = self.fs.read_bytes("self", "statm").split()
            rss = int(statm[1]) * self.fs.page_size
        except (ProcFSError, IndexError, ValueError):
            pass
        lost = self.source.lost_per_cpu()
        return StatsEvent(
            event="stats", time=self.clock.now(), source=self.source.name,
            uptime_s=round(time.monotonic() - self.started, 3),
            events=dict(self.counters.events), lost=sum(lost.values()),
            lost_per_cpu={str(k): v for k, v in lost.items()},
            missed=self.counters.missed, inferred_exits=self.counters.inferred_exits,
            enrichment=dict(self.counters.enrichment), queue_depth=self.source.pending() + len(self._window),
            queue_peak=self.counters.queue_peak, table_size=len(self.table),
            table_evictions=self.table.evictions, kernel=self.source.counters(),
            dropped_writes=self.sink.dropped_writes, decode_errors=self.counters.decode_errors,
            cpu_time_s=round(ru.ru_utime + ru.ru_stime, 3), rss_bytes=rss,
            peak_rss_bytes=ru.ru_maxrss * 1024,
            detection=self.detector.counters() if self.detector is not None else None)  # issue 13

    def run(self) -> None:
        cfg = self.cfg
        self.sweep_existing()
        self.drain()
        self.sink.flush()
        now = time.monotonic()
        self._last_reconcile = now
        next_stats = now + cfg.stats_interval_s
        deadline = now + cfg.duration_s if cfg.duration_s is not None else None
        last_flush = now
        while not self.stop_requested:
            self.source.poll(self.next_due_ms())
            self.drain()
            now = time.monotonic()
            if self._reconcile_due and now - self._last_reconcile >= 1.0:
                self.reconcile()
            elif cfg.sweep_interval_s > 0 and now - self._last_reconcile >= cfg.sweep_interval_s:
                self.reconcile()
            if now >= next_stats:
                self.emit_other(self.stats())
                next_stats = now + cfg.stats_interval_s
            self.table.expire(now)
            # Under a storm, one write per loop turn is thousands of small writes a second
            # (the largest single cost in the benchmark's profile): write at most every
            # FLUSH_EVERY_S while records keep coming, at once when the stream goes quiet.
            if not self._window or now - last_flush >= FLUSH_EVERY_S or self.stop_requested:
                self.sink.flush()
                last_flush = now
            if deadline is not None and now >= deadline:
                break
        self.drain(flush=True)

    def finish(self) -> None:
        """Final stats, then flush: called on every orderly exit."""
        self.emit_other(self.stats())
        self.sink.flush()


FLUSH_EVERY_S = 0.005
BATCH_SLACK_MS = 5
ANCESTOR_ARGV_BYTES = 256  # an ancestor's own exec event has its whole argv


def _bounded_argv(argv: tuple[str, ...] | None) -> tuple[tuple[str, ...] | None, bool]:
    if argv is None:
        return None, False
    out, used = [], 0
    for a in argv:
        if used + len(a) > ANCESTOR_ARGV_BYTES:
            return tuple(out), True
        out.append(a)
        used += len(a) + 1
    return argv, False


def _ts(rec: tuple) -> int:
    return rec[2]


def _is_memfd(r: wire.RawExec) -> bool:
    return bool(r.flags & wire.EXE_DETACHED) and (r.exe or b"").startswith(b"/memfd:")
