"""The process table: what the monitor knows about every live (and recently exited) process.

Keyed by (pid, start_ticks), the in-boot part of ProcKey: the kernel sensor and the procfs sweep
derive the same key for the same process, and a reused PID gets a new key.

Lifecycle (after tetragon's pkgprocfsess/cache.go): perf buffers are per CPU, so records of one
process can arrive out of order (its exit before its exec when they ran on different CPUs). An
exited entry is therefore kept for `grace_s` as a tombstone: late records still find it, its
children still find their ancestry, and an exec arriving after the exit does not resurrect it.
The table is bounded: past `max_entries` the oldest exited entries go first, then the oldest
live ones; every eviction is counted (a fork bomb costs ancestry, never unbounded memory).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

Key = tuple[int, int]  # (pid, start_ticks)


@dataclass(slots=True)
class Entry:
    pid: int
    start_ticks: int
    exec_id: str
    ppid: int | None = None
    parent_key: Key | None = None
    parent_exec_id: str | None = None
    comm: str | None = None  # text: decoded once when the process enters the table
    exe: str | None = None
    argv: tuple[str, ...] | None = None
    argv_truncated: bool = False
    cwd: str | None = None
    uid: int | None = None
    euid: int | None = None
    gid: int | None = None
    egid: int | None = None
    user: str | None = None
    container_id: str | None = None
    ns: dict[str, int | None] | None = None
    vpid: int | None = None  # the PID in its own PID namespace
    image_id: str | None = None  # the program image it runs now: changes on every exec
    # A fork child's image layout whose image_id is not derived yet: hashed only when an event
    # or a descendant's ancestry needs it (EventBuilder.image_id), not once per fork.
    image_layout: tuple[int, int] | None = None
    exited_at: float | None = None  # monotonic seconds; None while alive
    exit_inferred: bool = False  # its exit was inferred by a sweep, not reported by the sensor
    # Found a zombie by the start-up sweep and marked exited without an exit event: an exit
    # record from the sensor (attached before that sweep) is then still its one exit.
    exit_unreported: bool = False
    # CLOCK_MONOTONIC ns of the first record that told the table about it (or of the sweep that
    # found it): reconciliation judges only what it knew of before its watermark.
    since_ns: int = 0
    start_mono_ns: int | None = None  # CLOCK_MONOTONIC start (its fork), for durations
    parent_image_id: str | None = None  # the parent's image when it forked this process
    ancestor: object | None = None  # cached events.Ancestor view of this entry


class ProcessTable:
    def __init__(self, max_entries: int = 65536, grace_s: float = 2.0) -> None:
        self.max_entries = max_entries
        self.grace_s = grace_s
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._exited: OrderedDict[Key, float] = OrderedDict()  # tombstones in exit order
        self._by_pid: dict[int, Key] = {}  # newest key per PID, for sources that give only PIDs
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def get(self, key: Key) -> Entry | None:
        return self._entries.get(key)

    def live_keys(self) -> list[Key]:
        return [k for k, e in self._entries.items() if e.exited_at is None]

    def add(self, entry: Entry) -> Entry:
        key = (entry.pid, entry.start_ticks)
        existing = self._entries.get(key)
        if existing is not None:
            return existing
        self._entries[key] = entry
        current = self._by_pid.get(entry.pid)
        if current is None or current[1] <= key[1]:
            self._by_pid[entry.pid] = key
        if len(self._entries) > self.max_entries:
            self._evict()
        return entry

    def mark_exited(self, key: Key, now: float | None = None) -> None:
        e = self._entries.get(key)
        if e is None or e.exited_at is not None:
            return
        e.exited_at = time.monotonic() if now is None else now
        self._exited[key] = e.exited_at

    def expire(self, now: float | None = None) -> int:
        """Drop tombstones older than the grace period; returns how many went."""
        now = time.monotonic() if now is None else now
        n = 0
        while self._exited:
            key, at = next(iter(self._exited.items()))
            if now - at < self.grace_s:
                break
            self._exited.popitem(last=False)
            self._drop(key)
            n += 1
        return n

    def _drop(self, key: Key) -> None:
        self._entries.pop(key, None)
        if self._by_pid.get(key[0]) == key:
            del self._by_pid[key[0]]

    def key_for_pid(self, pid: int) -> Key | None:
        """The newest known process with this PID (live or tombstoned)."""
        return self._by_pid.get(pid)

    def _evict(self) -> None:
        while len(self._entries) > self.max_entries:
            if self._exited:
                key, _ = self._exited.popitem(last=False)
            else:
                key = next(iter(self._entries))  # oldest live entry
            self._drop(key)
            self.evictions += 1

    def ancestry(self, entry: Entry, depth: int) -> list[Entry]:
        """Nearest ancestor first, following parent keys (never bare PIDs)."""
        out: list[Entry] = []
        seen = {(entry.pid, entry.start_ticks)}
        key = entry.parent_key
        while key is not None and len(out) < depth and key not in seen:
            parent = self._entries.get(key)
            if parent is None:
                break
            out.append(parent)
            seen.add(key)
            key = parent.parent_key
        return out
