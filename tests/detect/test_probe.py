"""The live probe (monitor/detect/probe.py) reads socket tables on demand, for any shell or
interpreter whose standard descriptors are sockets: what it reads, and how often, is in the
hands of whoever starts shells. Real processes; the socket tables' reader is wrapped to count
(and slow) its dumps."""
from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from monitor.detect import probe as P
from userspace.procfs import ProcFS
from userspace.sockets import DumpBudget, SocketTables, read_diag_table

FS = ProcFS()


@pytest.fixture
def dumps(monkeypatch) -> list[float]:
    """Every socket table dump the probe makes (its time), each made to take 50 ms: as one
    does on a host where a user holds some thousands of sockets."""
    made: list[float] = []

    def slow(netns, unix=True):
        made.append(time.monotonic())
        time.sleep(0.05)
        return read_diag_table(netns) if unix else read_diag_table(netns, unix=False)

    monkeypatch.setattr(P, "SocketTables", lambda fs, **kw: SocketTables(fs, diag_reader=slow, **kw))
    return made


def _sleep_with_stdin(sock: socket.socket) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "30"], stdin=sock, stdout=subprocess.DEVNULL)


def test_a_unix_socket_on_stdin_costs_no_dump(dumps) -> None:
    """Only TCP/UDP sockets are looked for: a shell whose stdin is a unix socket (any user can
    start thousands, each with a new socketpair the enricher's table has not seen) made the
    probe dump every socket of the host for nothing."""
    a, b = socket.socketpair()
    p = _sleep_with_stdin(a)
    try:
        assert P.LiveProbe(FS).std_inet_sockets(p.pid, None) == []
        assert dumps == []
    finally:
        p.kill()
        p.wait()
        a.close()
        b.close()


def test_dumps_keep_to_a_duty_cycle(dumps) -> None:
    """Shells with a TCP socket on stdin, started one after another: after a dump that took t,
    no table is read again before DumpBudget.IDLE_FACTOR * t, so dumping never takes over 10 % of
    a CPU however many shells come (before, each call dumped: with 38,000 sockets held by one
    user, 1.2 s a call, and the monitor fell behind the kernel and lost records)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    first = socket.create_connection(("127.0.0.1", port))
    p = _sleep_with_stdin(first)
    probe = P.LiveProbe(FS)
    procs = [p]
    try:
        t0 = time.monotonic()
        [found] = probe.std_inet_sockets(p.pid, None)
        took = time.monotonic() - t0  # the dump's time, and a little more
        assert found["fds"] == [0] and found["remote"] == f"127.0.0.1:{port}"
        assert len(dumps) == 1
        # A connection made after the dump, within the idle time: not in the table reused, so
        # reported without its remote end (sockfs says it is TCP): never left out, since a
        # pty.spawn reverse shell has nothing else to be found by.
        late = socket.create_connection(("127.0.0.1", port))
        q = _sleep_with_stdin(late)
        procs.append(q)
        assert probe.std_inet_sockets(q.pid, None) == [
            {"fds": [0], "inode": os.fstat(late.fileno()).st_ino, "protocol": "tcp",
             "state": None, "remote": None}]
        assert probe.std_inet_sockets(p.pid, None) == [found]
        assert len(dumps) == 1
        time.sleep(DumpBudget.IDLE_FACTOR * took + 0.05)
        [now] = probe.std_inet_sockets(q.pid, None)
        assert now["remote"] == f"127.0.0.1:{port}"
        assert len(dumps) == 2
        assert dumps[1] - dumps[0] >= DumpBudget.IDLE_FACTOR * 0.05
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        srv.close()
