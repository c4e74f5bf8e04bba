"""The process-events connector sensor: NETLINK_CONNECTOR, CN_IDX_PROC (drivers/connector/cn_proc.c).

For hosts that cannot load BPF (old or locked-down kernels, no bcc, no CAP_BPF in a container).
The kernel multicasts one small message per fork, exec, exit, uid/gid change and comm change, in
real time and with the exit status, but nothing else: no argv, no paths, no namespaces, not even
the start time that procsentry's identity needs. So each message is enriched from procfs at once
(read here, in `drain()`, before the records reach the pipeline), and what could not be read
because the process had already exited is reported as `enrichment: "gone"`.

What the connector costs in completeness, compared with BPF:
* argv, exe, cwd, uids and namespaces come from procfs after the fact: a process that exits
  within a fraction of a millisecond of its exec (/bin/true) usually has none of them.
* a setproctitle or chdir right after exec shows the new value, not the one at exec.
* the receive buffer can overrun (ENOBUFS). The kernel counts each dropped message in the
  socket's sk_drops, which SO_MEMINFO reports: that count becomes `lost` (cpu -1), and the
  pipeline answers with a recovery sweep.
* EXIT is per thread and says nothing about the thread group (BPF checks signal->live): the
  group's end is inferred from procfs (_read_exit), which a lost message or a late read can
  blur. Identity is checked against the message time, so a reused PID is not taken for the
  process a message is about, except within the same 10 ms tick.
* with more than `backlog` messages waiting, an exec is read at Depth.CHEAP (argv, exe, cwd,
  ids; fds, sockets, namespaces and container marked `skipped_backlog`).

The wire format (struct cn_msg, struct proc_event) is decoded in monitor/sensors/cn_proc.py.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections import OrderedDict, deque
from typing import NamedTuple

from monitor.records import (CommRecord, CredRecord, ExecRecord, ExitRecord, ForkRecord,
                             exec_from_snapshot, lost_since)
from monitor.sensors.cn_proc import (CN_IDX_PROC, NETLINK_CONNECTOR, PROC_CN_MCAST_IGNORE,
                                      PROC_CN_MCAST_LISTEN, ProcAck, ProcComm,
                                      ProcEvent, ProcExec, ProcExit, ProcFork, ProcId,
                                      decode_messages, encode_control)
from userspace.parsers import parse_cmdline
from userspace.procfs import ProcFS, ProcFSError
from userspace.process import read_stat
from userspace.sweep import Sweep
from userspace.types import NSEC_PER_TICK, Depth, ProcessSnapshot, ProcKey

DISABLE_ENV = "PROCSENTRY_DISABLE_CONNECTOR"  # set to 1 to make start() fail (tests of the fallbacks)
RCVBUF_ENV = "PROCSENTRY_CONNECTOR_RCVBUF"  # receive buffer in bytes (tests use a tiny one)
# Asked of SO_RCVBUFFORCE; the kernel doubles it for bookkeeping. A message costs about 1 KiB of
# buffer (skb truesize, not its 76 bytes of payload), so this holds ~16k messages: a 4k-process
# burst (fork + comm + exec + exit each) while the reader is busy with procfs.
DEFAULT_RCVBUF = 8 << 20

EARLY_MISSING = ("exe", "cwd", "root", "uids", "gids", "loginuid", "sessionid", "fds", "fd_count",
                 "sockets", "ns", "cgroup", "container_id")
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # asm-generic/socket.h
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # since 4.12: u32[SK_MEMINFO_VARS]
SK_MEMINFO_DROPS = 8  # include/uapi/linux/sock_diag.h: index of sk_drops
SK_MEMINFO_VARS = 9


# --- the source -------------------------------------------------------------------------------
class ConnectorUnavailable(Exception):
    def __init__(self, message: str, permission: bool = False) -> None:
        super().__init__(message)
        self.permission = permission


class Record(NamedTuple):
    """A connector event plus what procfs said right after it arrived."""

    ts_ns: int
    event: ProcEvent
    ticks: int | None = None  # start ticks from <pid>/stat, None if it could not be read
    state: str | None = None  # the stat state with those ticks
    snap: ProcessSnapshot | None = None  # exec only
    ppid: int | None = None  # exec of a process that exited first: from its stat
    comm: bytes | None = None  # likewise (a zombie's)


def boottime_offset_ns() -> int:
    """CLOCK_BOOTTIME - CLOCK_MONOTONIC now: the time the host spent suspended since boot."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()


class ConnectorSource:
    """See the module docstring. `rcvbuf`: receive buffer in bytes (default $PROCSENTRY_CONNECTOR_RCVBUF
    or DEFAULT_RCVBUF); `backlog`: messages waiting past which an exec is read at Depth.CHEAP
    (argv, exe, cwd, ids) instead of Depth.EXEC (+ fds, sockets, namespaces, container)."""

    name = "connector"
    RECV_SIZE = 1 << 16
    BATCH_S = 0.1  # at most this long enriching per drain(); the rest waits for the next one
    ACK_TIMEOUT_S = 1.0
    SWEEP_TTL_S = 1.0
    # Messages taken out of the socket but not yet read from procfs. Past this, they stay in
    # the kernel's buffer, which is bounded and counts what it drops: memory stays bounded too.
    MAX_QUEUED = 65536

    def __init__(self, fs: ProcFS, rcvbuf: int | None = None, backlog: int = 1024) -> None:
        self.fs = fs
        if rcvbuf is None:
            rcvbuf = int(os.environ.get(RCVBUF_ENV) or DEFAULT_RCVBUF)
        self.rcvbuf = rcvbuf
        self.backlog = backlog
        self.sock: socket.socket | None = None
        self._raw: deque[ProcEvent] = deque()  # received, not yet enriched
        self._buf = bytearray(self.RECV_SIZE)
        self._sweeps: dict[Depth, Sweep] = {}
        self._sweeps_at = 0.0
        # Fork timestamps (CLOCK_MONOTONIC) by pid, with start ticks, for exit durations; bounded.
        self._started: OrderedDict[int, tuple[int, int]] = OrderedDict()  # pid -> (ticks, ts)
        self._boot_offset = 0
        self._overruns = 0  # ENOBUFS errors seen (each one is at least one lost message)
        self._drops = 0  # sk_drops from SO_MEMINFO: messages lost
        self._meminfo = True
        self._leaders_gone: dict[int, Record] = {}  # tgid -> its leader's EXIT, group still alive
        self._thread_exits: OrderedDict[int, ProcExit] = OrderedDict()  # tgid -> latest thread EXIT
        self._queued_execs: dict[int, int] = {}  # tgid -> EXEC messages in _raw
        self._queued_forks: dict[int, int] = {}  # child tgid -> FORK messages in _raw
        self._early: dict[int, tuple] = {}  # tgid -> (read at, exec ts, Stat, argv): _read_early
        self._leaders_checked = 0.0
        self._lost_seen: dict[int, int] = {}
        self.c = {"messages": 0, "threads_skipped": 0, "exec_read": 0, "exec_cheap": 0,
                  "exec_early": 0, "exec_gone": 0, "overruns": 0,
                  "leader_exits_held": 0, "leader_exits_exec": 0}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if os.environ.get(DISABLE_ENV) == "1":
            raise ConnectorUnavailable(f"the connector is disabled by {DISABLE_ENV}=1")
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                 NETLINK_CONNECTOR)
        except OSError as e:
            raise ConnectorUnavailable(f"no netlink connector socket ({e.strerror}): "
                                       "a kernel without CONFIG_PROC_EVENTS?") from None
        try:
            self._set_rcvbuf(sock)
            sock.bind((0, CN_IDX_PROC))  # multicast group bit CN_IDX_PROC
            nonce = int.from_bytes(os.urandom(4), "little") >> 1
            sock.send(encode_control(PROC_CN_MCAST_LISTEN, nonce))
            self._await_ack(sock, nonce + 1)
        except ConnectorUnavailable:
            sock.close()
            raise
        except OSError as e:
            sock.close()
            raise ConnectorUnavailable(f"cannot subscribe to process events ({e.strerror})",
                                       permission=e.errno in (errno.EPERM, errno.EACCES)) from None
        sock.setblocking(False)
        self.sock = sock
        self._boot_offset = boottime_offset_ns()

    def _set_rcvbuf(self, sock: socket.socket) -> None:
        # SO_RCVBUFFORCE ignores net.core.rmem_max (CAP_NET_ADMIN, which subscribing needs too).
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)

    def _await_ack(self, sock: socket.socket, ack: int) -> None:
        """cn_proc_mcast_ctl answers with a PROC_EVENT_NONE carrying our nonce + 1 and the error, or
        (a task outside the initial user or pid namespace) not at all."""
        deadline = time.monotonic() + self.ACK_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectorUnavailable(
                    "the kernel did not acknowledge the process-events subscription: the "
                    "connector only serves the initial user and pid namespace")
            sock.settimeout(left)
            try:
                n = sock.recv_into(self._buf)
            except socket.timeout:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    continue
                raise
            for ev in decode_messages(bytes(self._buf[:n])):
                if isinstance(ev, ProcAck):
                    if ev.ack != ack:
                        continue  # another listener's subscription
                    if ev.err:
                        raise ConnectorUnavailable(
                            f"the kernel refused the process-events subscription "
                            f"({os.strerror(ev.err)}): it needs CAP_NET_ADMIN",
                            permission=ev.err in (errno.EPERM, errno.EACCES))
                    return
                self._accept(ev)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.send(encode_control(PROC_CN_MCAST_IGNORE, 0))
            except OSError:
                pass
            self.sock.close()
            self.sock = None

    # -- the source interface ------------------------------------------------------------------
    def poll(self, timeout_ms: int) -> None:
        if self._raw or self.sock is None:
            return
        select.select([self.sock], [], [], timeout_ms / 1000)

    def _pull(self) -> None:
        """Move every datagram waiting in the socket into _raw (through _accept)."""
        sock = self.sock
        if sock is None:
            return
        buf = self._buf
        c = self.c
        raw = self._raw
        while len(raw) < self.MAX_QUEUED:
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                # The kernel dropped messages (netlink_overrun): the socket works on.
                self._overruns += 1
                c["overruns"] += 1
                continue
            for ev in decode_messages(bytes(buf[:n])):
                self._accept(ev)

    def _accept(self, ev: ProcEvent) -> None:
        """Queue ev unless it is about a thread or is an acknowledgement. Threads are dropped
        before they cost a procfs read: FORK fires for a new thread too (child_pid !=
        child_tgid), EXIT for every thread (process_pid != process_tgid), COMM/UID/GID per
        thread. A thread's EXIT is remembered, though: it may be its group's last (_read_exit)."""
        c = self.c
        c["messages"] += 1
        if isinstance(ev, ProcFork):
            if ev.child_pid != ev.child_tgid:
                c["threads_skipped"] += 1
                return
            _count(self._queued_forks, ev.child_tgid, 1)
        elif isinstance(ev, ProcExec):
            # Always pid == tgid: the exec'ing thread became the leader (de_thread) before
            # proc_exec_connector runs.
            _count(self._queued_execs, ev.tgid, 1)
            early = self._early.get(ev.tgid)
            if early is not None and early[0] > ev.ts_ns:
                del self._early[ev.tgid]  # read after this exec: may show this image, not its own
            if len(self._raw) < self.backlog:
                self._read_early(ev)
        elif isinstance(ev, ProcAck):
            return
        elif ev.pid != ev.tgid:
            if isinstance(ev, ProcExit):
                te = self._thread_exits
                te[ev.tgid] = ev
                te.move_to_end(ev.tgid)
                if len(te) > 4096:
                    te.popitem(last=False)
                if ev.tgid in self._leaders_gone:
                    self._raw.append(ev)
                    return
            c["threads_skipped"] += 1
            return
        self._raw.append(ev)

    def sync(self) -> None:
        """Take every message already in the socket (the kernel sends them synchronously from
        fork, exec and exit: whatever procfs showed before this call has its message queued)."""
        self._pull()

    def drain(self) -> list:
        self._boot_offset = boottime_offset_ns()  # grows when the host suspends
        self._pull()
        out: list = []
        raw = self._raw
        deadline = time.monotonic() + self.BATCH_S
        while raw:
            ev = raw.popleft()
            if isinstance(ev, ProcExec):
                _count(self._queued_execs, ev.tgid, -1)
            elif isinstance(ev, ProcFork):
                _count(self._queued_forks, ev.child_tgid, -1)
            rec = self._read(ev)
            if rec is not None:
                out.append(self._record(_KIND[type(ev)], rec))
            # Between two procfs reads, take what arrived meanwhile (a recv that finds nothing
            # costs microseconds): its early argv read (_accept) is then as early as it can be.
            self._pull()
            if time.monotonic() > deadline:
                break
        if self._leaders_gone:
            self._recheck_leaders(out)
        out.sort(key=_ts)
        lost = self.lost_per_cpu()
        if lost != self._lost_seen:
            out.extend(lost_since(self._lost_seen, lost, out[-1].ts_ns if out else 0))
        return out

    def _read(self, ev: ProcEvent) -> Record | None:
        """What procfs says right now about the process of ev (the reason it is read here).
        None: nothing to report (yet)."""
        if isinstance(ev, ProcExec):
            return self._read_exec(ev)
        if isinstance(ev, ProcFork):
            st = self._stat(ev.child_tgid, ev.ts_ns)
            if st is None:
                return Record(ev.ts_ns, ev)
            return Record(ev.ts_ns, ev, st.starttime, st.state)
        if isinstance(ev, ProcExit):
            return self._read_exit(ev)
        return Record(ev.ts_ns, ev)

    def _read_early(self, ev: ProcExec) -> None:
        """At receipt, before anything else: the argv (with the stat for identity). A short-lived
        process is often gone by the time its turn for the full read comes, and argv is what
        an exec event is most about."""
        try:
            st = read_stat(self.fs, ev.tgid)
            if st.state in ("Z", "X") or st.starttime > self._tick_at(ev.ts_ns):
                return
            argv = self.fs.read_parsed(ev.tgid, "cmdline", parse_cmdline)
        except ProcFSError:
            return
        if argv:
            if len(self._early) >= 65536:
                self._early.clear()
            self._early[ev.tgid] = (time.monotonic_ns(), ev.ts_ns, st, argv)

    def _early_snapshot(self, early) -> ProcessSnapshot:
        """The early read as a snapshot: identity, parent, comm, argv; the rest gone."""
        _read_ns, _ts, st, argv = early
        return ProcessSnapshot(
            key=ProcKey(self.fs.boot_id(), st.pid, st.starttime), pid=st.pid, ppid=st.ppid,
            comm=st.comm, state=st.state, start_ticks=st.starttime, argv=argv,
            threads=st.num_threads, tty_nr=st.tty_nr, missing=dict.fromkeys(EARLY_MISSING, "gone"))

    def _read_exec(self, ev: ProcExec) -> Record:
        tgid = ev.tgid
        early = self._early.pop(tgid, None)
        if early is not None and early[1] != ev.ts_ns:
            early = None  # of another exec of this PID
        # A leader "exit" followed by an exec of its group was de_thread() replacing the old
        # leader with the exec'ing thread: the process lives on.
        self._leaders_gone.pop(tgid, None)
        self._pull()  # a later exec of the same process already waiting?
        cheap = len(self._raw) > self.backlog
        replaced = tgid in self._queued_execs and tgid not in self._queued_forks
        snap = None
        if not replaced:
            snap = self._sweep(Depth.CHEAP if cheap else Depth.EXEC).read(tgid)
            if snap is not None and snap.start_ticks > self._tick_at(ev.ts_ns):
                snap = None  # started after this exec: the PID was reused since
        if snap is not None and not _exited(snap):
            self.c["exec_cheap" if cheap else "exec_read"] += 1
            if cheap:
                for f in ("fds", "fd_count", "sockets", "ns", "cgroup", "container_id"):
                    snap.missing[f] = "skipped_backlog"
            return Record(ev.ts_ns, ev, snap.start_ticks, snap.state, snap)
        if early is not None:
            self.c["exec_early"] += 1
            st = early[2]
            return Record(ev.ts_ns, ev, st.starttime, st.state, self._early_snapshot(early))
        self.c["exec_gone"] += 1
        if snap is not None:  # exited, its stat read: identity, parent and comm
            return Record(ev.ts_ns, ev, snap.start_ticks, snap.state, None, snap.ppid, snap.comm)
        st = self._stat(tgid, ev.ts_ns)
        if st is None:
            return Record(ev.ts_ns, ev)
        if replaced:
            # The same process (exec keeps PID and start time), but procfs shows its next
            # image: identity and parent only.
            return Record(ev.ts_ns, ev, st.starttime, st.state, None, st.ppid)
        if st.state not in ("Z", "X"):
            return Record(ev.ts_ns, ev)  # alive, yet unreadable a moment ago: do not guess
        return Record(ev.ts_ns, ev, st.starttime, st.state, None, st.ppid, st.comm)

    def _tick_at(self, ts_ns: int) -> int:
        """The start tick of a process started at connector time ts_ns (see _approx_ticks).
        A process whose stat shows a later start is not the one the message is about: its
        PID was reused. (Reuse within the same 10 ms tick goes unnoticed.)"""
        return (ts_ns + self._boot_offset) // NSEC_PER_TICK

    def _stat(self, pid: int, ts_ns: int):
        """<pid>/stat, if it is of a process that already existed at ts_ns."""
        try:
            st = read_stat(self.fs, pid)
        except ProcFSError:
            return None
        return st if st.starttime <= self._tick_at(ts_ns) else None

    def _read_exit(self, ev: ProcExit) -> Record | None:
        """The exit of a thread group, from per-thread EXIT messages.

        The connector sends EXIT from do_exit() of every task, after exit_notify(); it does not
        say whether the group died (signal->live, which BPF reads). The leader's EXIT is the
        process's exit when nothing else of the group remains: <pid>/stat is gone (reaped), or
        a zombie counting only itself in num_threads (a non-leader thread leaves the count in
        exit_notify -> release_task, before its own EXIT is sent). Its status and time are
        then those of the group's last thread if one exited after the leader: a leader that
        called pthread_exit has status 0, the group's exit(7) is on another thread.

        Otherwise the leader went first: pthread_exit from main, or de_thread() replacing it
        with a thread that called exec. The exit is held until the group's last thread's EXIT,
        or dropped when an EXEC of the group shows it was de_thread().
        """
        tgid = ev.tgid
        held = self._leaders_gone.get(tgid)
        if ev.pid != tgid:
            if held is None:
                return None
            st = self._stat(tgid, held.ts_ns)
            if st is not None and held.ticks is not None and st.starttime != held.ticks:
                st = None  # reaped, and the PID taken again already
            if not _group_dead(st):
                return None
            del self._leaders_gone[tgid]
            self._thread_exits.pop(tgid, None)
            ev = ev._replace(pid=tgid)
            return Record(ev.ts_ns, ev, held.ticks, st.state if st is not None else None)
        self._pull()
        if tgid in self._queued_execs and tgid not in self._queued_forks:
            self.c["leader_exits_exec"] += 1
            return None  # de_thread(): the process lives on in the thread that exec'd
        st = self._stat(tgid, ev.ts_ns)
        ticks = st.starttime if st is not None and st.state in ("Z", "X") else None
        if not _group_dead(st):
            self._leaders_gone[tgid] = Record(ev.ts_ns, ev, ticks, st.state)
            self.c["leader_exits_held"] += 1
            return None
        last = self._thread_exits.pop(tgid, None)
        if last is not None and last.ts_ns > ev.ts_ns:
            ev = ev._replace(ts_ns=last.ts_ns, exit_code=last.exit_code, exit_signal=last.exit_signal)
        return Record(ev.ts_ns, ev, ticks, st.state if st is not None else None)

    def _recheck_leaders(self, out: list) -> None:
        """Held leader exits whose group ended without a last EXIT reaching us (lost in an
        overrun): report them once procfs says the group is gone."""
        now = time.monotonic()
        if now - self._leaders_checked < 1.0:
            return
        self._leaders_checked = now
        for tgid, held in list(self._leaders_gone.items()):
            st = self._stat(tgid, held.ts_ns)
            if st is not None and held.ticks is not None and st.starttime != held.ticks:
                st = None
            if _group_dead(st):
                del self._leaders_gone[tgid]
                ev = held.event
                last = self._thread_exits.pop(tgid, None)
                if last is not None and last.ts_ns > ev.ts_ns:
                    ev = ev._replace(ts_ns=last.ts_ns, exit_code=last.exit_code,
                                     exit_signal=last.exit_signal)
                out.append(self._record("cn_exit", held._replace(ts_ns=ev.ts_ns, event=ev)))

    def pending(self) -> int:
        return len(self._raw)

    def lost_per_cpu(self) -> dict[int, int]:
        lost = max(self._read_drops(), self._overruns)
        return {-1: lost} if lost else {}

    def _read_drops(self) -> int:
        """sk_drops: every message netlink_overrun() discarded for this socket."""
        if self.sock is None or not self._meminfo:
            return self._drops
        try:
            info = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * SK_MEMINFO_VARS)
        except OSError:
            self._meminfo = False  # before 4.12: count ENOBUFS errors instead (a lower bound)
            return self._drops
        self._drops = struct.unpack_from("=I", info, 4 * SK_MEMINFO_DROPS)[0]
        return self._drops

    def counters(self) -> dict[str, int]:
        return dict(self.c, rcvbuf=self._rcvbuf_now())

    def _rcvbuf_now(self) -> int:
        if self.sock is None:
            return 0
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    # -- records to the pipeline ---------------------------------------------------------------
    def _approx_ticks(self, ts_ns: int) -> int:
        """Start ticks of a process that was gone before its stat could be read and that the
        table never saw, from the connector timestamp. The timestamp is ktime_get_ns(),
        CLOCK_MONOTONIC, while <pid>/stat starttime is task->start_boottime (CLOCK_BOOTTIME,
        array.c do_task_stat): they differ by the time the host spent suspended, measured at
        start (on a host that never suspended they are equal). The fork message is stamped a
        few microseconds after copy_process() set start_boottime, so the result can be one
        tick late when the fork straddled a 10 ms tick boundary."""
        return self._tick_at(ts_ns)

    def _sweep(self, depth: Depth) -> Sweep:
        """The reads of one short span share socket tables (a new sweep every SWEEP_TTL_S, so
        a socket opened since is seen)."""
        now = time.monotonic()
        if now - self._sweeps_at > self.SWEEP_TTL_S:
            self._sweeps.clear()
            self._sweeps_at = now
        sweep = self._sweeps.get(depth)
        if sweep is None:
            sweep = self._sweeps[depth] = Sweep(self.fs, depth)
        return sweep

    def _remember_start(self, pid: int, ticks: int, ts_ns: int) -> None:
        self._started[pid] = (ticks, ts_ns)
        if len(self._started) > 65536:
            self._started.popitem(last=False)

    def _record(self, kind: str, r: Record):
        """The sensor-neutral record for one connector message and what procfs said about it."""
        ev = r.event
        if kind == "cn_fork":
            ticks = r.ticks if r.ticks is not None else self._approx_ticks(r.ts_ns)
            self._remember_start(ev.child_tgid, ticks, r.ts_ns)
            return ForkRecord(r.ts_ns, ev.child_tgid, ticks, ev.parent_tgid, None)
        if kind == "cn_exec":
            if r.snap is not None:
                return exec_from_snapshot(r.snap, r.ts_ns)
            # Gone (or a zombie: exited already, or exec'd again) before procfs could be read.
            # What is left: pid, identity (a zombie's stat; else the pipeline takes the newest
            # process with this PID) and parent; comm only from a zombie's stat (exec sends no
            # COMM message: __set_task_comm does not call proc_comm_connector, only
            # prctl(PR_SET_NAME) and writes to comm do). What the fork copied from the parent
            # is not this image's: unknown, not inherited.
            missing = dict.fromkeys(("argv", "exe", "cwd", "uids", "gids", "ns", "container_id"),
                                    "gone")
            if r.comm is None:
                missing["comm"] = "gone"
            return ExecRecord(r.ts_ns, ev.tgid, r.ticks, r.ppid, None, r.comm, None, None, None,
                              missing=missing)
        if kind == "cn_exit":
            # ticks from its own corpse (_read_exit) when it could be read; otherwise reaped
            # already, and the pipeline takes the newest process it knows with this PID.
            started = self._started.pop(ev.tgid, None)
            start_ns = None
            if started is not None and (r.ticks is None or started[0] == r.ticks):
                start_ns = started[1]
            return ExitRecord(r.ts_ns, ev.tgid, r.ticks, ev.exit_code, start_ns)
        if kind == "cn_comm":
            return CommRecord(r.ts_ns, ev.tgid, ev.comm)
        if kind == "cn_id":
            return CredRecord(r.ts_ns, ev.tgid, ev.what, ev.real, ev.effective)
        raise ValueError(f"unexpected record kind {kind}")


def _ts(rec) -> int:
    return rec[0]


def _count(d: dict[int, int], key: int, delta: int) -> None:
    n = d.get(key, 0) + delta
    if n > 0:
        d[key] = n
    else:
        d.pop(key, None)


def _exited(snap: ProcessSnapshot) -> bool:
    """Did the process exit before its argv could be read? A zombie; or one caught inside
    do_exit() after exit_mm(): empty cmdline and no exe link while its state is not yet Z
    (read_process takes that for a kernel thread, though a process that just exec'd is none,
    or, when it was reaped before its exe was read, reports argv () and exe gone); or one gone
    between its stat and its cmdline. An empty argv with an exe is real: execve(path, {NULL})."""
    return (snap.zombie or snap.kernel_thread or snap.missing.get("argv") == "gone"
            or (snap.argv == () and snap.exe is None))


def _group_dead(st) -> bool:
    """Nothing of the thread group left but (at most) the leader's corpse."""
    return st is None or (st.state in ("Z", "X") and st.num_threads <= 1)


_KIND = {ProcFork: "cn_fork", ProcExec: "cn_exec", ProcExit: "cn_exit", ProcComm: "cn_comm",
         ProcId: "cn_id"}

