"""Kernel timestamps to wall-clock RFC 3339 strings.

bpf_ktime_get_ns() reads CLOCK_MONOTONIC, which is what time.monotonic_ns() reads on Linux.
The offset to CLOCK_REALTIME is sampled at start and again every `resync_s`, so NTP steps
are followed without a syscall per event.
"""
from __future__ import annotations

import time


class Clock:
    def __init__(self, resync_s: float = 10.0) -> None:
        self.resync_s = resync_s
        self._offset = 0
        self._synced_at = -1e18
        self._cache_sec = -1
        self._cache_prefix = ""
        self.sync()

    def sync(self) -> None:
        # Bracket the realtime read by two monotonic reads and take the midpoint.
        m1 = time.monotonic_ns()
        r = time.time_ns()
        m2 = time.monotonic_ns()
        self._offset = r - (m1 + m2) // 2
        self._synced_at = m2 / 1e9

    def wall_ns(self, mono_ns: int) -> int:
        if mono_ns / 1e9 - self._synced_at > self.resync_s:
            self.sync()
        return mono_ns + self._offset

    def rfc3339(self, wall_ns: int) -> str:
        sec, frac = divmod(wall_ns, 1_000_000_000)
        if sec != self._cache_sec:
            self._cache_sec = sec
            self._cache_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._cache_prefix}.{frac:09d}Z"

    def from_mono(self, mono_ns: int) -> str:
        return self.rfc3339(self.wall_ns(mono_ns))

    def now(self) -> str:
        return self.rfc3339(time.time_ns())


def ticks_at(mono_ns: int) -> int:
    """Start ticks (procfs <pid>/stat field 22: task->start_boottime, CLOCK_BOOTTIME) of a
    process started at CLOCK_MONOTONIC mono_ns. The two clocks differ by the time the host spent
    suspended; the offset is taken now, so this is exact on a host that never suspended since."""
    from userspace.types import NSEC_PER_TICK  # noqa: PLC0415

    offset = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()
    return (mono_ns + offset) // NSEC_PER_TICK
