"""The BPF source's wire -> neutral record conversion, field by field."""
from __future__ import annotations

from monitor.records import ExecRecord, ExitRecord, ForkRecord, StdioFd
from monitor.sensors.bpf import wire
from monitor.sensors.bpf.source import (ANON_INODE_FS_MAGIC, PIPEFS_MAGIC, exec_record,
                                        exit_record, fork_record, stdio_kind)
from userspace.types import NSEC_PER_TICK


def test_exec_record_has_every_field_in_place():
    # exec_record builds the tuple positionally for speed: every field must land where the
    # keyword form puts it.
    raw = wire.RawExec(
        ts_ns=1000, tgid=5, tid=5, start_boottime=700 * NSEC_PER_TICK, old_tid=6,
        flags=wire.ARGV_TRUNCATED | wire.EXE_UNLINKED | wire.CWD_ERROR, ppid=1, argc=3,
        parent_start_boottime=2 * NSEC_PER_TICK, cgroup_id=99, uid=1, gid=2, euid=3, egid=4,
        loginuid=1000, sessionid=wire.UNSET_ID, ns=(11, 12, 13, 14, 15, 16, 17), argv_size=30,
        comm=b"true", filename=b"/bin/true", tty=b"pts3", exe=b"/usr/bin/true", cwd=None,
        argv=(b"/bin/true", b"a"), vpid=1, pid_level=1, start_code=0x1000, end_code=0x2000,
        start_stack=0x7000, arg_start=0x6000, suid=7, fsuid=8, cap_effective=0x1fffeffffff,
        cap_permitted=0x3000, stdio=(
            wire.RawStdio(wire.STDIO_OPEN, 0o010600, 41, PIPEFS_MAGIC),
            wire.RawStdio(wire.STDIO_CLOSED),
            wire.RawStdio(wire.STDIO_OPEN, 0o140777, 42, 0x534F434B, 0, 2, 1, 6)))
    assert exec_record(raw) == ExecRecord(
        ts_ns=1000, pid=5, start_ticks=700, ppid=1, parent_start_ticks=2, comm=b"true",
        exe=b"/usr/bin/true", cwd=None, argv=(b"/bin/true", b"a"), argv_truncated=True,
        uid=1, euid=3, gid=2, egid=4, tid=6, filename=b"/bin/true", argc=3, argv_size=30,
        tty=b"pts3", loginuid=1000, sessionid=None,
        ns={"pid": 11, "mnt": 12, "net": 13, "user": 14, "uts": 15, "ipc": 16, "cgroup": 17},
        cgroup_id=99, exe_deleted=True, exe_fileless=False,
        capture=("argv_truncated", "exe_unlinked", "cwd_read_error"), snapshot=None,
        missing=None, observed=False, kernel_captured=True, vpid=1, layout=(0x6000, 0x2000),
        cap_eff=0x1fffeffffff, cap_prm=0x3000, suid=7, fsuid=8,
        stdio=(StdioFd(0, "pipe", 41), StdioFd(1, "closed"),
               StdioFd(2, "socket", 42, None, "inet", "stream", "tcp")))


def test_stdio_kinds_are_named_from_mode_superblock_and_device():
    def kind(mode, magic=0xEF53, rdev=0, **sock):
        return stdio_kind(1, wire.RawStdio(wire.STDIO_OPEN, mode, 9, magic, rdev, **sock))
    assert kind(0o100644) == StdioFd(1, "file", 9)
    assert kind(0o040755) == StdioFd(1, "dir", 9)
    assert kind(0o010644) == StdioFd(1, "fifo", 9)  # a named FIFO on ext4
    assert kind(0o010600, PIPEFS_MAGIC) == StdioFd(1, "pipe", 9)
    # anon_inodefs: S_IFREG since 6.15 (anon_inode_make_secure_inode), no type bits before
    assert kind(0o100600, ANON_INODE_FS_MAGIC) == StdioFd(1, "anon", 9)
    assert kind(0o000600, ANON_INODE_FS_MAGIC) == StdioFd(1, "anon", 9)
    assert kind(0o020666, 0x1021994, 1 << 20 | 3) == StdioFd(1, "chr", 9, "1:3")  # /dev/null
    assert kind(0o020620, 0x1CD1, 136 << 20 | 4) == StdioFd(1, "tty", 9, "136:4")  # /dev/pts/4
    assert kind(0o020666, 0x1021994, 5 << 20 | 0) == StdioFd(1, "tty", 9, "5:0")  # /dev/tty
    assert kind(0o060660, 0x1021994, 8 << 20 | 1) == StdioFd(1, "blk", 9, "8:1")
    assert kind(0o140777, sock_family=1, sock_type=1) == StdioFd(1, "socket", 9, None, "unix", "stream")
    assert kind(0o140777, sock_family=10, sock_type=2, sock_protocol=17) == \
        StdioFd(1, "socket", 9, None, "inet6", "dgram", "udp")
    assert kind(0o140777, sock_family=99, sock_type=7) == StdioFd(1, "socket", 9, None, "af99", "7")
    assert stdio_kind(2, wire.RawStdio(wire.STDIO_ERROR)) == StdioFd(2, "unknown")


def test_a_memfd_image_is_fileless_not_deleted():
    raw = wire.RawExec(1, 5, 5, 0, 5, wire.EXE_UNLINKED | wire.EXE_DETACHED, 0, 1, 0, 1, 0, 0,
                       0, 0, wire.UNSET_ID, wire.UNSET_ID, (0,) * 7, 2, b"x", b"/dev/fd/3",
                       None, b"/memfd:payload (deleted)", b"/", (b"x",))
    r = exec_record(raw)
    assert (r.exe_fileless, r.exe_deleted, r.ppid, r.parent_start_ticks) == (True, False, None, None)


def test_fork_and_exit_records():
    f = wire.RawFork(10, 7, 7, 300 * NSEC_PER_TICK, 5, 6, 200 * NSEC_PER_TICK, vpid=2,
                     pid_level=1, arg_start=0x6000, end_code=0x2000)
    assert fork_record(f) == ForkRecord(10, 7, 300, 5, 200, 2, (0x6000, 0x2000))
    x = wire.RawExit(20, 7, 8, 300 * NSEC_PER_TICK, 9, 10, b"sleep")
    assert exit_record(x) == ExitRecord(20, 7, 300, 9, 10, b"sleep")
