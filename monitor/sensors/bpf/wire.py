"""Decode the sensor's perf-buffer records (layouts: bpf/events.h) into Raw* tuples.

Pure: no bcc import, so decoding is tested without a kernel on recorded bytes
(tests/data/events/*.dump). Raw bytes are unpacked with struct, not bcc's ctypes `.event()`:
a ctypes char array stops at the first NUL, which would cut a NUL-separated argv to argv[0].
"""
from __future__ import annotations

import struct
from typing import NamedTuple

WIRE_VERSION = 3
EVENT_EXEC = 1
EVENT_FORK = 2
EVENT_EXIT = 3

# Exec flags (bpf/events.h EXEC_*)
ARGV_TRUNCATED = 1 << 0
ARGV_READ_ERROR = 1 << 1
FILENAME_TRUNCATED = 1 << 2
EXE_UNLINKED = 1 << 3
EXE_DETACHED = 1 << 4
EXE_TRUNCATED = 1 << 5
EXE_ERROR = 1 << 6
CWD_DETACHED = 1 << 7
CWD_TRUNCATED = 1 << 8
CWD_ERROR = 1 << 9
NO_MM = 1 << 10
NO_FILES = 1 << 11

# struct stdio_fd.state (bpf/events.h STDIO_*)
STDIO_CLOSED = 0
STDIO_OPEN = 1
STDIO_ERROR = 2

# Counter indexes (bpf/events.h enum counter), in order.
COUNTERS = ("exec", "fork", "exit", "thread_create", "thread_exit", "submit_failed",
            "scratch_missing")

HEADER = struct.Struct("<BBHIQIIQII")
FORK = struct.Struct("<BBHIQIIQII" "IIQ" "QQ")
EXIT = struct.Struct("<BBHIQIIQII" "IIQ16s")
_STDIO = "QQIHBxHHHxx"  # struct stdio_fd: ino sb_magic rdev mode state family type protocol
EXEC = struct.Struct("<BBHIQIIQII" "IIII" "QQ" "QQQQ" "IIII" "II" "7I" "I" "HHHH" "I" "16s"
                     "II4x" "QQ" + _STDIO * 3)
assert (HEADER.size, FORK.size, EXIT.size, EXEC.size) == (40, 72, 72, 312)

UNSET_ID = 0xFFFFFFFF  # loginuid/sessionid never set (AUDIT_UID_UNSET)


class DecodeError(ValueError):
    """A record too short, of an unknown type or version, or with lengths past its end."""


# Every record type ends with the fields added in wire version 2, with defaults, so that code
# building records by position (tests, the pipeline's fixtures) keeps working. In all three:
#   vpid       the tgid as the process's own PID namespace numbers it (getpid() inside a
#              container; Falco's vpid); equal to tgid when pid_level is 0. 0: unreadable.
#   pid_level  the depth of that namespace (struct pid.level): 0 = the host's.
# procfs <pid>/status NStgid lists the same numbers, host first: vpid is its last value and
# pid_level its length - 1 (userspace.parsers.Status).


class RawFork(NamedTuple):
    ts_ns: int
    tgid: int
    tid: int
    start_boottime: int
    parent_tgid: int
    parent_tid: int
    parent_start_boottime: int
    vpid: int = 0  # the child's
    pid_level: int = 0
    # The layout of the image the child runs: its parent's at the fork (dup_mm copies it), so
    # parent_key.image_id(arg_start, end_code) names the image that forked it. 0: no mm.
    arg_start: int = 0
    end_code: int = 0


class RawExit(NamedTuple):
    ts_ns: int
    tgid: int
    tid: int
    start_boottime: int
    exit_code: int  # wait(2) status
    start_time: int  # CLOCK_MONOTONIC ns
    comm: bytes
    vpid: int = 0
    pid_level: int = 0


class RawStdio(NamedTuple):
    """Descriptor 0, 1 or 2 at exec (bpf/events.h struct stdio_fd): raw inode facts."""

    state: int  # STDIO_CLOSED / STDIO_OPEN / STDIO_ERROR
    mode: int = 0  # inode->i_mode
    ino: int = 0
    sb_magic: int = 0
    rdev: int = 0  # kernel dev_t: major << 20 | minor
    sock_family: int = 0
    sock_type: int = 0
    sock_protocol: int = 0


STDIO_NONE = (RawStdio(STDIO_ERROR),) * 3  # records built without stdio (tests, fixtures)


class RawExec(NamedTuple):
    ts_ns: int
    tgid: int
    tid: int
    start_boottime: int
    old_tid: int
    flags: int
    ppid: int
    argc: int
    parent_start_boottime: int
    cgroup_id: int
    uid: int
    gid: int
    euid: int
    egid: int
    loginuid: int
    sessionid: int
    ns: tuple[int, int, int, int, int, int, int]  # pid mnt net user uts ipc cgroup
    argv_size: int  # the program's full argument area, bytes
    comm: bytes
    filename: bytes
    tty: bytes | None
    exe: bytes | None  # absolute path assembled from leaf-first components
    cwd: bytes | None
    argv: tuple[bytes, ...]
    vpid: int = 0
    pid_level: int = 0
    # The new image's mm layout; procfs <pid>/stat fields 26, 27, 28 and 48 print the same
    # members (do_task_stat), so a sweep reads the same values for the same image. With ASLR
    # arg_start changes on every exec: with end_code it is the image identity
    # (userspace.types.ProcKey.image_id). 0 when the task has no mm (EXEC_NO_MM).
    start_code: int = 0
    end_code: int = 0
    start_stack: int = 0
    arg_start: int = 0
    # Wire version 3: the rest of the credentials committed by the exec, and descriptors
    # 0, 1, 2 as the new program inherited them (after close-on-exec).
    suid: int = 0
    fsuid: int = 0
    cap_effective: int = 0
    cap_permitted: int = 0
    stdio: tuple[RawStdio, RawStdio, RawStdio] = STDIO_NONE


NS_NAMES = ("pid", "mnt", "net", "user", "uts", "ipc", "cgroup")


def _cstr(b: bytes) -> bytes:
    i = b.find(b"\0")
    return b if i < 0 else b[:i]


def decode_path(blob: bytes) -> bytes:
    """Leaf-first NUL-terminated components (bpf write_path) -> absolute path.

    No components means the walk stopped at the root: "/".
    """
    parts = blob.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    parts.reverse()
    return b"/" + b"/".join(parts)


def decode_argv(blob: bytes) -> tuple[bytes, ...]:
    """The argument area: NUL-terminated strings, back to back.

    A truncated capture ends without its NUL; its last, partial element is kept as is.
    An empty string argument is an empty element (b"a\\0\\0b\\0" -> (b"a", b"", b"b")).
    """
    if not blob:
        return ()
    if blob.endswith(b"\0"):
        blob = blob[:-1]
    return tuple(blob.split(b"\0"))


def decode(buf: bytes) -> RawExec | RawFork | RawExit:
    if len(buf) < HEADER.size:
        raise DecodeError(f"record of {len(buf)} bytes is shorter than its header")
    etype, version, _r, size, ts, tgid, tid, start, vpid, level = HEADER.unpack_from(buf, 0)
    if version != WIRE_VERSION:
        raise DecodeError(f"wire version {version}, expected {WIRE_VERSION}")
    if size > len(buf):
        raise DecodeError(f"record says {size} bytes but {len(buf)} arrived")
    if etype == EVENT_EXEC:
        return decode_exec(buf, size)
    if etype == EVENT_FORK:
        if size < FORK.size:
            raise DecodeError("fork record too short")
        f = FORK.unpack_from(buf, 0)
        return RawFork(ts, tgid, tid, start, f[10], f[11], f[12], vpid, level, f[13], f[14])
    if etype == EVENT_EXIT:
        if size < EXIT.size:
            raise DecodeError("exit record too short")
        e = EXIT.unpack_from(buf, 0)
        return RawExit(ts, tgid, tid, start, e[10], e[12], _cstr(e[13]), vpid, level)
    raise DecodeError(f"unknown record type {etype}")


def decode_exec(buf: bytes, size: int) -> RawExec:
    if size < EXEC.size:
        raise DecodeError("exec record too short")
    (_t, _v, _r, _s, ts, tgid, tid, start, vpid, level,
     old_tid, flags, ppid, argc,
     pstart, cgroup_id,
     start_code, end_code, start_stack, arg_start,
     uid, gid, euid, egid,
     loginuid, sessionid,
     ns_pid, ns_mnt, ns_net, ns_user, ns_uts, ns_ipc, ns_cgroup,
     argv_size,
     filename_len, tty_len, exe_len, cwd_len,
     argv_len,
     comm, suid, fsuid, cap_eff, cap_prm, *sd) = EXEC.unpack_from(buf, 0)
    pos = EXEC.size
    end = pos + filename_len + tty_len + exe_len + cwd_len + argv_len
    if end > size:
        raise DecodeError(f"exec record sections end at {end}, past its size {size}")
    filename = _cstr(buf[pos:pos + filename_len])
    pos += filename_len
    tty = _cstr(buf[pos:pos + tty_len]) if tty_len else None
    pos += tty_len
    exe = decode_path(buf[pos:pos + exe_len]) if not flags & EXE_ERROR else None
    pos += exe_len
    cwd = decode_path(buf[pos:pos + cwd_len]) if not flags & CWD_ERROR else None
    pos += cwd_len
    argv = decode_argv(buf[pos:pos + argv_len])
    return RawExec(ts, tgid, tid, start, old_tid, flags, ppid, argc, pstart, cgroup_id,
                   uid, gid, euid, egid, loginuid, sessionid,
                   (ns_pid, ns_mnt, ns_net, ns_user, ns_uts, ns_ipc, ns_cgroup),
                   argv_size, _cstr(comm), filename, tty, exe, cwd, argv,
                   vpid, level, start_code, end_code, start_stack, arg_start,
                   suid, fsuid, cap_eff, cap_prm, _stdio(sd))


def _stdio(sd: list[int]) -> tuple[RawStdio, RawStdio, RawStdio]:
    # Processes of one parent share their fds 0-2 (a storm's children, a shell's pipeline
    # stages): one triple per distinct value, reused (the same object, so that what is built
    # from it downstream can be cached too).
    key = tuple(sd)
    got = _STDIO_SEEN.get(key)
    if got is None:
        if len(_STDIO_SEEN) >= 4096:
            _STDIO_SEEN.clear()
        # per fd, in EXEC order: ino sb_magic rdev mode state family type protocol
        got = _STDIO_SEEN[key] = tuple(
            _new(RawStdio, (sd[i + 4], sd[i + 3], sd[i], sd[i + 1], sd[i + 2], sd[i + 5],
                            sd[i + 6], sd[i + 7])) for i in (0, 8, 16))
    return got  # type: ignore[return-value]


_STDIO_SEEN: dict[tuple[int, ...], tuple[RawStdio, ...]] = {}


_new = tuple.__new__


def encode(raw: RawExec | RawFork | RawExit, exe_components: bytes | None = None) -> bytes:
    """Inverse of decode, for tests (property: decode(encode(x)) == x)."""
    if isinstance(raw, RawFork):
        return FORK.pack(EVENT_FORK, WIRE_VERSION, 0, FORK.size, raw.ts_ns, raw.tgid, raw.tid,
                         raw.start_boottime, raw.vpid, raw.pid_level, raw.parent_tgid, raw.parent_tid,
                         raw.parent_start_boottime, raw.arg_start, raw.end_code)
    if isinstance(raw, RawExit):
        return EXIT.pack(EVENT_EXIT, WIRE_VERSION, 0, EXIT.size, raw.ts_ns, raw.tgid, raw.tid,
                         raw.start_boottime, raw.vpid, raw.pid_level, raw.exit_code, 0,
                         raw.start_time, raw.comm)

    def components(path: bytes | None) -> bytes:
        if not path or path == b"/":
            return b""
        return b"".join(p + b"\0" for p in reversed(path.lstrip(b"/").split(b"/")))

    filename = raw.filename + b"\0"
    tty = raw.tty + b"\0" if raw.tty is not None else b""
    exe = components(raw.exe)
    cwd = components(raw.cwd)
    argv = b"".join(a + b"\0" for a in raw.argv)
    size = EXEC.size + len(filename) + len(tty) + len(exe) + len(cwd) + len(argv)
    head = EXEC.pack(EVENT_EXEC, WIRE_VERSION, 0, size, raw.ts_ns, raw.tgid, raw.tid,
                     raw.start_boottime, raw.vpid, raw.pid_level, raw.old_tid, raw.flags, raw.ppid,
                     raw.argc, raw.parent_start_boottime, raw.cgroup_id, raw.start_code,
                     raw.end_code, raw.start_stack, raw.arg_start, raw.uid, raw.gid, raw.euid,
                     raw.egid, raw.loginuid, raw.sessionid, *raw.ns, raw.argv_size,
                     len(filename), len(tty), len(exe), len(cwd), len(argv), raw.comm,
                     raw.suid, raw.fsuid, raw.cap_effective, raw.cap_permitted,
                     *(v for s in raw.stdio for v in (s.ino, s.sb_magic, s.rdev, s.mode, s.state,
                                                      s.sock_family, s.sock_type, s.sock_protocol)))
    return head + filename + tty + exe + cwd + argv
