"""The one record builder: process-table entries (plus what a record adds) -> output events.

Every exec, fork, existing, missed and exit event is built here, from the entry's fields in one
place, so the event kinds cannot drift apart. Ancestry follows parent keys, never bare PIDs; an
ancestor's view (pid, exec_id, image_id, exe, bounded argv) is built once per image and shared
by every descendant.
"""
from __future__ import annotations

from monitor.clock import Clock
from monitor.events import Ancestor, ExitEvent, ProcessEvent
from monitor.table import Entry, ProcessTable
from userspace.types import ProcKey

ANCESTOR_ARGV_BYTES = 256  # an ancestor's own exec event has its whole argv


class EventBuilder:
    def __init__(self, table: ProcessTable, clock: Clock, ancestry_depth: int,
                 boot_id: str = "") -> None:
        self.table = table
        self.clock = clock
        self.ancestry_depth = ancestry_depth
        self.boot_id = boot_id

    def image_id(self, entry: Entry) -> str | None:
        """entry.image_id, derived from a fork child's layout the first time it is needed."""
        if entry.image_id is None and entry.image_layout is not None:
            entry.image_id = ProcKey(self.boot_id, entry.pid, entry.start_ticks).image_id(
                *entry.image_layout)
            entry.image_layout = None
        return entry.image_id

    def ancestry(self, entry: Entry) -> tuple[Ancestor, ...]:
        out = []
        for a in self.table.ancestry(entry, self.ancestry_depth):
            if a.ancestor is None:  # built once per exec image, shared by every descendant
                argv, cut = bounded_argv(a.argv)
                a.ancestor = Ancestor(a.pid, a.exec_id, a.exe, argv, cut, self.image_id(a))
                if cut:  # for the detector's ParentCommandLine (fields.parent_argv); an
                    a.ancestor._argv = a.argv  # underscore attribute: orjson leaves it out
            out.append(a.ancestor)
        return tuple(out)

    def process_event(self, kind: str, entry: Entry, when: str, source: str,
                      **extra) -> ProcessEvent:
        return ProcessEvent(
            event=kind, time=when, source=source, pid=entry.pid, ppid=entry.ppid,
            exec_id=entry.exec_id, parent_exec_id=entry.parent_exec_id,
            uid=entry.uid, euid=entry.euid, gid=entry.gid, egid=entry.egid, user=entry.user,
            comm=entry.comm, exe=entry.exe, argv=entry.argv, argv_truncated=entry.argv_truncated,
            cwd=entry.cwd, start_time=entry.start_ticks, container_id=entry.container_id,
            ns=entry.ns, vpid=entry.vpid, image_id=self.image_id(entry),
            parent_image_id=entry.parent_image_id, **extra)

    def exit_event(self, entry: Entry, ts_ns: int, source: str, code: int | None,
                   sig: int | None, core: bool, duration_ns: int | None, inferred: bool,
                   supersedes_inferred: bool) -> ExitEvent:
        return ExitEvent(
            event="exit", time=self.clock.from_mono(ts_ns), source=source, pid=entry.pid,
            ppid=entry.ppid, exec_id=entry.exec_id, parent_exec_id=entry.parent_exec_id,
            uid=entry.uid, euid=entry.euid, gid=entry.gid, egid=entry.egid, user=entry.user,
            comm=entry.comm, exe=entry.exe, argv=entry.argv, argv_truncated=entry.argv_truncated,
            cwd=entry.cwd, start_time=entry.start_ticks, container_id=entry.container_id,
            ns=entry.ns, vpid=entry.vpid, image_id=self.image_id(entry),
            parent_image_id=entry.parent_image_id,
            enrichment="full" if entry.exe is not None or entry.argv is not None else "partial",
            exit_code=code, signal=sig, core_dumped=core, duration_ns=duration_ns,
            inferred=inferred, supersedes_inferred=supersedes_inferred)


def bounded_argv(argv: tuple[str, ...] | None) -> tuple[tuple[str, ...] | None, bool]:
    """At most ANCESTOR_ARGV_BYTES of argv (whole elements), and whether some was cut."""
    if argv is None:
        return None, False
    out, used = [], 0
    for a in argv:
        if used + len(a) > ANCESTOR_ARGV_BYTES:
            return tuple(out), True
        out.append(a)
        used += len(a) + 1
    return argv, False
