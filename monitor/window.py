"""The hold window: records wait here a few milliseconds, in kernel time order, before the
pipeline acts on them.

It does two things. Records of different CPUs are merged back into kernel time order even
across poll batches (perf buffers are per CPU). And an exec whose process exits within the
delay is not read from procfs at all: the kernel already captured what it ran, and reading a
process in its last microseconds is the costliest part of the per-exec work. Enrichment is
spent on processes that live long enough for it to pay.
"""
from __future__ import annotations

import bisect

from monitor.records import ExitRecord


def _ts(rec) -> int:
    return rec[0]


class HoldWindow:
    def __init__(self, delay_ns: int, max_held: int) -> None:
        self.delay_ns = delay_ns
        self.max_held = max_held  # past this many, everything is released at once
        self._held: list = []  # records, sorted by ts_ns

    def __len__(self) -> int:
        return len(self._held)

    def add(self, records: list) -> None:
        """Records sorted by ts_ns (each source's drain() sorts its own)."""
        if not records:
            return
        held = self._held
        if held and records[0][0] < held[-1][0]:
            held.extend(records)
            held.sort(key=_ts)  # stable: a source's order among equal times is kept
        else:
            held.extend(records)

    def release(self, now_ns: int, flush: bool = False) -> tuple[list, set[tuple[int, int]]]:
        """(records due, identities of the processes that exit anywhere in the window).

        Due: older than the delay; everything with flush=True or when more than max_held wait.
        The exiting set covers the whole window, not only what is due: an exec released now
        whose exit is still held is as good as gone."""
        held = self._held
        if not held:
            return [], set()
        if flush or len(held) > self.max_held:
            cut = len(held)
        else:
            cut = bisect.bisect_right(held, now_ns - self.delay_ns, key=_ts)
        if cut == 0:
            return [], set()
        exiting = {(r.pid, r.start_ticks) for r in held if type(r) is ExitRecord}
        ready = held[:cut]
        del held[:cut]
        return ready, exiting

    def next_due_ns(self) -> int | None:
        """When the oldest held record becomes due (CLOCK_MONOTONIC), or None when empty."""
        return self._held[0][0] + self.delay_ns if self._held else None
