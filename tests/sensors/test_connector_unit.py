"""The connector without a kernel: message decoding, and the source's thread and exit logic fed
datagrams through a socketpair, against a fixture procfs tree (tetragon's TestExecParse idea)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from monitor.records import ExecRecord, ExitRecord, ForkRecord
from monitor.sensors import cn_proc as W
from monitor.sensors import connector as C
from userspace.procfs import ProcFS

# Recorded on 6.18 (a subscription ack, a thread created by pid 1083): nlmsghdr + cn_msg + proc_event.
ACK = bytes.fromhex(
    "4c00000003000000358b0100000000000100000001000000358b01003a30000028000000000000000100"
    "0000f082b61c5f010000000000000000000000000000000000000000000000000000")
THREAD_FORK = bytes.fromhex(
    "4c00000003000000368b0100000000000100000001000000368b01000000000028000000010000000100"
    "00007f8741495f0100003c00000001000000407700003b0400000000000000000000")


def test_decode_recorded_datagrams():
    assert W.decode_messages(ACK) == [W.ProcAck(seq=101173, ack=12346, err=0)]
    assert W.decode_messages(THREAD_FORK) == [
        W.ProcFork(ts_ns=1508762552191, parent_pid=60, parent_tgid=1, child_pid=30528, child_tgid=1083)]


@pytest.mark.parametrize("ev", [
    W.ProcFork(10, 1, 1, 200, 200),
    W.ProcExec(11, 200, 200),
    W.ProcId(12, 200, 200, "uid", 1000, 0),
    W.ProcId(13, 200, 200, "gid", 5, 6),
    W.ProcComm(14, 201, 200, b"worker"),
    W.ProcExit(15, 200, 200, 4 << 8, 17, 1, 1),
    W.ProcExit(16, 200, 200, 9, 17, None, None),  # before 4.18: no parent fields
])
def test_encode_decode_round_trip(ev):
    assert W.decode_messages(W.encode_event(ev)) == [ev]


def test_control_message_layout():
    msg = W.encode_control(W.PROC_CN_MCAST_LISTEN, nonce=7)
    assert len(msg) == 40
    length, mtype, _flags, _seq, _pid = W.NLMSGHDR.unpack_from(msg)
    assert (length, mtype) == (40, W.NLMSG_DONE)
    assert W.CN_MSG.unpack_from(msg, 16) == (W.CN_IDX_PROC, W.CN_VAL_PROC, 0, 7, 4, 0)
    assert msg[36:] == (1).to_bytes(4, "little")


def test_truncated_and_foreign_messages_are_skipped():
    good = W.encode_event(W.ProcExec(1, 5, 5))
    assert W.decode_messages(good[:-4]) == []  # nlmsg length past the end
    sid = bytearray(good)
    sid[36:40] = W.PROC_EVENT_SID.to_bytes(4, "little")
    assert W.decode_messages(bytes(sid)) == []


# --- the source, fed through a socketpair ------------------------------------------------------

T = 20_000_000_000  # connector timestamps: 20 s after boot, tick 2000; fixture starts are earlier


def render_stat(pid: int, comm: str, state: str, ppid: int, threads: int, start: int) -> bytes:
    fields = ["0"] * 50
    fields[0], fields[1] = state, str(ppid)  # proc(5) fields 3 and 4
    fields[20 - 3] = str(threads)
    fields[22 - 3] = str(start)
    return f"{pid} ({comm}) {' '.join(fields)}\n".encode()


class Feed:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sys/kernel/random").mkdir(parents=True)
        (root / "sys/kernel/random/boot_id").write_text("0123456789abcdef0123456789abcdef\n")
        self.src = C.ConnectorSource(ProcFS(str(root)))
        self.src.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.src.sock.setblocking(False)

    def stat(self, pid: int, state: str, threads: int, start: int = 1234, ppid: int = 1) -> None:
        d = self.root / str(pid)
        d.mkdir(exist_ok=True)
        (d / "stat").write_bytes(render_stat(pid, "x", state, ppid, threads, start))

    def gone(self, pid: int) -> None:
        (self.root / str(pid) / "stat").unlink()
        (self.root / str(pid)).rmdir()

    def send(self, *events) -> list:
        for ev in events:
            self.peer.send(W.encode_event(ev))
        return self.src.drain()


@pytest.fixture
def feed(tmp_path):
    f = Feed(tmp_path / "proc")
    yield f
    f.src.close()
    f.peer.close()


def test_threads_are_dropped_before_any_read(feed):
    assert feed.send(W.ProcFork(T + 1, 300, 300, 301, 300),  # a thread of 300
                     W.ProcComm(T + 2, 301, 300, b"worker"),
                     W.ProcExit(T + 3, 301, 300, 0, 0, 300, 300)) == []
    assert feed.src.c["threads_skipped"] == 3
    # a process fork is kept; its child is gone (no stat): no ticks
    fork = W.ProcFork(T + 4, 300, 300, 400, 400)
    assert feed.send(fork) == [ForkRecord(T + 4, 400, feed.src._approx_ticks(T + 4), 300, None)]


def test_exit_of_a_single_threaded_process(feed):
    feed.stat(500, "Z", threads=1, start=777)
    ex = W.ProcExit(T + 10, 500, 500, 3 << 8, 17, 1, 1)
    assert feed.send(ex) == [ExitRecord(T + 10, 500, 777, 3 << 8, None)]


def test_a_leader_that_leaves_first_is_held_until_the_last_thread(feed):
    # main() called pthread_exit: the leader is a zombie, one thread still counted
    feed.stat(500, "Z", threads=2, start=777)
    assert feed.send(W.ProcExit(T + 10, 500, 500, 0, 17, 1, 1)) == []
    assert feed.src.c["leader_exits_held"] == 1
    # the worker ends the group with exit(7): released before its EXIT is sent
    feed.stat(500, "Z", threads=1, start=777)
    assert feed.send(W.ProcExit(T + 20, 501, 500, 7 << 8, 0, 1, 1)) == [
        ExitRecord(T + 20, 500, 777, 7 << 8, None)]


def test_a_leader_read_late_takes_the_status_of_the_last_thread(feed):
    # Both EXITs are queued before the monitor gets to them, and the process is reaped.
    assert feed.send(W.ProcExit(T + 10, 500, 500, 0, 17, 1, 1),
                     W.ProcExit(T + 20, 501, 500, 7 << 8, 0, 1, 1)) == [
        ExitRecord(T + 20, 500, None, 7 << 8, None)]


def test_the_old_leader_replaced_at_exec_is_not_an_exit(feed):
    # A non-leader thread called exec: de_thread() kills the old leader (its EXIT has pid ==
    # tgid), then the exec'ing thread carries on as the process.
    feed.stat(600, "S", threads=1, start=888)
    out = feed.send(W.ProcExit(T + 10, 600, 600, 9, 17, 1, 1), W.ProcExec(T + 11, 600, 600))
    assert [type(r) for r in out] == [ExecRecord]
    assert feed.src.c["leader_exits_exec"] == 1


def test_an_exec_replaced_before_it_was_read_keeps_identity_only(feed):
    feed.stat(700, "S", threads=1, start=999, ppid=42)
    for ev in (W.ProcExec(T + 10, 700, 700), W.ProcExec(T + 11, 700, 700)):
        feed.peer.send(W.encode_event(ev))
    out = feed.src.drain()
    first, second = out
    # the first one: replaced before it was read: identity, parent, and what is unknown
    assert first.snapshot is None and (first.pid, first.start_ticks, first.ppid) == (700, 999, 42)
    assert first.argv is None and first.missing["argv"] == "gone"
    # the second one is read (here: the fixture has no cmdline, so the read is partial)
    assert second.start_ticks == 999


def test_a_reused_pid_is_not_taken_for_the_process_of_a_message(feed):
    # The exec is from t = 20 s; what procfs shows under its PID started at 30 s (tick 3000).
    feed.stat(800, "S", threads=1, start=3000)
    [rec] = feed.send(W.ProcExec(T + 1, 800, 800))
    assert (type(rec), rec.pid, rec.start_ticks, rec.snapshot) == (ExecRecord, 800, None, None)
    fork = W.ProcFork(T + 2, 1, 1, 800, 800)
    assert feed.send(fork) == [ForkRecord(T + 2, 800, feed.src._approx_ticks(T + 2), 1, None)]
