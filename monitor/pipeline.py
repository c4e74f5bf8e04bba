"""The live pipeline: sensor records -> hold window -> process table -> events -> sink.

One thread. Each turn: poll the sensor, take its sensor-neutral records (monitor/records.py)
into the hold window (monitor/window.py), apply every record that is due to the process table,
enrich what is still alive from procfs, build the events (monitor/build.py) and write them.
The pipeline alone owns the table and decides; sensors only report.

Capture never waits on enrichment: when a batch is large, the execs beyond `backlog` go out
without procfs enrichment (`enrichment: "partial"`, counted) instead of leaving samples to be
lost in the kernel.

Sweeps (userspace/sweep.py): once at start, after the sensor is attached so nothing falls
between the two (every process already running becomes an `existing` event), and periodically
(default 30 s, and at once after lost samples), judged against the table without racing the
sensor (monitor/reconcile.py): what the sensor missed becomes `missed`, a process gone without
an exit record gets an inferred `exit`.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from time import perf_counter

from monitor import enrich as E
from monitor import reconcile
from monitor.build import EventBuilder
from monitor.clock import Clock, ticks_at
from monitor.events import LostEvent, ProcessEvent, StatsEvent, Stdio, split_wait_status
from monitor.output import Sink
from monitor.records import (CommRecord, CredRecord, DecodeErrorRecord, ExecRecord, ExitRecord,
                             ForkRecord, LostRecord, exec_from_snapshot)
from monitor.table import Entry, Key, ProcessTable
from monitor.text import argv_raw, text, text_or_none, texts
from monitor.window import HoldWindow
from userspace.procfs import ProcessGone, ProcFS, ProcFSError
from userspace.parsers import parse_status
from userspace.process import read_stat
from userspace.sweep import Sweep, SweepStats, sort_parents_first
from userspace.types import Depth, ProcessSnapshot, ProcKey

log = logging.getLogger("procsentry.pipeline")


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
        return self.match_process(ev)

    def match_process(self, ev: ProcessEvent) -> bool:
        """The process filters alone (an alert about ev obeys them too)."""
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
    enrich_delay_ns: int = 5_000_000  # hold window: see monitor/window.py
    max_held: int = 65536  # records the window may hold before it is released regardless
    environ: bool = False
    # How much procfs each kernel-captured exec costs (--enrich; monitor/enrich.py LEVELS).
    # full by default: the argv-rewrite detection needs `differs` (cmdline and status), and
    # an analyst every socket of a process; standard and minimal trade those for cost.
    enrich: str = "full"
    poll_timeout_ms: int = 100
    # Encoded events held before they are written (--output-buffer): past it the pipeline
    # writes at once, and waits if the reader does (see Sink.pending_bytes).
    output_buffer_bytes: int = 4 << 20
    filters: Filters = field(default_factory=Filters)


class Counters:
    def __init__(self) -> None:
        self.events: dict[str, int] = {}
        self.enrichment: dict[str, int] = {"full": 0, "partial": 0, "gone": 0, "skipped_backlog": 0,
                                           "kernel": 0, "error": 0}
        # Where the time goes (stats.time_s): perf_counter around the enrichment read, the
        # event's encoding (Sink.write) and Sink.flush only, so measuring costs ~0.1 us a call.
        self.time_enrich: dict[str, float] = {}
        self.time_encode: dict[str, float] = {}
        self.time_detect: dict[str, float] = {}
        self.time_output = 0.0
        self.missed = 0
        self.inferred_exits = 0
        self.decode_errors = 0
        self.queue_peak = 0
        self.reconcile = {"sweeps": 0, "deferred": 0, "suspects": 0,
                          "missed_zombies_skipped": 0, "late_exits": 0}

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
        self.depth = depth
        self.table = ProcessTable()
        self.clock = Clock()
        self.enricher = E.Enricher(fs, depth, environ=self.cfg.environ, level=self.cfg.enrich)
        self.users = E.UserNames()
        self.counters = Counters()
        self._enrichment_errors_logged: set[tuple[str, str]] = set()  # (type, file:line)
        self.sweep_stats = SweepStats()
        self.boot_id = fs.boot_id()
        self.self_pid = os.getpid()
        self.window = HoldWindow(self.cfg.enrich_delay_ns, self.cfg.max_held)
        self.build = EventBuilder(self.table, self.clock, self.cfg.ancestry_depth, self.boot_id)
        self._boot12 = self.boot_id[:12]
        # (parent key, forking layout) -> the parent image's id: a forking server or stress-ng
        # forks thousands of children from one image, hashed once.
        self._forking_images: dict[tuple, str | None] = {}
        self.stop_requested = False
        self.emitted = 0
        self.started = time.monotonic()
        self._to_detect: list = []
        self._last_reconcile = 0.0
        self._reconcile_due: str | None = None
        self._lost_since_reconcile = False
        self._suspects = reconcile.Suspects()
        self._apply = {ExecRecord: self.on_exec, ForkRecord: self.on_fork,
                       ExitRecord: self.on_exit, LostRecord: self.on_lost,
                       CommRecord: self.on_comm, CredRecord: self.on_cred,
                       DecodeErrorRecord: self.on_decode_error}

    # -- identity --------------------------------------------------------------------------
    def exec_id(self, key: Key) -> str:
        # ProcKey(boot_id, pid, start_ticks).exec_id, without building a ProcKey per record
        # (tests/monitor/test_pipeline_unit.py checks that the two agree)
        return f"{self._boot12}:{key[1]}:{key[0]}"

    def _entry(self, key: Key, since_ns: int) -> Entry:
        """The table entry for key, created if new."""
        entry = self.table.get(key)
        if entry is None:
            entry = self.table.add(Entry(key[0], key[1], self.exec_id(key), since_ns=since_ns))
        return entry

    def _key(self, pid: int, ticks: int | None, ts_ns: int) -> Key:
        """A sensor that cannot tell the start time: the newest process the table knows with
        this PID, else one started at the record's time (exec and exit come after the start,
        so this can only be late: see clock.ticks_at)."""
        if ticks is not None:
            return (pid, ticks)
        return self.table.key_for_pid(pid) or (pid, ticks_at(ts_ns))

    def _link_parent(self, entry: Entry, ppid: int | None, pkey: Key | None) -> None:
        entry.ppid = ppid
        entry.parent_key = pkey
        entry.parent_exec_id = self.exec_id(pkey) if pkey else None

    # -- emit ------------------------------------------------------------------------------
    def emit_process(self, ev: ProcessEvent) -> None:
        self.counters.event(ev.event)
        # Detection sees every process event, before the output filters (see detect()).
        held = self.detector is not None and self.detector.wants(ev.event)
        if held:
            self._to_detect.append(ev)
        if self.cfg.filters.match(ev):
            sink = self.sink
            t0 = perf_counter()
            sink.write(ev)
            enc = self.counters.time_encode
            enc[ev.event] = enc.get(ev.event, 0.0) + perf_counter() - t0
            if sink.pending_bytes > self.cfg.output_buffer_bytes:
                self.flush()
            self.emitted += 1
            if self.cfg.count is not None and self.emitted >= self.cfg.count:
                self.stop_requested = True
        if held and len(self._to_detect) >= DETECT_BATCH:
            self.detect()  # after the event is written: its alert follows it

    def filtered_out(self, kind: str) -> bool:
        """An event of this kind would be dropped by --events whatever it holds: count it and
        build nothing (under `stress-ng --fork` with --events exec, building the fork and exit
        events was most of the per-fork cost). A stage that must see every event (detection)
        has to be consulted here as well as in emit_process."""
        wanted = self.cfg.filters.events
        if wanted is not None and kind not in wanted:
            self.counters.event(kind)
            return True
        return False

    def emit_other(self, rec) -> None:
        self.counters.event(rec.event)
        if self.cfg.filters.passes_lost_and_stats(rec.event):
            self._write(rec)

    def _write(self, rec) -> None:
        self.sink.write(rec)
        if self.sink.pending_bytes > self.cfg.output_buffer_bytes:
            self.flush()

    def detect(self) -> None:
        """Run detection over the process events emitted since the last call, in their order.

        The events are batched, not observed one by one as they are built: between two events
        the pipeline decodes, builds and encodes, and the detector's code and tables are cold
        again by the next one. Measured live in the 20,000-exec storm with the built-in pack
        plus 150 Sigma rules: 14-15 us per exec observed one by one, 9.5-11.4 us in batches
        (offline, hot, 6.8). A batch ends at every flush (the loop flushes at least every
        FLUSH_EVERY_S while records come, at once when they stop) or at DETECT_BATCH events,
        so an alert follows its event within the same flush, after the batch's other events.
        An alert is shown when its process passes the process filters (--pid, --uid, --exe,
        ...) and `alert` the --events filter. observe() never raises."""
        batch = self._to_detect
        if not batch:
            return
        self._to_detect = []
        observe = self.detector.observe
        spent = self.counters.time_detect
        for ev in batch:
            t0 = perf_counter()
            alerts = observe(ev)
            spent[ev.event] = spent.get(ev.event, 0.0) + perf_counter() - t0
            if alerts:
                shown = self.cfg.filters.match_process(ev)
                for alert in alerts:
                    self.counters.event("alert")
                    if shown and self.cfg.filters.passes_lost_and_stats("alert"):
                        self._write(alert)

    def flush(self) -> None:
        """Sink.flush, timed for stats.time_s.output."""
        self.detect()
        t0 = perf_counter()
        self.sink.flush()
        self.counters.time_output += perf_counter() - t0

    # -- records ---------------------------------------------------------------------------
    def on_exec(self, r: ExecRecord, exited: bool = False, skip_enrichment: bool = False,
                kind: str = "exec", source: str | None = None) -> Entry | None:
        """An exec record (any sensor), or a process found by a sweep (kind existing/missed)."""
        pid = r.pid
        if pid == self.self_pid:
            return None
        key = self._key(pid, r.start_ticks, r.ts_ns)
        if r.observed and key in self.table:
            return None  # seen running before: by the start-up sweep, or a reconcile
        entry = self._entry(key, r.ts_ns)
        ppid = r.ppid if r.ppid is not None else entry.ppid
        if r.parent_start_ticks is not None:
            pkey = (ppid, r.parent_start_ticks)
        elif entry.parent_key is not None and entry.parent_key[0] == ppid:
            pkey = entry.parent_key  # from its fork: exact even if the parent's PID was reused
        else:
            pkey = self.table.key_for_pid(ppid) if ppid else None
        self._link_parent(entry, ppid, pkey)
        if entry.parent_image_id is None and pkey is not None:
            parent = self.table.get(pkey)
            if parent is not None:
                entry.parent_image_id = self.build.image_id(parent)
        # A new program image: its text, decoded once here (see monitor/text.py).
        entry.comm, entry.exe, entry.cwd = text_or_none(r.comm), text_or_none(r.exe), text_or_none(r.cwd)
        entry.argv = texts(r.argv)
        entry.argv_truncated = r.argv_truncated
        entry.ancestor = None
        entry.uid, entry.euid, entry.gid, entry.egid = r.uid, r.euid, r.gid, r.egid
        entry.user = self.users(r.uid)
        entry.ns = r.ns
        entry.vpid = r.vpid
        entry.image_id = ProcKey(self.boot_id, key[0], key[1]).image_id(*r.layout) if r.layout else None
        entry.image_layout = None
        entry.container_id = None

        missing: dict[str, str] = dict(r.missing) if r.missing else {}
        snap = r.snapshot
        proc = None
        if snap is not None:
            enrichment = counted = E.outcome(snap)  # the sensor (or a sweep) read procfs itself
        elif not r.kernel_captured or exited:
            # The sensor had nothing more and neither will procfs; or the process's exit is
            # already in the hold window: nothing left to read.
            enrichment = counted = "gone"
        elif skip_enrichment:
            enrichment, counted = "partial", "skipped_backlog"
            missing["proc"] = "skipped_backlog"
        elif self.enricher.level == "minimal":
            enrichment = counted = "kernel"  # --enrich minimal: what the kernel captured only
        else:
            ns = r.ns or {}
            t0 = perf_counter()
            try:
                snap = self.enricher.read_after_exec(pid, key[1], ns.get("net") or 0,
                                                     r.cgroup_id or 0)
                proc = E.details(snap, r) if snap is not None else None
            except Exception as exc:  # noqa: BLE001 - see _enrichment_failed
                snap = None
                self._enrichment_failed(pid, exc)
                enrichment, counted = "partial", "error"
                missing["proc"] = "error"
            else:
                enrichment = counted = E.outcome(snap)
            spent = self.counters.time_enrich
            spent[kind] = spent.get(kind, 0.0) + perf_counter() - t0
        self.counters.enrichment[counted] += 1
        differs = None
        if snap is not None:
            if proc is None:  # read by the sensor or a sweep
                proc = E.details(snap, r)
            missing.update({k: v for k, v in snap.missing.items() if v != "not_requested"})
            entry.container_id = snap.container_id
            if r.kernel_captured:
                differs = _differences(r, snap)
            if "exe_truncated" in r.capture:
                entry.exe = self._whole_exe(entry, key) or entry.exe
        elif r.cgroup_id is not None:
            try:
                known = self.enricher.container_of(r.cgroup_id)
            except Exception as exc:  # noqa: BLE001 - as the read above: see _enrichment_failed
                self._enrichment_failed(pid, exc)
                known, missing["container_id"] = None, "error"
            if known is not None:
                entry.container_id = known[1]
            elif r.cgroup_id > 1:
                missing.setdefault("container_id", missing.get("proc", "gone"))
        when = self.clock.from_mono(r.ts_ns) if kind == "exec" else self.clock.now()
        ev = self.build.process_event(
            kind, entry, when, source or self.source.name, enrichment=enrichment, tid=r.tid,
            filename=text_or_none(r.filename), argc=r.argc, argv_size=r.argv_size,
            argv_raw=argv_raw(r.argv), exe_deleted=r.exe_deleted, exe_fileless=r.exe_fileless,
            tty=text_or_none(r.tty), loginuid=r.loginuid, sessionid=r.sessionid,
            cgroup_id=r.cgroup_id, capture=r.capture, missing=missing, differs=differs,
            ancestry=self.build.ancestry(entry) if kind != "existing" else None, proc=proc,
            cap_eff=_hex(r.cap_eff), cap_prm=_hex(r.cap_prm), stdio=_stdio(r.stdio))
        self.emit_process(ev)
        return entry

    def _whole_exe(self, entry: Entry, key: Key) -> str | None:
        """The executable's whole path from procfs where the kernel's walk kept only its leaf
        end (capture exe_truncated: deeper than 64 components or 4 KiB): a payload run from
        /tmp/a/a/.../a/x (70 deep) showed as `.../a/x`, and no rule's `Image|startswith:
        '/tmp/'` could match it. The link is taken only when the process still runs the image
        the kernel reported (stat read after it: same start, same image_id) and it ends with
        what the kernel kept; else None."""
        kept = entry.exe
        if kept is None or not kept.startswith(".../") or entry.image_id is None:
            return None
        try:
            exe = text_or_none(self.fs.readlink(key[0], "exe"))
            st = read_stat(self.fs, key[0])
        except (ProcFSError, OSError, ValueError):
            return None
        if (st.starttime != key[1] or exe is None or not exe.startswith("/")
                or ProcKey(self.boot_id, key[0], key[1]).image_id(st.arg_start, st.end_code) != entry.image_id):
            return None
        return exe if exe.endswith(kept[3:]) else None

    def _enrichment_failed(self, pid: int, exc: Exception) -> None:
        """A reader raised what it should not have (a ProcFSError is a reason, handled inside).
        The procfs it parses and the sock_diag answers it decodes are written by the processes
        it watches: any user who finds input the readers mishandle (a unix socket name that is
        not UTF-8 once did it) must cost that one event its procfs part, never stop the
        monitor. The event keeps everything the kernel captured and says missing.proc = error;
        stats.enrichment.error counts them; the first of each kind is logged with its
        traceback, so that the bug can be found and fixed."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next  # where it was raised: one log line per bug, not per event
        where = (type(exc).__name__, f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
                 if tb is not None else "")
        if where not in self._enrichment_errors_logged and len(self._enrichment_errors_logged) < 64:
            self._enrichment_errors_logged.add(where)
            log.error("enrich.bug proc.pid=%d: %s: %s (further ones of this kind counted in "
                      "stats.enrichment.error, not logged)", pid, type(exc).__name__, exc,
                      exc_info=exc)

    def on_fork(self, r: ForkRecord) -> None:
        if r.ppid == self.self_pid or r.pid == self.self_pid:
            return  # the monitor's own children (the BPF loader): never reported
        key = (r.pid, r.start_ticks)
        pkey = (r.ppid, r.parent_start_ticks) if r.parent_start_ticks is not None \
            else self.table.key_for_pid(r.ppid)
        parent = self.table.get(pkey) if pkey else None
        entry = self.table.get(key)
        if entry is None:
            entry = Entry(r.pid, r.start_ticks, self.exec_id(key), since_ns=r.ts_ns)
            if parent is not None:  # a fork child is a copy of its parent until it execs
                # (assignments, not a getattr/setattr loop over the names: a third of the
                # cost of applying a fork record under stress-ng --fork)
                entry.comm, entry.exe, entry.argv, entry.argv_truncated, entry.cwd = \
                    parent.comm, parent.exe, parent.argv, parent.argv_truncated, parent.cwd
                entry.uid, entry.euid, entry.gid, entry.egid, entry.user = \
                    parent.uid, parent.euid, parent.gid, parent.egid, parent.user
                entry.container_id, entry.ns = parent.container_id, parent.ns
            self.table.add(entry)
        # Which of the parent's images forked it: from the fork record's own layout, so it is
        # right even when the parent exec'd again before this record was applied.
        # Until it execs, the child runs a copy of that image: the same layout under its own
        # identity, which is also what a sweep of the child derives.
        if r.parent_layout is not None:
            if pkey is not None:
                images = self._forking_images
                forking = (pkey, r.parent_layout)
                pid_ = images.get(forking)
                if pid_ is None:
                    if len(images) >= 4096:
                        images.clear()
                    pid_ = images[forking] = ProcKey(self.boot_id, *pkey).image_id(*r.parent_layout)
                entry.parent_image_id = pid_
            entry.image_id, entry.image_layout = None, r.parent_layout  # hashed when needed
        elif parent is not None:
            entry.parent_image_id = self.build.image_id(parent)
        entry.start_mono_ns = r.ts_ns
        if r.vpid is not None:
            entry.vpid = r.vpid
        self._link_parent(entry, r.ppid, pkey)
        if self.filtered_out("fork"):
            return
        enrichment = "full" if parent is not None else "partial"
        missing = {} if parent is not None else {"parent": "unknown"}
        self.emit_process(self.build.process_event(
            "fork", entry, self.clock.from_mono(r.ts_ns), self.source.name,
            enrichment=enrichment, missing=missing))

    def on_exit(self, r: ExitRecord, inferred: bool = False, source: str | None = None) -> None:
        pid = r.pid
        if pid == self.self_pid:
            return
        key = (pid, r.start_ticks) if r.start_ticks is not None else self.table.key_for_pid(pid)
        entry = self.table.get(key) if key else None
        if entry is None:
            # Exit of a process we never saw start (lost, or it predates a gap): a tombstone.
            if key is None:
                key = (pid, 0)
            entry = self.table.add(Entry(pid, key[1], self.exec_id(key), comm=text_or_none(r.comm),
                                         since_ns=r.ts_ns))
        supersedes = False
        if entry.exited_at is not None:
            if entry.exit_unreported and not inferred:
                # The start-up sweep caught it a zombie after the sensor was attached, and said
                # nothing of its exit: this record is that exit, reported once, here.
                entry.exit_unreported = False
            elif inferred or not entry.exit_inferred:
                return  # already reported
            else:
                # A real exit after a sweep inferred one (the watermark should prevent it; if
                # it happens, the sensor's record, with its exit status, wins and says so).
                supersedes = True
                self.counters.reconcile["late_exits"] += 1
        if r.comm and entry.comm is None:
            entry.comm = text_or_none(r.comm)
        self.table.mark_exited(key)
        if inferred:
            entry.exit_inferred = True
            self.counters.inferred_exits += 1
        else:
            entry.exit_inferred = False
        if self.filtered_out("exit"):
            return
        code, sig, core = split_wait_status(r.status) if r.status is not None else (None, None, False)
        start = r.start_mono_ns if r.start_mono_ns is not None else entry.start_mono_ns
        duration = max(0, r.ts_ns - start) if start is not None and not inferred else None
        self.emit_process(self.build.exit_event(entry, r.ts_ns, source or self.source.name, code,
                                                sig, core, duration, inferred, supersedes))

    def on_lost(self, r: LostRecord) -> None:
        self.emit_other(LostEvent("lost", self.clock.now(), self.source.name, r.cpu, r.count))
        self._reconcile_due = "lost"
        self._lost_since_reconcile = True

    def _live_entry(self, pid: int) -> Entry | None:
        key = self.table.key_for_pid(pid)
        entry = self.table.get(key) if key is not None else None
        return entry if entry is not None and entry.exited_at is None else None

    def on_comm(self, r: CommRecord) -> None:
        entry = self._live_entry(r.pid)
        if entry is not None:
            entry.comm = text(r.comm)  # prctl(PR_SET_NAME) or a write to comm
            entry.ancestor = None

    def on_cred(self, r: CredRecord) -> None:
        entry = self._live_entry(r.pid)
        if entry is None:
            return
        if r.what == "uid":
            entry.uid, entry.euid = r.real, r.effective
            entry.user = self.users(r.real)
        else:
            entry.gid, entry.egid = r.real, r.effective

    def on_decode_error(self, r: DecodeErrorRecord) -> None:
        self.counters.decode_errors += 1

    # -- the hold window -------------------------------------------------------------------
    def take(self) -> None:
        """Everything the source has buffered, into the hold window."""
        records = self.source.drain()
        if len(records) > self.counters.queue_peak:
            self.counters.queue_peak = len(records)
        warm = self.enricher.warm
        for r in records:
            if type(r) is ExecRecord and r.cgroup_id:
                warm(r.cgroup_id)  # on arrival, before the cgroup can go: see Enricher.warm
        self.window.add(records)

    def drain(self, flush: bool = False, until_ns: int | None = None) -> None:
        """Take what the source has, then apply every held record that is due (all of them
        with flush=True; those up to until_ns with until_ns)."""
        self.take()
        if until_ns is not None:
            ready, exiting = self.window.release(until_ns + self.window.delay_ns)
        else:
            ready, exiting = self.window.release(time.monotonic_ns(), flush)
        if not ready:
            return
        apply = self._apply
        backlog = self.cfg.backlog
        n = len(ready)
        for i, r in enumerate(ready):
            if type(r) is ExecRecord:
                # Enrichment is skipped while more than `backlog` records wait behind this one.
                self.on_exec(r, exited=(r.pid, r.start_ticks) in exiting,
                             skip_enrichment=n - i - 1 > backlog)
            else:
                apply[type(r)](r)

    def next_due_ms(self) -> int:
        """How long the loop may block in poll before a held record is due."""
        due = self.window.next_due_ns()
        if due is None:
            return self.cfg.poll_timeout_ms
        # Wake a little after the oldest record is due, not exactly then: records keep
        # arriving, and one turn of the loop for several milliseconds' worth of them costs
        # far less than a turn per millisecond. Latency grows by at most BATCH_SLACK_MS.
        # (Turns at least 10 ms apart were tried: 30 % fewer turns on the realistic level and
        # 9 % less monitor CPU there (bench/side_by_side.py), but exec-to-event p99 18 -> 24 ms;
        # at least 7 ms apart: p99 18.7-19.8 ms, CPU -3.5 %, inside the method's noise.)
        left = due - time.monotonic_ns()
        return max(1, min(self.cfg.poll_timeout_ms, left // 1_000_000 + BATCH_SLACK_MS))

    # -- sweeps ----------------------------------------------------------------------------
    def _sweep(self) -> Sweep:
        return Sweep(self.fs, self.depth, self.cfg.environ, self.sweep_stats,
                     exclude=frozenset((self.self_pid,)))

    def on_snapshot(self, snap: ProcessSnapshot, kind: str) -> Entry | None:
        """A process found by a sweep: `existing` at start, `missed` later."""
        entry = self.on_exec(exec_from_snapshot(snap, time.monotonic_ns()), kind=kind,
                             source="sweep")
        # Exited only when nothing of the group is left but the zombie: a leader that called
        # pthread_exit is a zombie too while its other threads run (delay_group_leader), and
        # the process's real exit, with its status, is still to come from the sensor (taking
        # it for exited here made on_exit drop that exit as already reported).
        if entry is not None and snap.zombie and (snap.threads or 1) <= 1:
            if kind == "existing":
                entry.exit_unreported = True  # see on_exit
                self.table.mark_exited((entry.pid, entry.start_ticks))
            else:
                self.on_exit(ExitRecord(time.monotonic_ns(), snap.pid, snap.start_ticks, None),
                             inferred=True, source="sweep")
        return entry

    def sweep_existing(self, pids: list[int] | None = None) -> int:
        """Every process already running (or those in pids), parents first, as `existing`."""
        snaps = [s for s in self._sweep().snapshots(pids)
                 if (s.pid, s.start_ticks) not in self.table]  # else the sensor already told us
        for snap in sort_parents_first(snaps):
            self.on_snapshot(snap, "existing")
        return len(snaps)

    def reconcile(self) -> None:
        """Compare procfs with the table, behind a watermark (see monitor/reconcile.py)."""
        self._last_reconcile = time.monotonic()
        self._reconcile_due = None
        lost = self._lost_since_reconcile
        self._lost_since_reconcile = False
        counters = self.counters.reconcile
        counters["sweeps"] += 1
        sweep = self._sweep()
        mark_ns = time.monotonic_ns()
        listing = sweep.stats_of_all()
        listed_ns = time.monotonic_ns()
        # Every record of what the listing showed is written by now: take all of it, and
        # apply everything up to the end of the listing (later records stay held).
        self.source.sync()
        self.take()
        while self.source.pending():
            self.source.sync()
            self.take()
        self.drain(until_ns=listed_ns)
        v = reconcile.judge(self.table, listing, mark_ns, self.self_pid,
                            lost or self._lost_since_reconcile)
        counters["deferred"] += v.deferred
        counters["missed_zombies_skipped"] += v.zombies_skipped
        # What this sweep found is judged only when the next sweep finds it too (see
        # monitor/reconcile.py, "suspects"): procfs can show an exec's new comm before its
        # tracepoint has run, and a process stuck there under load for milliseconds would be
        # called missed. Found processes are read now, so one that is gone by the next sweep
        # is still reported with what it was.
        prev = self._suspects
        now_suspects = reconcile.Suspects()
        new: list[ProcessSnapshot] = []
        for key in v.unknown + v.changed:
            entry = self.table.get(key)
            earlier = prev.snapshots.pop(key, None)
            if earlier is not None:
                if entry is None or entry.comm == earlier[1]:
                    # Still unknown, or still the image from before the exec: a real miss.
                    new.append(sweep.read(*key) or earlier[0])
                continue
            snap = sweep.read(*key)
            if snap is None:
                continue
            if entry is not None and _same_image(entry, snap):
                continue  # the same program renamed itself (prctl, setproctitle): no exec missed
            now_suspects.snapshots[key] = (snap, entry.comm if entry is not None else None)
        for key, (snap, comm_then) in prev.snapshots.items():
            # Suspected last time and gone since: a miss if the sensor never reported it
            # (still unknown, or still showing the image before the exec), with what it was.
            entry = self.table.get(key)
            if entry is None or (entry.comm == comm_then and entry.exe != text_or_none(snap.exe)):
                new.append(snap)
        for snap in sort_parents_first(new):
            self.counters.missed += 1
            self.on_snapshot(snap, "missed")
        for key in v.zombies + v.vanished:
            if key not in prev.exits:
                now_suspects.exits.add(key)
                continue
            if key in v.vanished and self._alive(key):
                continue  # the listing could not read it, yet it lives: do not invent an exit
            self.on_exit(ExitRecord(time.monotonic_ns(), key[0], key[1], None), inferred=True,
                         source="sweep")
        self._suspects = now_suspects
        counters["suspects"] += len(now_suspects)
        if now_suspects:
            self._reconcile_due = "suspects"  # judge them soon, not a whole interval later

    def _alive(self, key: Key) -> bool:
        try:
            st = read_stat(self.fs, key[0])
        except ProcessGone:
            return False
        except ProcFSError:
            return True  # cannot tell: do not invent an exit
        # A zombie leader with live threads (pthread_exit from main) is a living process.
        return st.starttime == key[1] and not (st.state in ("Z", "X") and st.num_threads <= 1)

    # -- stats and the loop ----------------------------------------------------------------
    def stats(self) -> StatsEvent:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        # RSS now and its peak from our own status: ru_maxrss also counts the parent's pages
        # that this process shared between its fork and its exec (started from a large
        # parent, it reported that parent's size).
        rss = peak = 0
        try:
            status = self.fs.read_parsed("self", "status", parse_status)
            rss, peak = status.vm_rss or 0, status.vm_hwm or 0
        except ProcFSError:
            pass
        lost = self.source.lost_per_cpu()
        c = self.counters
        return StatsEvent(
            event="stats", time=self.clock.now(), source=self.source.name,
            uptime_s=round(time.monotonic() - self.started, 3),
            events=dict(c.events), lost=sum(lost.values()),
            lost_per_cpu={str(k): v for k, v in lost.items()},
            missed=c.missed, inferred_exits=c.inferred_exits, reconcile=dict(c.reconcile),
            enrichment=dict(c.enrichment), queue_depth=self.source.pending() + len(self.window),
            queue_peak=c.queue_peak, table_size=len(self.table),
            table_evictions=self.table.evictions, kernel=self.source.counters(),
            dropped_writes=self.sink.dropped_writes, decode_errors=c.decode_errors,
            output_buffer={"bound_bytes": self.cfg.output_buffer_bytes,
                           "peak_bytes": max(self.sink.pending_peak, self.sink.pending_bytes)},
            cgroups=dict(self.enricher.cgroups.stats), socket_table=self.enricher.socket_table_stats(),
            time_s={"enrich": {k: round(v, 6) for k, v in c.time_enrich.items()},
                    "encode": {k: round(v, 6) for k, v in c.time_encode.items()},
                    "detect": {k: round(v, 6) for k, v in c.time_detect.items()},
                    "output": {"all": round(c.time_output, 6)}},
            cpu_time_s=round(ru.ru_utime + ru.ru_stime, 3), rss_bytes=rss,
            peak_rss_bytes=peak,
            detection=self.detector.counters() if self.detector is not None else None)

    def run(self) -> None:
        cfg = self.cfg
        self.sweep_existing()
        self.drain()
        self.flush()
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
                self.emit_stats()
                next_stats = now + cfg.stats_interval_s
            self.table.expire(now)
            # Under a storm, one write per loop turn is thousands of small writes a second
            # (the largest single cost in the benchmark's profile): write at most every
            # FLUSH_EVERY_S while records keep coming, at once when the stream goes quiet.
            if not len(self.window) or now - last_flush >= FLUSH_EVERY_S or self.stop_requested:
                self.flush()
                last_flush = now
            if deadline is not None and now >= deadline:
                break
        self.drain(flush=True)

    def finish(self) -> None:
        """Final stats, then flush: called on every orderly exit."""
        self.emit_stats()
        self.flush()

    def emit_stats(self) -> None:
        """A stats event, after detection has run over what was emitted before it, so that its
        alert counters (and status.json's and the metrics', read from it) cover those events."""
        self.detect()
        self.emit_other(self.stats())


def _hex(caps: int | None, _seen: dict[int, str] = {}) -> str | None:  # noqa: B006 - the cache
    """A capability mask as status prints it (16 hex digits); the few distinct masks of a host
    are formatted once."""
    if caps is None:
        return None
    got = _seen.get(caps)
    if got is None:
        if len(_seen) >= 1024:
            _seen.clear()
        got = _seen[caps] = f"{caps:016x}"
    return got


def _stdio(fds, _seen: dict = {}) -> tuple[Stdio, ...] | None:  # noqa: B006 - the cache
    """The event's stdio objects, built once per distinct triple and shared by the events that
    carry it (values, only ever serialised, like a shared Ancestor)."""
    if fds is None:
        return None
    got = _seen.get(fds)
    if got is None:
        if len(_seen) >= 4096:
            _seen.clear()
        got = _seen[fds] = tuple([Stdio(*s) for s in fds])
    return got


FLUSH_EVERY_S = 0.005
DETECT_BATCH = 1024  # process events held for detection at most (Pipeline.detect)
BATCH_SLACK_MS = 5


def _same_image(entry: Entry, snap: ProcessSnapshot) -> bool:
    """Is snap still the program image the table has for entry? By image_id where both sides
    know it (an exec always maps a new image; a process that renames itself and rewrites its
    argv, as stress-ng's children do, keeps it), else by exe and argv."""
    if entry.image_id is not None:
        found = snap.image_id
        if found is not None:
            return found == entry.image_id
    return text_or_none(snap.exe) == entry.exe and texts(snap.argv) == entry.argv


def _differences(r: ExecRecord, snap: ProcessSnapshot) -> dict[str, object] | None:
    """What procfs says now where it disagrees with what the kernel captured at exec."""
    out: dict[str, object] = {}
    if snap.argv is not None and not r.argv_truncated and snap.argv != r.argv:
        out["argv"] = texts(snap.argv)
    if snap.cwd is not None and r.cwd is not None and snap.cwd != r.cwd:
        out["cwd"] = text(snap.cwd)
    if snap.uids is not None and snap.uids[1] != r.euid:
        out["euid"] = snap.uids[1]
    return out or None
