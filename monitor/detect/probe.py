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
from userspace.procfs import ProcFS, ProcFSError
from userspace.process import read_stat
from userspace.sockets import SocketTables


class LiveProbe:
    def __init__(self, fs: ProcFS) -> None:
        self.fs = fs

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
                if t.kind == "socket":
                    inodes.setdefault(t.inode, []).append(fd)
            if not inodes:
                return []
            netns = parse_ns_link(self.fs.readlink(pid, "ns/net"))
            table = SocketTables(self.fs).for_pid(pid, netns)
        except (ProcFSError, OSError, ValueError):
            return []
        out = []
        for inode, fds in inodes.items():
            s = table.get(inode)
            if s is not None and s.protocol in ("tcp", "udp"):
                out.append({"fds": fds, "inode": inode, "protocol": s.protocol, "state": s.state,
                            "remote": f"{s.remote_address}:{s.remote_port}"})
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
