"""The session's BPF sensor, read in-process: every decoded record kept for tests to filter."""
from __future__ import annotations

import os
from collections import Counter
from typing import Callable

from monitor.sensors.bpf import wire
from tests.support.wait import run, until

TRUE = os.path.realpath("/bin/true")


class Collector:
    """Polls a started sensor and keeps every decoded record, for tests to filter by PID."""

    def __init__(self, sensor) -> None:
        self.sensor = sensor
        self.records: list = []
        self.sizes: list[tuple[int, int]] = []  # (callback size, header size)
        self._barriers = 0

    def drain(self) -> None:
        q = self.sensor.queue
        while q:
            _cpu, data = q.popleft()
            r = wire.decode(data)
            self.sizes.append((len(data), wire.HEADER.unpack_from(data)[3]))
            self.records.append(r)

    def poll(self, ms: int = 50) -> None:
        self.sensor.poll(ms)
        self.drain()

    def seen(self) -> str:
        kinds = Counter(type(r).__name__ for r in self.records)
        return f"{len(self.records)} records {dict(kinds)}, last {self.records[-3:]}"

    def until(self, predicate: Callable[[list], object], timeout: float = 10.0,
              what: str = "the sensor records the test expects"):
        """Poll until predicate(records) is truthy; return its value (fail on timeout)."""
        def check():
            self.poll(50)
            return predicate(self.records)
        return until(check, timeout, what, self.seen, interval=0)

    def of(self, pid: int, kind=None) -> list:
        """Records of the process with this PID: the first one seen with it, so that a PID
        reused by some other process on a busy host (pid_max may be 32768) is not mixed in."""
        mine = [r for r in self.records if r.tgid == pid]
        if mine:
            start = mine[0].start_boottime
            mine = [r for r in mine if r.start_boottime == start]
        return [r for r in mine if kind is None or isinstance(r, kind)]

    def execs(self, pid: int) -> list[wire.RawExec]:
        return self.of(pid, wire.RawExec)

    def exits(self, pid: int) -> list[wire.RawExit]:
        return self.of(pid, wire.RawExit)

    def wait_exit(self, pid: int, timeout: float = 10.0) -> wire.RawExit:
        self.until(lambda rs: self.exits(pid), timeout, f"the exit of pid {pid}")
        (ex,) = self.exits(pid)
        return ex

    def exec_of(self, argv: tuple[bytes, ...], timeout: float = 10.0) -> int:
        """The PID of the (first) exec that ran exactly argv, once its record is in."""
        return self.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv == argv), None), timeout, f"an exec of {argv}")

    def barrier(self, timeout: float = 10.0) -> None:
        """Return once every record of what happened before the call has been read: a marker
        process runs after it, its exit is awaited, then the buffers are polled once more (a
        poll that reads CPU 0 before CPU 1 could have passed CPU 0 just before an earlier record
        landed there; one that starts after the marker's exit cannot)."""
        self._barriers += 1
        argv = (TRUE.encode(), f"barrier-{os.getpid()}-{self._barriers}".encode())
        run(argv, timeout, check=True)
        self.wait_exit(self.exec_of(argv, timeout), timeout)
        self.poll(0)
