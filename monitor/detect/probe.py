"""Live facts a detection needs that no event carries, read from procfs at detection time.

Python's `pty.spawn` reverse shell is the case: the shell's own stdin is a pseudo-terminal;
the socket is on stdin/stdout/stderr of its parent, which did dup2() long after its own exec
event was enriched. When a shell starts on a terminal, the parent's standard descriptors are
read now (3 readlinks), while the parent is alive and waiting on the shell.

Only monitor/detect/behaviour.py calls this, only for shells; replaying a recorded stream
(`procsentry detect`) has no live processes and no probe, and says so in README.md.
"""
from __future__ import annotations

import time

from userspace.parsers import parse_fd_target, parse_ns_link
from userspace.procfs import ProcFS, ProcFSError
from userspace.process import read_stat
from userspace.sockets import SocketTables

# sockfs's system.sockprotoname of the sockets this probe looks for (the TCP/UDP tables').
INET_PROTOCOLS = frozenset({b"TCP", b"TCPv6", b"UDP", b"UDPv6"})
# After reading socket tables for t seconds, the next tables are read no sooner than
# DUMP_IDLE_FACTOR * t later (those read are reused meanwhile): at most 10 % of a CPU, however
# many sockets a user opens or shells it starts (userspace/cgroups.py's walk does the same).
DUMP_IDLE_FACTOR = 9.0


class LiveProbe:
    def __init__(self, fs: ProcFS) -> None:
        self.fs = fs
        self._tables: SocketTables | None = None
        self._tables_at = 0.0

    def _socket_tables(self) -> SocketTables:
        """Fresh TCP/UDP tables, unless reading the last ones cost more than the duty cycle
        allows yet. Each call dumped every socket of the netns once: any user holding 38,000
        sockets (1.2 s a dump here) and starting shells whose stdin is a new socket made the
        monitor dump for each, fall behind the kernel and lose records."""
        now = time.monotonic()
        t = self._tables
        if t is None or now - self._tables_at >= DUMP_IDLE_FACTOR * t.spent:
            t = self._tables = SocketTables(self.fs, unix=False)
            self._tables_at = now
        return t

    def std_inet_sockets(self, pid: int, start_ticks: int | None) -> list[dict]:
        """TCP/UDP sockets on fds 0-2 of the process (pid, start_ticks); [] when it is gone,
        is another process now (PID reuse), or has none."""
        try:
            if start_ticks is not None and read_stat(self.fs, pid).starttime != start_ticks:
                return []
            inodes = {}
            for fd in (0, 1, 2):
                try:
                    t = parse_fd_target(self.fs.readlink(pid, f"fd/{fd}"))
                except ProcFSError:
                    continue
                if t.kind == "socket" and self._inet(pid, fd):
                    inodes.setdefault(t.inode, []).append(fd)
            if not inodes:
                return []  # none is TCP/UDP (a unix socket, netlink...): no table can help
            netns = parse_ns_link(self.fs.readlink(pid, "ns/net"))
            table = self._socket_tables().for_pid(pid, netns)
        except (ProcFSError, OSError, ValueError):
            return []
        out = []
        for inode, fds in inodes.items():
            s = table.get(inode)
            if s is not None and s.protocol in ("tcp", "udp"):
                out.append({"fds": fds, "inode": inode, "protocol": s.protocol, "state": s.state,
                            "remote": f"{s.remote_address}:{s.remote_port}"})
        return out

    def _inet(self, pid: int, fd: int) -> bool:
        """Is pid's fd a TCP/UDP socket? One getxattr, no socket lock (as missed_by_table)."""
        try:
            proto = self.fs.getxattr(pid, b"fd/%d" % fd, "system.sockprotoname")
        except ProcFSError:
            return False
        return proto.rstrip(b"\0") in INET_PROTOCOLS

    def exe(self, pid: int, start_ticks: int | None) -> str | None:
        """The executable path process (pid, start_ticks) runs now; None when gone or reused."""
        try:
            if start_ticks is not None and read_stat(self.fs, pid).starttime != start_ticks:
                return None
            t = parse_fd_target(self.fs.readlink(pid, "exe"))
        except (ProcFSError, OSError, ValueError):
            return None
        return t.target.decode("utf-8", "backslashreplace")
