"""Typed values that the userspace readers return.

Strings that come from a process (comm, argv, paths, environment) stay ``bytes`` here: a process
chooses them and they need not be UTF-8. They become text at exactly one place,
``monitor/text.py``.
"""
from __future__ import annotations

import enum
import hashlib
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

    def image_id(self, arg_start: int | None, end_code: int | None) -> str | None:
        """Identity of one program image of this process: exec keeps the pid and the start
        time (exec_id), so every exec gets a new image_id instead (issue 11, defect 5).

        Ingredients, read identically by the sensor (mm_struct at sched_process_exec) and by a
        sweep (procfs <pid>/stat fields 48 and 27, procfs array.c do_task_stat):
        * mm->arg_start: where the new stack's argument area begins. load_elf_binary calls
          setup_arg_pages(bprm, randomize_stack_top(STACK_TOP), ...): a top drawn afresh on
          every exec (22 bits of pages on x86-64, STACK_RND_MASK, plus arch_align_stack's
          random shift below 8 KiB), so with ASLR consecutive images of a process differ.
        * mm->end_code: the end of the text segment, which tells different programs apart when
          ASLR is off (`setarch -R`, randomize_va_space=0): there arg_start depends only on
          the lengths of the filename, environment and argument strings.
        Residual collision, ASLR off: the same program re-executed with strings of the same
        total length (a daemon re-executing itself with the same argv and environment) keeps
        both values, so its images share one image_id. prctl(PR_SET_MM) (CAP_SYS_RESOURCE;
        CRIU) can also move both after exec, so a later sweep would derive another id.

        The addresses are ASLR secrets (do_task_stat shows them only to ptrace-capable
        readers), so only a 64-bit BLAKE2b of them, keyed with the boot id, leaves the host.
        None when there is no layout to identify (arg_start 0: no mm, or stat hidden)."""
        if not arg_start or end_code is None:
            return None
        h = hashlib.blake2b(f"{arg_start:x}:{end_code:x}".encode(), digest_size=8,
                            key=self.boot_id.encode()[:64])
        return f"{self.exec_id}:{h.hexdigest()}"


class Depth(enum.Enum):
    """How much a sweep reads per process."""

    CHEAP = "cheap"  # stat + cmdline + status + exe: enough to identify and describe
    EXEC = "exec"  # CHEAP + fds, sockets, namespaces, cgroup/container
    # What procfs adds to an exec the kernel sensor already described (exe, cwd, credentials,
    # audit ids and namespaces come from the kernel): stat for identity, status, cmdline (to
    # notice a rewritten argv), fds and sockets, cgroup/container. Per-exec work, kept lean.
    ENRICH = "enrich"
    # The least procfs can add to such an exec (`--enrich standard`): stat alone (identity,
    # state, threads, memory) plus the cgroup path when the kernel's cgroup id did not settle
    # it; the kernel captured credentials, capabilities and fds 0-2 itself.
    ENRICH_STAT = "enrich_stat"
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
    # A socket the process holds, of a kind the socket table lists (TCP, UDP, unix), that the
    # table did not have: opened after the (cached) table was read. The others are listed.
    NOT_IN_TABLE = "not_in_table"


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
    # status NStgid's last value: the pid as the process's own PID namespace numbers it
    # (getpid() inside a container; Falco's vpid), and that namespace's depth (0: the
    # procfs mount's own). The BPF sensor's vpid/pid_level are the same numbers.
    vpid: int | None = None
    pid_level: int | None = None
    # The image's layout from stat fields 26, 27, 28 and 48 (mm_struct start_code, end_code,
    # start_stack, arg_start): the same values the BPF sensor captures at exec. None when
    # the kernel hid them (a reader without ptrace access, no mm) or stat is too short.
    start_code: int | None = None
    end_code: int | None = None
    start_stack: int | None = None
    arg_start: int | None = None
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

    @property
    def image_id(self) -> str | None:
        """ProcKey.image_id of the image this snapshot saw (None when its layout was hidden)."""
        return self.key.image_id(self.arg_start, self.end_code)
