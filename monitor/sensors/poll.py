"""The polling sensor: incremental procfs sweeps, for hosts with neither BPF nor the connector.

The classic method (ps in a loop) improved: userspace.sweep.IncrementalScanner reads only the
PIDs it has not seen before in full, and costs one stat read per known PID, enough to notice
PID reuse (same PID, new start time). A new process becomes an `exec` event, a vanished one an
`exit`, both with source "poll".

What polling costs in completeness, compared with BPF:
* a process that starts and ends between two sweeps (default 100 ms apart) is never seen;
* an exec without a fork (bash's last command, `exec prog`) keeps PID and start time, so it is
  not noticed: the process keeps its first image;
* the time of an event is when the sweep noticed it, up to one interval late;
* no exit status (the process is reaped before we look) and no lost count: what polling
  misses leaves no trace.
"""
from __future__ import annotations

import time

from monitor.records import ExitRecord, exec_from_snapshot
from userspace.procfs import ProcFS
from userspace.sweep import IncrementalScanner, sort_parents_first
from userspace.types import Depth

DEFAULT_INTERVAL_S = 0.1


class PollSource:
    name = "poll"

    def __init__(self, fs: ProcFS, interval_s: float = DEFAULT_INTERVAL_S,
                 depth: Depth = Depth.EXEC) -> None:
        self.fs = fs
        self.interval_s = interval_s
        self.depth = depth
        self.scanner = IncrementalScanner(fs)
        self._next = 0.0
        self.c = {"sweeps": 0, "appeared": 0, "vanished": 0, "sweep_us_last": 0, "sweep_us_max": 0}

    def start(self) -> None:
        # The baseline: what runs now is the pipeline's start-up sweep (`existing`), not news.
        self.scanner.diff(Depth.CHEAP)
        self._next = time.monotonic() + self.interval_s

    def poll(self, timeout_ms: int) -> None:
        wait = min(self._next - time.monotonic(), timeout_ms / 1000)
        if wait > 0:
            time.sleep(wait)

    def drain(self) -> list:
        now = time.monotonic()
        if now < self._next:
            return []
        # Fixed rate; after a sweep slower than the interval, start again from now.
        self._next = max(self._next + self.interval_s, now)
        t0 = time.perf_counter()
        appeared, vanished = self.scanner.diff(self.depth)
        us = int((time.perf_counter() - t0) * 1e6)
        c = self.c
        c["sweeps"] += 1
        c["appeared"] += len(appeared)
        c["vanished"] += len(vanished)
        c["sweep_us_last"] = us
        c["sweep_us_max"] = max(c["sweep_us_max"], us)
        ts = time.monotonic_ns()
        # Vanished first: a reused PID's old process ends before its new one is reported. Not
        # an inferred exit: noticing absence is how this sensor sees every exit (no status).
        out: list = [ExitRecord(ts, key.pid, key.start_ticks, None) for key in vanished]
        # Observed running: the start-up sweep (or a reconcile) may have reported it already.
        out += [exec_from_snapshot(snap, ts, observed=True) for snap in sort_parents_first(appeared)]
        return out

    def sync(self) -> None:
        pass  # nothing in flight: what polling has not seen yet, it has not seen

    def pending(self) -> int:
        return 0

    def lost_per_cpu(self) -> dict[int, int]:
        return {}

    def counters(self) -> dict[str, int]:
        st = self.scanner.stats
        return dict(self.c, read_gone=st.gone, read_denied=st.denied,
                    read_errors=st.parse_errors + st.other_errors)

    def close(self) -> None:
        pass
