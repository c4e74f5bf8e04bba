"""Typed values that the userspace readers return.

Strings that come from a process (comm, argv, paths, environment) stay ``bytes`` here: a process
chooses them and they need not be UTF-8. They become text at exactly one place,
``monitor/text.py``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

# proc(5) <pid>/stat field 22 (starttime) is in clock ticks since boot; the kernel's USER_HZ is 100
# on every architecture procsentry supports (kernel proc array.c do_task_stat -> nsec_to_clock_t).
USER_HZ = 100
NSEC_PER_TICK = 1_000_000_000 // USER_HZ


def start_ticks_from_ns(start_boottime_ns: int) -> int:
    """The BPF sensor reports task->start_boottime in ns; procfs reports it divided into ticks."""
    return start_boottime_ns // NSEC_PER_TICK


@dataclass(frozen=True, slots=True)
class ProcKey:
    """Identity of one process: a PID alone is reused, (boot, pid, start time) is not.

    Two processes cannot share a PID within one 10 ms tick: PIDs are handed out cyclically and
    pid_max is at least 32768.
    """

    boot_id: str
    pid: int
    start_ticks: int

    @property
    def exec_id(self) -> str:
        """Stable string form, the same whether the process was seen by the sensor or a sweep."""
        return f"{self.boot_id[:12]}:{self.start_ticks}:{self.pid}"


class Depth(enum.Enum):
    """How much a sweep reads per process."""

    CHEAP = "cheap"  # stat + cmdline + status + exe: enough to identify and describe
    EXEC = "exec"  # CHEAP + fds, sockets, namespaces, cgroup/container
    # What procfs adds to an exec the kernel sensor already described (exe, cwd, credentials,
    # audit ids and namespaces come from the kernel): stat for identity, status, cmdline (to
    # notice a rewritten argv), fds and sockets, cgroup/container. Per-exec work, kept lean.
    ENRICH = "enrich"
    FULL = "full"  # everything below (fds, sockets, namespaces, cgroup, maps, mounts, threads)


class Missing(str, enum.Enum):
    """Why an optional field is absent."""

    GONE = "gone"  # the process (or the entry) vanished while we read it
    DENIED = "denied"  # EACCES/EPERM
    KERNEL_THREAD = "kernel_thread"  # kernel threads have no exe, cmdline or mm
    ZOMBIE = "zombie"  # exited, not yet reaped: stat/status still readable, little else
    PARSE = "parse_error"  # read something the parser did not understand
    NOT_REQUESTED = "not_requested"
    # The process lives but the file does not exist (a kernel without CONFIG_AUDIT has no
    # loginuid, ns/time needs 5.6) or the read failed with an errno other than the above.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Namespaces:
    """Namespace inode numbers from the procfs <pid>/ns/* links (None where unreadable)."""

    pid: int | None = None
    mnt: int | None = None
    net: int | None = None
    user: int | None = None
    uts: int | None = None
    ipc: int | None = None
    cgroup: int | None = None
    time: int | None = None


@dataclass(frozen=True, slots=True)
class FdInfo:
    fd: int
    kind: str  # "file" | "pipe" | "socket" | "anon_inode" | "memfd" | "other"
    target: bytes  # the readlink() text, e.g. b"/etc/passwd", b"socket:[1234]"
    inode: int | None = None  # for socket:[N] and pipe:[N]
    deleted: bool = False  # the target ended in " (deleted)" (stripped from target)


@dataclass(frozen=True, slots=True)
class SocketInfo:
    """One socket from sock_diag, named the way `ss` names things."""

    inode: int
    family: str  # "inet" | "inet6" | "unix"
    protocol: str  # "tcp" | "udp" | "unix"
    state: str  # "LISTEN", "ESTABLISHED", ...
    local_address: str
    local_port: int | None
    remote_address: str
    remote_port: int | None
    uid: int | None = None
    netns: int | None = None  # inode of the network namespace it was read in
    sock_type: str | None = None  # unix only: "stream" | "dgram" | "seqpacket"
    peer_inode: int | None = None  # unix only: inode of the connected peer socket


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    tid: int
    comm: bytes


@dataclass(frozen=True, slots=True)
class ProcessSnapshot:
    """What procfs could tell about one process at one moment.

    Optional fields are None when unread; ``missing`` says why for each such field.
    """

    key: ProcKey
    pid: int
    ppid: int
    comm: bytes
    state: str  # one-letter state from stat: R S D Z T t X I ...
    start_ticks: int
    argv: tuple[bytes, ...] | None = None
    exe: bytes | None = None
    exe_deleted: bool = False
    exe_memfd: bool = False
    cwd: bytes | None = None
    root: bytes | None = None
    uids: tuple[int, int, int, int] | None = None  # real, effective, saved, filesystem
    gids: tuple[int, int, int, int] | None = None
    cap_eff: int | None = None
    cap_prm: int | None = None
    cap_inh: int | None = None
    threads: int | None = None
    utime_ticks: int | None = None
    stime_ticks: int | None = None
    rss_bytes: int | None = None
    vsz_bytes: int | None = None
    loginuid: int | None = None
    sessionid: int | None = None
    tty_nr: int | None = None
    ns_pids: tuple[int, ...] | None = None  # status NSpid: the pid in each nested pid namespace
    kernel_thread: bool = False
    zombie: bool = False
    # FULL depth only
    thread_list: tuple[ThreadInfo, ...] | None = None
    fds: tuple[FdInfo, ...] | None = None
    fd_count: int | None = None
    sockets: tuple[SocketInfo, ...] | None = None
    ns: Namespaces | None = None
    ns_differs_from_init: tuple[str, ...] | None = None
    cgroup: bytes | None = None
    container_id: str | None = None
    libraries: tuple[bytes, ...] | None = None
    environ: tuple[tuple[bytes, bytes], ...] | None = None
    mounts: tuple[bytes, ...] | None = None
    missing: dict[str, str] = field(default_factory=dict)
