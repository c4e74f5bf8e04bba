"""The process-events connector's wire format: include/uapi/linux/connector.h (struct cn_msg)
and include/uapi/linux/cn_proc.h (struct proc_event), decoded and encoded with struct.

pyroute2 ships both (pyroute2.netlink.connector.cn_proc), but in 0.9.7 its ProcEventSocket
cannot survive an overrun: the ENOBUFS error message is handed to the event marshal, which fails
with struct.error, and the socket is unusable from then on. The parsing is small, so it is done
here. Pure: no sockets, no procfs (monitor/sensors/connector.py does those).
"""
from __future__ import annotations

import os
import struct
from typing import NamedTuple

NETLINK_CONNECTOR = 11  # include/uapi/linux/netlink.h
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
CN_IDX_PROC = 0x1  # include/uapi/linux/connector.h
CN_VAL_PROC = 0x1
PROC_CN_MCAST_LISTEN = 1  # enum proc_cn_mcast_op
PROC_CN_MCAST_IGNORE = 2

# enum proc_cn_event (what)
PROC_EVENT_NONE = 0x0  # the acknowledgement of a LISTEN/IGNORE request
PROC_EVENT_FORK = 0x1
PROC_EVENT_EXEC = 0x2
PROC_EVENT_UID = 0x4
PROC_EVENT_GID = 0x40
PROC_EVENT_SID = 0x80
PROC_EVENT_PTRACE = 0x100
PROC_EVENT_COMM = 0x200
PROC_EVENT_COREDUMP = 0x40000000
PROC_EVENT_EXIT = 0x80000000

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
CN_MSG = struct.Struct("=IIIIHH")  # id.idx, id.val, seq, ack, len, flags; data[] follows
# struct proc_event: what, cpu, timestamp_ns (aligned(8): offset 8), then the event_data union at
# offset 16. Pids are __kernel_pid_t (int). The message sits right after cn_msg, at byte 36.
PROC_EVENT = struct.Struct("=IIQ")
EV_ACK = struct.Struct("=I")  # err
EV_FORK = struct.Struct("=iiii")  # parent_pid, parent_tgid, child_pid, child_tgid
EV_EXEC = struct.Struct("=ii")  # process_pid, process_tgid
EV_ID = struct.Struct("=iiII")  # process_pid, process_tgid, r.ruid|rgid, e.euid|egid
EV_COMM = struct.Struct("=ii16s")  # process_pid, process_tgid, comm
# exit: process_pid, process_tgid, exit_code (task->exit_code: the wait(2) status), exit_signal
# (the signal sent to the parent, SIGCHLD), then parent_pid, parent_tgid (since 4.18).
EV_EXIT = struct.Struct("=iiII")
EV_EXIT_PARENT = struct.Struct("=ii")
DATA_OFFSET = NLMSGHDR.size + CN_MSG.size  # 36: struct proc_event within a datagram
EVENT_DATA = PROC_EVENT.size  # 16: event_data within struct proc_event

# What an exec read early only (argv and stat) lacks when the process is gone by the full read.



class ProcAck(NamedTuple):
    seq: int
    ack: int
    err: int


class ProcFork(NamedTuple):
    ts_ns: int  # ktime_get_ns(): CLOCK_MONOTONIC
    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int


class ProcExec(NamedTuple):
    ts_ns: int
    pid: int
    tgid: int


class ProcId(NamedTuple):
    ts_ns: int
    pid: int
    tgid: int
    what: str  # "uid" | "gid"
    real: int
    effective: int


class ProcComm(NamedTuple):
    ts_ns: int
    pid: int
    tgid: int
    comm: bytes


class ProcExit(NamedTuple):
    ts_ns: int
    pid: int
    tgid: int
    exit_code: int  # wait(2) status
    exit_signal: int
    parent_pid: int | None  # None before 4.18
    parent_tgid: int | None


ProcEvent = ProcAck | ProcFork | ProcExec | ProcId | ProcComm | ProcExit


def decode_messages(buf: bytes) -> list[ProcEvent]:
    """Every proc_event in one datagram (normally one). Event types procsentry does not use
    (sid, ptrace, coredump) and truncated messages are skipped; a netlink error is raised."""
    out: list[ProcEvent] = []
    off = 0
    n = len(buf)
    while off + NLMSGHDR.size <= n:
        length, mtype, _flags, _seq, _pid = NLMSGHDR.unpack_from(buf, off)
        if length < NLMSGHDR.size or off + length > n:
            break
        if mtype == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", buf, off + NLMSGHDR.size)
            if code:
                raise OSError(-code, os.strerror(-code))
        elif mtype in (NLMSG_DONE, NLMSG_NOOP) or mtype >= 0x10:
            ev = decode_proc_event(buf, off + NLMSGHDR.size, off + length)
            if ev is not None:
                out.append(ev)
        off += (length + 3) & ~3  # NLMSG_ALIGN
    return out


def decode_proc_event(buf: bytes, off: int, end: int) -> ProcEvent | None:
    """One cn_msg carrying a struct proc_event, or None when it is not one we use."""
    if off + CN_MSG.size + PROC_EVENT.size > end:
        return None
    idx, val, seq, ack, dlen, _flags = CN_MSG.unpack_from(buf, off)
    if idx != CN_IDX_PROC or val != CN_VAL_PROC:
        return None
    base = off + CN_MSG.size
    end = min(end, base + dlen)
    what, _cpu, ts = PROC_EVENT.unpack_from(buf, base)
    d = base + EVENT_DATA
    avail = end - d

    def fits(s: struct.Struct) -> bool:
        return avail >= s.size

    if what == PROC_EVENT_FORK and fits(EV_FORK):
        return ProcFork(ts, *EV_FORK.unpack_from(buf, d))
    if what == PROC_EVENT_EXEC and fits(EV_EXEC):
        return ProcExec(ts, *EV_EXEC.unpack_from(buf, d))
    if what == PROC_EVENT_EXIT and fits(EV_EXIT):
        pid, tgid, code, sig = EV_EXIT.unpack_from(buf, d)
        ppid = ptgid = None
        if avail >= EV_EXIT.size + EV_EXIT_PARENT.size:
            ppid, ptgid = EV_EXIT_PARENT.unpack_from(buf, d + EV_EXIT.size)
        return ProcExit(ts, pid, tgid, code, sig, ppid, ptgid)
    if what in (PROC_EVENT_UID, PROC_EVENT_GID) and fits(EV_ID):
        pid, tgid, real, eff = EV_ID.unpack_from(buf, d)
        return ProcId(ts, pid, tgid, "uid" if what == PROC_EVENT_UID else "gid", real, eff)
    if what == PROC_EVENT_COMM and fits(EV_COMM):
        pid, tgid, comm = EV_COMM.unpack_from(buf, d)
        return ProcComm(ts, pid, tgid, comm.split(b"\0", 1)[0])
    if what == PROC_EVENT_NONE and fits(EV_ACK):
        return ProcAck(seq, ack, EV_ACK.unpack_from(buf, d)[0])
    return None


def encode_control(op: int, nonce: int = 0) -> bytes:
    """The LISTEN/IGNORE request: nlmsghdr + cn_msg + enum proc_cn_mcast_op (the 4-byte form
    every kernel accepts; 6.6+ also takes a struct proc_input with an event filter).
    cn_proc_ack() answers with cn_msg.ack = our ack + 1, so `nonce` in ack identifies our
    acknowledgement among other listeners' (its seq is the connector's own counter)."""
    payload = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, nonce, 4, 0) + struct.pack("=I", op)
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), NLMSG_DONE, 0, 0, 0) + payload


def encode_event(ev: ProcEvent, seq: int = 0) -> bytes:
    """The datagram the kernel would send for ev (the tests decode these)."""
    if isinstance(ev, ProcAck):
        what, data, seq, ack = PROC_EVENT_NONE, EV_ACK.pack(ev.err), ev.seq, ev.ack
    else:
        ack = 0
        if isinstance(ev, ProcFork):
            what, data = PROC_EVENT_FORK, EV_FORK.pack(*ev[1:])
        elif isinstance(ev, ProcExec):
            what, data = PROC_EVENT_EXEC, EV_EXEC.pack(*ev[1:])
        elif isinstance(ev, ProcId):
            what = PROC_EVENT_UID if ev.what == "uid" else PROC_EVENT_GID
            data = EV_ID.pack(ev.pid, ev.tgid, ev.real, ev.effective)
        elif isinstance(ev, ProcComm):
            what, data = PROC_EVENT_COMM, EV_COMM.pack(ev.pid, ev.tgid, ev.comm)
        else:
            what = PROC_EVENT_EXIT
            data = EV_EXIT.pack(ev.pid, ev.tgid, ev.exit_code, ev.exit_signal)
            if ev.parent_pid is not None:
                data += EV_EXIT_PARENT.pack(ev.parent_pid, ev.parent_tgid)
    body = PROC_EVENT.pack(what, 0, getattr(ev, "ts_ns", 0)) + data
    payload = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, seq, ack, len(body), 0) + body
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), NLMSG_DONE, 0, seq, 0) + payload
