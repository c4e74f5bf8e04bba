"""Reconciliation: what a procfs sweep says the sensor missed, judged without racing the sensor.

A sweep lists every process (its <pid>/stat) and compares the listing with the process table.
Done naively, it judges records still in flight: a process whose exec record is still in a perf
ring looks missed, and one whose exit record is still there looks gone without an exit (both
seen under load: phantom `missed` events and real exit codes replaced by inferred exits).

The watermark makes the judgement exact. Every sensor reports synchronously from the kernel
path it hooks: an exec's record is written to its CPU's ring (or the connector's message sent)
before execve returns to the new program; an exit's before the task is reaped and leaves procfs.
So whatever the listing showed, the record explaining it was already written when the listing
was read. The pipeline therefore (1) takes the watermark, the CLOCK_MONOTONIC time before the
listing starts, (2) lists procfs, (3) has the sensor take in everything already written
(Source.sync) and applies every record up to the end of the listing, then (4) judges:

* a process in the listing that the table does not know is missed: its record was lost (or
  never came: a sensor that starts after it);
* a known process running another program than the table says: its exec record was lost;
* a process the table knew before the watermark that the listing did not show, with no exit
  record applied, exited without one: its exit is inferred (after one more stat, so a process
  the listing could not read is not declared dead);
* a table entry that appeared after the watermark is not judged (counted as `deferred`): it may
  have started after the listing passed its PID.

A zombie (exited, not yet reaped) that the table does not know is reported only when the sensor
lost records since the previous sweep: otherwise its exit was reported and its table entry
expired already (a parent that never reaps), which is no miss.

Suspects. The watermark covers every record written before the listing, but procfs runs ahead of
two tracepoints: exec sets the new comm in begin_new_exec() before trace_sched_process_exec()
runs at the end of exec_binprm(), and a process can be preempted in between; seen in a soak on
a loaded 2-core host (34 `missed` for processes whose exec record arrived right after the
sweep, and 7 inferred exits superseded by the real ones). So a sweep only suspects: what it
finds is judged by the next sweep (scheduled a second later), which reports it only if the
sensor still has not. A suspect is read from procfs when first found, so one that is gone by
the next sweep is still reported as `missed`, with what it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from monitor.table import Key, ProcessTable
from monitor.text import text
from userspace.parsers import Stat
from userspace.types import ProcessSnapshot


@dataclass
class Suspects:
    """What one sweep found, for the next one to confirm."""

    # key -> (its snapshot when found, the table's comm for it then, None if unknown)
    snapshots: dict[Key, tuple[ProcessSnapshot, str | None]] = field(default_factory=dict)
    exits: set[Key] = field(default_factory=set)  # live in the table, gone or zombie in procfs

    def __len__(self) -> int:
        return len(self.snapshots) + len(self.exits)


@dataclass
class Verdict:
    unknown: list[Key] = field(default_factory=list)  # in procfs, not in the table
    changed: list[Key] = field(default_factory=list)  # known, but comm differs: exec lost?
    zombies: list[Key] = field(default_factory=list)  # known live, procfs says exited
    vanished: list[Key] = field(default_factory=list)  # known live before the mark, not listed
    deferred: int = 0
    zombies_skipped: int = 0


def judge(table: ProcessTable, listing: dict[int, Stat], mark_ns: int, self_pid: int,
          lost_since_last: bool) -> Verdict:
    """Compare a listing taken after mark_ns with a table that has every record up to the end
    of the listing applied (see the module docstring)."""
    v = Verdict()
    listed: set[Key] = set()
    for pid, st in listing.items():
        if pid == self_pid:
            continue
        key = (pid, st.starttime)
        listed.add(key)
        entry = table.get(key)
        # Exited, not yet reaped. A leader that called pthread_exit is a zombie too while its
        # threads run (delay_group_leader): the process lives until num_threads drops.
        zombie = st.state in ("Z", "X") and st.num_threads <= 1
        if entry is None:
            if zombie and not lost_since_last:
                v.zombies_skipped += 1
            else:
                v.unknown.append(key)
        elif entry.exited_at is not None:
            continue
        elif zombie:
            v.zombies.append(key)
        elif entry.comm is not None and text(st.comm) != entry.comm:
            # Known from its fork, but running another program: its exec record was lost (the
            # entry still shows the parent's image). A comm changed by prctl alone is told
            # apart by exe and argv, which only an exec replaces (the caller reads them).
            v.changed.append(key)
    for key in table.live_keys():
        if key in listed or key[0] == self_pid:
            continue
        entry = table.get(key)
        if entry is None:
            continue
        if entry.since_ns >= mark_ns:
            v.deferred += 1
            continue
        v.vanished.append(key)
    return v
