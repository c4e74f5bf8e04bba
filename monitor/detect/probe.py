"""Live facts a detection needs that no event carries, read from procfs at detection time.

Python's `pty.spawn` reverse shell is the case: the shell's own stdin is a pseudo-terminal;
the socket is on stdin/stdout/stderr of its parent, which did dup2() long after its own exec
event was enriched. When a shell starts on a terminal, the parent's standard descriptors are
read now (3 readlinks), while the parent is alive and waiting on the shell.

Only monitor/detect/behaviour.py calls this, only for shells; replaying a recorded stream
(`procsentry detect`) has no live processes and no probe, and says so in README.md.
"""
from __future__ import annotations

from userspace.parsers import parse_fd_target, parse_ns_link
from userspace.procfs import ProcFS, ProcFSError, Unavailable
from userspace.process import read_stat
from userspace.sockets import DumpBudget, SocketTables, socket_protocol

# sockfs's system.sockprotoname of the sockets this probe looks for (the TCP/UDP tables').
INET_PROTOCOLS = {b"TCP": "tcp", b"TCPv6": "tcp", b"UDP": "udp", b"UDPv6": "udp"}


class LiveProbe:
    def __init__(self, fs: ProcFS) -> None:
        self.fs = fs
        # Tables are read no more than DumpBudget allows (at most 10 % of a CPU): each call
        # dumped every socket of the netns once, and any user holding 38,000 sockets (1.2 s a
        # dump here) and starting shells whose stdin is a new socket made the monitor dump for
        # each, fall behind the kernel and lose records.
        self._budget = DumpBudget()
        self._last: tuple[int | None, dict] = (None, {})  # the last table read, and its netns

    MAX_FDS = 256  # descriptors looked at by inet_sockets (a relay holds a handful)

    def std_inet_sockets(self, pid: int, start_ticks: int | None) -> list[dict]:
        """TCP/UDP sockets on fds 0-2 of the process (pid, start_ticks); [] when it is gone,
        is another process now (PID reuse), or has none. That an fd is a TCP/UDP socket is
        sockfs's word (one getxattr each); the socket table adds its state and remote end, and
        where it cannot (dumps throttled, or the socket newer than a table), those are None:
        the socket is reported all the same (a pty.spawn reverse shell has nothing else)."""
        return self.inet_sockets(pid, start_ticks, (0, 1, 2))

    def inet_sockets(self, pid: int, start_ticks: int | None, fds=None) -> list[dict]:
        """As std_inet_sockets, on the given fds, or (None) on the process's first MAX_FDS
        descriptors in numeric order: what a relay such as socat holds besides its stdio."""
        try:
            if start_ticks is not None and read_stat(self.fs, pid).starttime != start_ticks:
                return []
            if fds is None:
                fds = sorted(int(n) for n in self.fs.listdir(pid, "fd") if n.isdigit())[:self.MAX_FDS]
            inodes: dict[int, tuple[list[int], str]] = {}
            for fd in fds:
                try:
                    t = parse_fd_target(self.fs.readlink(pid, f"fd/{fd}"))
                except ProcFSError:
                    continue
                proto = INET_PROTOCOLS.get(socket_protocol(self.fs, pid, fd)) if t.kind == "socket" else None
                if proto is not None:
                    inodes.setdefault(t.inode, ([], proto))[0].append(fd)
        except (ProcFSError, OSError, ValueError):
            return []
        if not inodes:
            return []  # none is TCP/UDP (a unix socket, netlink...): no table can help
        table = {}
        try:
            netns = parse_ns_link(self.fs.readlink(pid, "ns/net"))
            try:
                table = SocketTables(self.fs, unix=False, budget=self._budget).for_pid(pid, netns)
                self._last = (netns, table)
            except Unavailable:  # dumps throttled: the last table of that netns, if any
                if self._last[0] == netns:
                    table = self._last[1]
        except (ProcFSError, OSError, ValueError):
            pass  # gone since: the remote end stays unknown
        out = []
        for inode, (fds, proto) in inodes.items():
            s = table.get(inode)
            if s is not None and s.protocol in ("tcp", "udp"):
                out.append({"fds": fds, "inode": inode, "protocol": s.protocol, "state": s.state,
                            "remote": f"{s.remote_address}:{s.remote_port}"})
            else:
                out.append({"fds": fds, "inode": inode, "protocol": proto, "state": None,
                            "remote": None})
        return out

    def exe(self, pid: int, start_ticks: int | None) -> str | None:
        """The executable path process (pid, start_ticks) runs now; None when gone or reused."""
        try:
            if start_ticks is not None and read_stat(self.fs, pid).starttime != start_ticks:
                return None
            t = parse_fd_target(self.fs.readlink(pid, "exe"))
        except (ProcFSError, OSError, ValueError):
            return None
        return t.target.decode("utf-8", "backslashreplace")
