"""The loader's two backends (handover + our perf reader; bcc in-process) and how one is chosen.

The session's shared sensor runs whichever backend the environment selects; the tests here
load each backend explicitly, so both are covered by one run.
"""
from __future__ import annotations

import os
import platform
import subprocess
import time

import pytest

from monitor.sensors.bpf import loader, perfbuf, wire
from tests.support.wait import reap, run

TRUE = os.path.realpath("/bin/true")
SUBMIT_FAILED = wire.COUNTERS.index("submit_failed")


def test_parse_cpu_list():
    # Documentation/admin-guide/cputopology.rst: ranges and single ids, comma-separated
    assert perfbuf.parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert perfbuf.parse_cpu_list("0\n") == [0]
    with pytest.raises(ValueError):
        perfbuf.parse_cpu_list("\n")


def test_sensor_picks_the_backend(monkeypatch):
    monkeypatch.delenv(loader.BCC_READER_ENV, raising=False)
    s = loader.Sensor(perf_pages=4, wakeup_events=1)
    assert type(s) is (loader.HandoverSensor if platform.machine() == "x86_64" else loader.BccSensor)
    assert (s.perf_pages, s.wakeup_events) == (4, 1)
    monkeypatch.setenv(loader.BCC_READER_ENV, "1")
    s = loader.Sensor(perf_pages=8, wakeup_events=16)
    assert type(s) is loader.BccSensor
    assert (s.perf_pages, s.wakeup_events) == (8, 16)
    # a backend asked for by name is that backend, whatever the environment says
    assert type(loader.HandoverSensor()) is loader.HandoverSensor


@pytest.mark.bpf
@pytest.mark.parametrize("backend", [loader.HandoverSensor, loader.BccSensor],
                         ids=["handover", "bcc"])
def test_overflow_is_counted_on_its_cpu_by_both_loss_channels(backend, progs):
    """A burst on one CPU with nobody reading overflows that CPU's ring. The kernel reports the
    dropped samples in a PERF_RECORD_LOST ahead of the next sample that fits; the BPF side
    counts each failed submit as it happens. Both must say the same number, for that CPU."""
    cpu = perfbuf.online_cpus()[-1]

    def pin():
        os.sched_setaffinity(0, {cpu})

    # each child is a fork, an exec and an exit sample (~600 bytes): ~55 fill 8 pages; 150 under
    # emulation (PROCSENTRY_VM=1: 500 took ~45 s of a guest's budget there), 500 natively
    n = 150 if os.environ.get("PROCSENTRY_VM") == "1" else 500
    s = backend(perf_pages=8)
    s.start()
    try:
        storm = run([str(progs / "fork_storm"), str(n), TRUE], 60, stdout=subprocess.PIPE, preexec_fn=pin)
        children = {int(x) for x in storm.stdout.split()}
        assert storm.returncode == 0 and len(children) == n
        samples = []  # (cpu, record)

        def drain():
            s.poll(0)
            while s.queue:
                c, data = s.queue.popleft()
                samples.append((c, wire.decode(data)))

        drain()
        # The next sample that fits on that CPU carries the kernel's report: make one.
        flush = subprocess.Popen([TRUE, "flush"], preexec_fn=pin)
        reap(flush, 60)
        for _ in range(200):
            drain()
            if any(isinstance(r, wire.RawExec) and r.tgid == flush.pid for _c, r in samples):
                break
            s.poll(50)
        (ex,) = [(c, r) for c, r in samples if isinstance(r, wire.RawExec) and r.tgid == flush.pid]
        assert ex[0] == cpu and ex[1].argv == (TRUE.encode(), b"flush")
        s.account_losses(force=True)

        # the two channels account_losses merges
        perf_lost, submit_failed = dict(s._perf_lost), dict(s._submit_failed)
        assert perf_lost.get(cpu, 0) > 0  # on that CPU, not unattributed
        assert perf_lost[cpu] == submit_failed[cpu]
        assert s.stats.lost_per_cpu[cpu] == perf_lost[cpu]
        assert s.counters()["submit_failed"] >= perf_lost[cpu]

        # every child's fork, exec and exit ran on that CPU: each was delivered or counted lost
        mine = [r for c, r in samples if c == cpu and (
            (isinstance(r, wire.RawFork) and r.parent_tgid == storm.pid)
            or (isinstance(r, (wire.RawExec, wire.RawExit)) and r.tgid in children))]
        assert len(mine) < 3 * n
        assert len(mine) + perf_lost[cpu] >= 3 * n
        assert s.counters()["exec"] >= n + 1
    finally:
        s.close()


@pytest.mark.bpf
def test_an_idle_reader_sleeps_until_the_first_sample_rings_the_doorbell(sensor):
    """Samples wake the reader only every --wakeup-events (16) per CPU. A reader with nothing
    to do arms the doorbell and sleeps as long as it was asked to: the next sample on any CPU
    wakes it at once. So a poll never comes back empty before its timeout, and one exec after
    a quiet spell is read right away, not after the poll's 5 s (nor at a 10 ms poll)."""
    if not isinstance(sensor, loader.HandoverSensor):
        pytest.skip("bcc's perf reader (not x86-64, or PROCSENTRY_BCC_READER=1) has no doorbell")
    assert sensor.wakeup_events > 1 and sensor.batching
    sensor.poll(0)
    sensor.queue.clear()
    token = f"doorbell-{os.getpid()}-{time.monotonic_ns()}".encode()
    # trigger: one exec 0.3 s from now, while the reader sleeps
    p = subprocess.Popen(["/bin/sh", "-c", f"sleep 0.3; exec {TRUE} {token.decode()}"])
    found = None
    deadline = time.monotonic() + 60
    try:
        while found is None and time.monotonic() < deadline:
            t0 = time.monotonic()
            sensor.poll(5000)
            back = time.monotonic_ns()
            if not sensor.queue:
                assert time.monotonic() - t0 >= 4.9, "a poll came back empty before its timeout"
            while sensor.queue:
                _cpu, data = sensor.queue.popleft()
                r = wire.decode(data)
                if isinstance(r, wire.RawExec) and r.tgid == p.pid and r.argv == (TRUE.encode(), token):
                    found = (r, back)
    finally:
        reap(p, 60)
    assert found is not None, "the exec was never read"
    r, back = found
    assert back - r.ts_ns < 1_000_000_000, f"read {(back - r.ts_ns) / 1e6:.0f} ms after it was submitted"
