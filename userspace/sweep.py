"""Sweeps: every process in procfs as ProcessSnapshots, and the incremental diff between sweeps.

The one sweep implementation (class Sweep). Its cost per 1,000 processes at each depth is
measured by bench/sweep_cost.py (figures in bench/RESULTS.md).

Knows nothing about the daemon: ``monitor/`` turns snapshots into records. Failure stays local
(falco scap_proc_scan_proc_dir_impl): a PID that cannot be read is counted and skipped, and
its gap is filled by its next event or the next sweep. Each kind of error is logged once per
SweepStats (tetragon's cgroupNsWarned), and counted every time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from .parsers import Stat
from .process import read_namespaces, read_process, read_stat
from .procfs import AccessDenied, ParseError, ProcessGone, ProcFS, ProcFSError
from .sockets import SocketTables
from .types import Depth, Namespaces, ProcessSnapshot, ProcKey

log = logging.getLogger(__name__)


@dataclass
class SweepStats:
    """Counters for the sweeps that share this object."""

    scanned: int = 0  # snapshots produced
    gone: int = 0  # listed, then exited before its stat could be read: normal churn
    denied: int = 0
    parse_errors: int = 0
    other_errors: int = 0
    _warned: set = field(default_factory=set, repr=False)

    def count(self, pid: int, exc: ProcFSError) -> None:
        if isinstance(exc, ProcessGone):
            self.gone += 1
            kind = "gone"
        elif isinstance(exc, AccessDenied):
            self.denied += 1
            kind = "denied"
        elif isinstance(exc, ParseError):
            self.parse_errors += 1
            kind = "parse_error"
        else:
            self.other_errors += 1
            kind = "other"
        if kind not in self._warned:
            self._warned.add(kind)
            # A process exiting mid-sweep is expected, so "gone" is only debug.
            level = logging.DEBUG if kind == "gone" else logging.WARNING
            log.log(level, "sweep.skip kind=%s proc.pid=%d error=%s (further ones counted, not logged)", kind, pid, exc)


class Sweep:
    """One pass over procfs. What it reads once is shared by every process of the pass (PID
    1's namespaces, socket tables per netns, mount tables per mnt namespace), lazily, so a pass
    that reads nothing new costs nothing. Used by the daemon's start-up sweep and periodic
    reconciliation, by `procsentry snapshot`, by the polling sensor and by the benchmark."""

    def __init__(self, fs: ProcFS, depth: Depth = Depth.CHEAP, environ: bool = False,
                 stats: SweepStats | None = None, exclude: frozenset[int] = frozenset()) -> None:
        self.fs = fs
        self.depth = depth
        self.environ = environ
        self.stats = SweepStats() if stats is None else stats
        self.exclude = exclude  # PIDs never reported (the monitor itself)
        self._init_ns: Namespaces | ProcFSError | None = None
        self._init_ns_read = False
        self.sockets: SocketTables | None = None
        self.mounts: dict[int, tuple[bytes, ...]] | None = None
        if depth is not Depth.CHEAP:
            self.sockets = SocketTables(fs)
        if depth is Depth.FULL:
            self.mounts = {}

    def init_ns(self) -> Namespaces | ProcFSError:
        if not self._init_ns_read:
            self._init_ns_read = True
            try:
                self._init_ns = read_namespaces(self.fs, 1)
            except ProcFSError as exc:
                self._init_ns = exc  # read_process reports ns_differs_from_init missing, why
        assert self._init_ns is not None
        return self._init_ns

    def pids(self) -> list[int]:
        """Every PID in procfs, in order, the excluded ones left out; [] if the listing fails."""
        try:
            pids = self.fs.pids()
        except ProcFSError as exc:
            self.stats.count(0, exc)
            return []
        return sorted(p for p in pids if p not in self.exclude)

    def stats_of_all(self) -> dict[int, Stat]:
        """The cheapest listing: <pid>/stat of every process (identity, state, comm). A process
        gone between the listing and its stat is simply absent."""
        out: dict[int, Stat] = {}
        for pid in self.pids():
            try:
                out[pid] = read_stat(self.fs, pid)
            except ProcFSError as exc:
                self.stats.count(pid, exc)
        return out

    def read(self, pid: int, start_ticks: int | None = None) -> ProcessSnapshot | None:
        """pid at this sweep's depth; None if it cannot be read, or if start_ticks is given and
        the PID now belongs to another process."""
        try:
            snap = read_process(
                self.fs, pid, self.depth, environ=self.environ, sockets=self.sockets,
                init_ns=self.init_ns() if self.depth is Depth.FULL else None,
                mounts_cache=self.mounts)
        except ProcFSError as exc:
            self.stats.count(pid, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - a reader bug on one PID must not end the sweep
            self.stats.other_errors += 1
            log.exception("sweep.bug proc.pid=%d: %s", pid, exc)
            return None
        if start_ticks is not None and snap.start_ticks != start_ticks:
            return None
        self.stats.scanned += 1
        return snap

    def snapshots(self, pids: Iterable[int] | None = None) -> Iterator[ProcessSnapshot]:
        """Snapshot every process (or those in pids), in PID order."""
        for pid in (self.pids() if pids is None else pids):
            if pid in self.exclude:
                continue
            snap = self.read(pid)
            if snap is not None:
                yield snap


def scan(
    fs: ProcFS, depth: Depth = Depth.CHEAP, environ: bool = False, stats: SweepStats | None = None
) -> Iterator[ProcessSnapshot]:
    """Snapshot every process, in PID order. Pass ``stats`` to read the error counts."""
    return Sweep(fs, depth, environ, stats).snapshots()


class IncrementalScanner:
    """Diffs successive sweeps. Only PIDs not seen before are read in full; a known PID costs
    one stat read, which is enough to notice reuse: same PID, different start time means the
    old process vanished and a new one appeared."""

    def __init__(self, fs: ProcFS, environ: bool = False) -> None:
        self.fs = fs
        self.environ = environ
        self.stats = SweepStats()
        self._known: dict[int, ProcKey] = {}

    @property
    def known(self) -> dict[int, ProcKey]:
        return dict(self._known)

    def diff(self, depth: Depth = Depth.CHEAP) -> tuple[list[ProcessSnapshot], list[ProcKey]]:
        fs = self.fs
        sweep = Sweep(fs, depth, self.environ, self.stats)
        current = set(sweep.pids())
        appeared: list[ProcessSnapshot] = []
        vanished: list[ProcKey] = [k for pid, k in self._known.items() if pid not in current]
        for pid in sorted(current):
            old = self._known.get(pid)
            if old is not None:
                try:
                    st = read_stat(fs, pid)
                except ProcessGone:
                    vanished.append(old)
                    del self._known[pid]
                    continue
                except ProcFSError as exc:
                    self.stats.count(pid, exc)
                    continue  # cannot tell: keep it known, look again next time
                if st.starttime == old.start_ticks:
                    continue
                vanished.append(old)  # PID reused
                del self._known[pid]
            snap = sweep.read(pid)
            if snap is not None:
                self._known[pid] = snap.key
                appeared.append(snap)
        for key in vanished:
            if self._known.get(key.pid) == key:
                del self._known[key.pid]
        return appeared, vanished


def sort_parents_first(snapshots: Iterable[ProcessSnapshot]) -> list[ProcessSnapshot]:
    """Order snapshots so that each parent comes before its children (tetragon pushEvents
    sends a synthetic parent before any child). Siblings keep start-time order; a process whose
    parent is not in the set is a root. Iterative, so deep chains do not hit recursion limits;
    anything left over (a ppid cycle, impossible in a consistent snapshot but possible across
    PID reuse) is appended in start-time order."""
    snaps = sorted(snapshots, key=lambda s: (s.start_ticks, s.pid))
    by_pid = {s.pid: s for s in snaps}
    children: dict[int, list[ProcessSnapshot]] = {}
    roots: list[ProcessSnapshot] = []
    for s in snaps:
        if s.ppid != s.pid and s.ppid in by_pid:
            children.setdefault(s.ppid, []).append(s)
        else:
            roots.append(s)
    out: list[ProcessSnapshot] = []
    done: set[int] = set()
    stack = list(reversed(roots))
    while stack:
        s = stack.pop()
        if s.pid in done:
            continue
        done.add(s.pid)
        out.append(s)
        stack.extend(reversed(children.get(s.pid, ())))
    out.extend(s for s in snaps if s.pid not in done)
    return out
