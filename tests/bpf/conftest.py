"""One sensor for the whole session (a bcc compile costs 0.5 s here and ~20 s under emulation)."""
from __future__ import annotations

import time

import pytest

from monitor.sensors.bpf import wire


class Collector:
    """Polls the session's sensor and keeps every decoded record, for tests to filter by PID."""

    def __init__(self, sensor) -> None:
        self.sensor = sensor
        self.records: list = []
        self.sizes: list[tuple[int, int]] = []  # (callback size, header size)

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

    def until(self, predicate, timeout: float = 10.0):
        """Poll until predicate(records) is truthy; return its value (fail on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll(50)
            value = predicate(self.records)
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for sensor records")

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
        self.until(lambda rs: self.exits(pid), timeout)
        (ex,) = self.exits(pid)
        return ex


@pytest.fixture(scope="session")
def sensor(shared_sensor):
    """The sensor tests/conftest.py loaded to check BPF works: one compile per session."""
    return shared_sensor


@pytest.fixture
def collector(sensor):
    sensor.poll(0)
    sensor.queue.clear()
    sensor.account_losses(force=True)  # losses from before this test are not this test's
    c = Collector(sensor)
    yield c
    sensor.queue.clear()
