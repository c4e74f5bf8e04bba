"""Pure parsers for procfs files: bytes in, typed values out, no I/O.

Contract: on any input, a parser returns a value or raises ``ParseError``; nothing else escapes
(the Hypothesis tests feed arbitrary bytes). Field numbers below are those of proc(5).
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from .procfs import ParseError

# include/linux/sched.h: "I am a kernel thread". Set by copy_process for kthreadd's children.
PF_EXITING = 0x00000004  # include/linux/sched.h: in do_exit, past exit_signals()
PF_KTHREAD = 0x00200000

# include/linux/audit.h AUDIT_UID_UNSET / AUDIT_SID_UNSET: (unsigned int)-1 means "never set".
AUDIT_UNSET = 4294967295


def _int(token: bytes, data: bytes, what: str) -> int:
    # int() on bytes also accepts "+5", " 5" and "1_000"; the kernel never writes those, and
    # accepting them is harmless. What matters is that ValueError becomes ParseError.
    try:
        return int(token)
    except ValueError:
        raise ParseError(f"bad integer for {what}", data) from None


# --- stat ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Stat:
    """The fields of <pid>/stat that procsentry uses (proc(5) numbering in comments)."""

    pid: int  # 1
    comm: bytes  # 2, raw: up to 15 bytes of anything but NUL (prctl PR_SET_NAME)
    state: str  # 3
    ppid: int  # 4
    pgrp: int  # 5
    session: int  # 6
    tty_nr: int  # 7
    flags: int  # 9, PF_* bits
    utime: int  # 14, clock ticks
    stime: int  # 15, clock ticks
    num_threads: int  # 20
    starttime: int  # 22, clock ticks after boot
    vsize: int  # 23, bytes
    rss: int  # 24, pages
    # The image's memory layout (mm_struct members of the same names), None when the line is
    # too short to hold the field (arg_start/arg_end came in Linux 3.5). procfs array.c
    # do_task_stat prints them only to a reader that passes ptrace_may_access(task,
    # PTRACE_MODE_READ_FSCREDS): for anyone else start_code/end_code read 1 and the others 0,
    # and with no mm (kernel thread, zombie, exiting) all read 0. Root passes the check
    # (CAP_SYS_PTRACE), so a root sweep sees the real values. Raw here; process.py decides.
    start_code: int | None = None  # 26
    end_code: int | None = None  # 27
    start_stack: int | None = None  # 28
    arg_start: int | None = None  # 48
    arg_end: int | None = None  # 49

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)

    @property
    def layout_hidden(self) -> bool:
        """Fields 26-28 and 48-49 carry no real addresses: the reader lacked ptrace access
        or the task has no mm (the kernel prints 1/1/0 and 0/0, or zeros), or this kernel's
        stat is too short. A live user process's argument area never starts at 0."""
        return not self.arg_start or not self.end_code or self.end_code == 1


# Index of proc(5) field N in the list of tokens after the closing ")": field 3 is index 0.
def _f(n: int) -> int:
    return n - 3


_STAT_MIN_TOKENS = _f(24) + 1


def parse_stat(data: bytes) -> Stat:
    """Parse <pid>/stat.

    comm sits in parentheses and may itself contain ")", "(" and spaces (tetragon's test uses
    "(zsh( )foo)"), so the name ends at the *last* ")" (psutil ``_parse_stat_file``); everything
    after it is numeric and space-separated (fs/proc/array.c do_task_stat).
    """
    lp = data.find(b"(")
    rp = data.rfind(b")")
    if lp < 0 or rp < lp:
        raise ParseError("stat: no (comm)", data)
    pid = _int(data[:lp].strip(), data, "stat pid")
    comm = data[lp + 1 : rp]
    rest = data[rp + 1 :].split()
    if len(rest) < _STAT_MIN_TOKENS:
        raise ParseError(f"stat: {len(rest)} fields after comm, need {_STAT_MIN_TOKENS}", data)
    state_tok = rest[_f(3)]
    if len(state_tok) != 1 or not state_tok.isalpha():
        raise ParseError("stat: bad state", data)
    # Read on every exec the monitor enriches: convert the fields in one map() instead of a
    # call per field; the per-field path below only runs to name a bad field.
    try:
        ppid, pgrp, session, tty_nr, flags, utime, stime, num_threads, starttime, vsize, rss = \
            map(int, _STAT_PICK(rest))
        layout = [int(rest[i]) if len(rest) > i else None for i in _STAT_LAYOUT]
    except ValueError:
        for field in _STAT_FIELDS + _STAT_LAYOUT_FIELDS:
            if len(rest) > _f(field):
                _int(rest[_f(field)], data, f"stat field {field}")
        raise  # not reached: some field above failed to convert
    return Stat(pid, comm, state_tok.decode("ascii"), ppid, pgrp, session, tty_nr, flags, utime,
                stime, num_threads, starttime, vsize, rss, *layout)


_STAT_FIELDS = (4, 5, 6, 7, 9, 14, 15, 20, 22, 23, 24)  # Stat's fields in order, ppid..rss
_STAT_LAYOUT_FIELDS = (26, 27, 28, 48, 49)  # start_code end_code start_stack arg_start arg_end
_STAT_PICK = operator.itemgetter(*(_f(n) for n in _STAT_FIELDS))
_STAT_LAYOUT = tuple(_f(n) for n in _STAT_LAYOUT_FIELDS)


# --- status ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Status:
    """Selected lines of <pid>/status; None where the line is absent (kernel threads have no
    Vm* lines; a truncated read stops early). Sizes converted from kB to bytes."""

    name: bytes | None = None  # escaped by the kernel (proc_task_name ESCAPE_SPACE|SPECIAL)
    state: str | None = None
    tgid: int | None = None
    pid: int | None = None
    ppid: int | None = None
    tracer_pid: int | None = None
    uids: tuple[int, int, int, int] | None = None  # real, effective, saved, filesystem
    gids: tuple[int, int, int, int] | None = None
    groups: tuple[int, ...] | None = None
    ns_tgid: tuple[int, ...] | None = None  # NStgid: outermost pid namespace first
    ns_pid: tuple[int, ...] | None = None
    vm_size: int | None = None  # bytes
    vm_rss: int | None = None  # bytes
    vm_hwm: int | None = None  # bytes: peak resident set of this program image (since exec)
    threads: int | None = None
    cap_inh: int | None = None
    cap_prm: int | None = None
    cap_eff: int | None = None
    cap_bnd: int | None = None
    cap_amb: int | None = None
    no_new_privs: int | None = None
    seccomp: int | None = None

    # NStgid/NSpid (Linux 4.1+, procfs array.c task_state) list the task's number in each
    # PID namespace from the one the procfs mount belongs to (proc_pid_ns) down to the
    # task's own: task_tgid_nr_ns(p, pid->numbers[g].ns) for g = ns->level .. pid->level.
    # The last is the number the process itself sees (getpid(); Falco's vpid), the BPF
    # sensor's numbers[pid->level].nr. Through the host's procfs the list is complete and its
    # length is the nesting depth + 1.
    @property
    def vpid(self) -> int | None:
        """The tgid as the process's own PID namespace numbers it (None: no NStgid/NSpid line).

        NStgid is the tgid's list; <tgid>/status is the leader's, for which NSpid is the same
        list, so NSpid is the fallback for a status cut short between the two lines."""
        ns = self.ns_tgid or self.ns_pid
        return ns[-1] if ns else None

    @property
    def pid_level(self) -> int | None:
        """Depth of the process's PID namespace below the procfs mount's (0: the same one;
        the host's procfs: struct pid.level, as the sensor reports it)."""
        ns = self.ns_tgid or self.ns_pid
        return len(ns) - 1 if ns else None


def _ints(value: bytes, data: bytes, key: bytes) -> tuple[int, ...]:
    try:
        return tuple(map(int, value.split()))
    except ValueError:  # as _int, the key's name decoded only then
        raise ParseError(f"bad integer for {key.decode('ascii', 'replace')}", data) from None


def _four(value: bytes, data: bytes, key: bytes) -> tuple[int, int, int, int]:
    v = _ints(value, data, key)
    if len(v) != 4:
        raise ParseError(f"status: {key!r} needs 4 values", data)
    return (v[0], v[1], v[2], v[3])


def _kb(value: bytes, data: bytes, key: bytes) -> int:
    parts = value.split()
    if len(parts) != 2 or parts[1] != b"kB":
        raise ParseError(f"status: {key!r} is not '<n> kB'", data)
    return _int(parts[0], data, "kB") * 1024


def _hex(value: bytes, data: bytes, key: bytes) -> int:
    try:
        return int(value.strip(), 16)
    except ValueError:
        raise ParseError(f"status: {key!r} is not hex", data) from None


def _single(value: bytes, data: bytes, key: bytes) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ParseError(f"bad integer for {key.decode('ascii', 'replace')}", data) from None


def _state(value: bytes, data: bytes, key: bytes) -> str:
    # "S (sleeping)"
    tok = value.split(None, 1)
    if not tok or len(tok[0]) != 1 or not tok[0].isalpha():
        raise ParseError("status: bad State", data)
    return tok[0].decode("ascii")


def _raw(value: bytes, data: bytes, key: bytes) -> bytes:
    return value


# status key -> (Status field, converter). One table, as pyroute2's refine map.
_STATUS_KEYS = {
    b"Name": ("name", _raw),
    b"State": ("state", _state),
    b"Tgid": ("tgid", _single),
    b"Pid": ("pid", _single),
    b"PPid": ("ppid", _single),
    b"TracerPid": ("tracer_pid", _single),
    b"Uid": ("uids", _four),
    b"Gid": ("gids", _four),
    b"Groups": ("groups", _ints),
    b"NStgid": ("ns_tgid", _ints),
    b"NSpid": ("ns_pid", _ints),
    b"VmSize": ("vm_size", _kb),
    b"VmRSS": ("vm_rss", _kb),
    b"VmHWM": ("vm_hwm", _kb),
    b"Threads": ("threads", _single),
    b"CapInh": ("cap_inh", _hex),
    b"CapPrm": ("cap_prm", _hex),
    b"CapEff": ("cap_eff", _hex),
    b"CapBnd": ("cap_bnd", _hex),
    b"CapAmb": ("cap_amb", _hex),
    b"NoNewPrivs": ("no_new_privs", _single),
    b"Seccomp": ("seccomp", _single),
}


# Both searched in "\n" + data, anchored on the newline that starts each line: with ^ and $ in
# MULTILINE mode the engine tries every position of every line, and these took 2.2x and 3x
# longer (the line regex 7.4 -> 3.4 us on a 1.4 KB status).
_STATUS_LINE = re.compile(
    rb"\n(" + b"|".join(re.escape(k) for k in _STATUS_KEYS) + rb"):([^\n]*)")
# A whole line without ":".
_LINE_WITHOUT_COLON = re.compile(rb"\n[^:\n]+\n")


def parse_status(data: bytes) -> Status:
    """Parse <pid>/status ("Key:\\tvalue" lines). Unknown keys are ignored; a known key with a
    malformed value, or a line without ":", is a ParseError. A read truncated at a line
    boundary simply yields None for the lines that did not arrive.

    The known keys are picked out by one regex (the scan runs in C): status has ~60 lines and
    this runs once per exec, so a Python loop over every line would be paid on every event
    (bench/RESULTS.md has the daemon's profile under a storm)."""
    lines = b"\n" + data
    bad = _LINE_WITHOUT_COLON.search(lines)
    if bad is not None:
        raise ParseError("status: line without ':'", bad.group(0).strip(b"\n"))
    # The kernel ends every line with "\n" (task_state and friends). A last line without it
    # was cut by a short read: a fixed-shape value (Uid's four numbers, "<n> kB") then fails
    # to parse, but a list (NStgid "4242\t1" cut to "4242\t") would parse to a wrong, shorter
    # list, so an unterminated list line is dropped (None) instead.
    partial = data[data.rfind(b"\n") + 1:]
    if partial and b":" not in partial:
        raise ParseError("status: line without ':'", partial)  # cut inside its key
    values: dict[str, object] = {}
    for key, value in _STATUS_LINE.findall(lines):
        fname, conv = _STATUS_KEYS[key]
        if conv is _ints and partial and partial == key + b":" + value:
            continue
        if fname == "name" and value.startswith(b"\t"):
            value = value[1:]  # "Name:\t%s": only the one tab is framing, the rest is the name
        values[fname] = conv(value, data, key)
    return Status(**values)  # type: ignore[arg-type]


# --- cmdline / environ -----------------------------------------------------------------------

def parse_cmdline(data: bytes) -> tuple[bytes, ...]:
    """Split <pid>/cmdline into argv.

    * Normal: arguments each end in NUL, so drop one trailing NUL and split (b"\\0" alone is
      argv == [""]).
    * Empty: zombies and kernel threads (no mm) and processes that zeroed their argv: ().
    * No trailing NUL: the process overwrote its argv area (setproctitle); get_mm_cmdline then
      stops at the first NUL or at arg_end. We keep what is there, split on NUL.
    * setproctitle often writes "nginx: worker process" as ONE space-separated string. psutil
      splits it on spaces (psutil#1179); we do not: a space inside a real argument is legal
      and splitting would invent arguments. It stays one element.
    """
    if not data:
        return ()
    if data.endswith(b"\0"):
        data = data[:-1]
    return tuple(data.split(b"\0"))


# Keys whose values are secrets often enough to never leave the host. Substring match on the
# upper-cased key: over-redaction (XAUTHORITY, KEYBOARD) is the cheap direction to be wrong in.
# Not CERT: SSL_CERT_FILE and friends name public CA bundles.
SECRET_KEY_MARKERS = (
    b"PASS",  # PASSWORD, PASSWD, PASSPHRASE, PGPASS
    b"SECRET",
    b"TOKEN",
    b"KEY",
    b"CREDENTIAL",
    b"AUTH",
    b"PRIVATE",
    b"COOKIE",
    b"SIGNATURE",
)
REDACTED = b"<redacted>"
# scheme://user:password@host in any value (DATABASE_URL, HTTP_PROXY ...). Found from each
# "://" rather than by one regex search: `[A-Za-z][A-Za-z0-9+.-]*://...` retried every start
# position over a run of scheme characters, quadratic in the value (0.64 s for 32,000 letters
# here; an environment value may be 128 KiB).
_SCHEME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+.-")
_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_USERINFO = re.compile(rb"[^/@:\s]*:[^/@\s]+@")


def has_url_with_password(value: bytes) -> bool:
    """Whether value holds scheme://user:password@ anywhere: a "://" whose run of scheme
    characters before it holds a letter (where a scheme may start), followed by user:password@.
    Each scan stops at the next "/" (the next "://" holds one), so the whole is linear."""
    i = value.find(b"://")
    while i >= 0:
        j = i - 1
        while j >= 0 and value[j] in _SCHEME_CHARS:
            if value[j] in _LETTERS:
                if _USERINFO.match(value, i + 3):
                    return True
                break
            j -= 1
        i = value.find(b"://", i + 3)
    return False


def is_secret_key(key: bytes) -> bool:
    upper = key.upper()
    return any(m in upper for m in SECRET_KEY_MARKERS)


def parse_environ(data: bytes, redact: bool = True) -> tuple[tuple[bytes, bytes], ...]:
    """Split <pid>/environ into (key, value) pairs, NUL-separated like cmdline.

    With ``redact`` (the default), values of secret-looking keys and values holding a URL with
    a password become b"<redacted>". An entry without "=" (a process may write anything into
    its environment block) is kept as (entry, b"").
    """
    if not data:
        return ()
    if data.endswith(b"\0"):
        data = data[:-1]
    out = []
    for entry in data.split(b"\0"):
        key, _, value = entry.partition(b"=")
        if redact and value and (is_secret_key(key) or has_url_with_password(value)):
            value = REDACTED
        out.append((key, value))
    return tuple(out)


# --- links -----------------------------------------------------------------------------------

_NS_LINK = re.compile(rb"([a-z_]+):\[([0-9]+)\]\Z")


def parse_ns_link(target: bytes) -> int:
    """b"net:[4026531993]" -> 4026531993 (ns_get_name in fs/nsfs.c prints "%s:[%u]")."""
    m = _NS_LINK.match(target)
    if m is None:
        raise ParseError("ns link: not 'name:[inode]'", target)
    return int(m.group(2))


@dataclass(frozen=True, slots=True)
class FdTarget:
    kind: str  # "file" | "pipe" | "socket" | "anon_inode" | "memfd" | "other"
    target: bytes  # with any " (deleted)" suffix removed
    inode: int | None = None
    deleted: bool = False


DELETED_SUFFIX = b" (deleted)"
MEMFD_PREFIX = b"/memfd:"
_BRACKET_INODE = re.compile(rb"(socket|pipe):\[([0-9]+)\]\Z")


def parse_fd_target(target: bytes) -> FdTarget:
    """Classify a readlink() of <pid>/fd/N (or exe, cwd).

    * b"socket:[123]", b"pipe:[123]": pipefs/sockfs d_dname, the inode joins with sock_diag.
    * b"anon_inode:[eventfd]", b"anon_inode:bpf-map": anon_inodefs.
    * b"/memfd:name (deleted)": memfd_create(2) files live on an unlinked shmem inode, so
      d_path always appends " (deleted)" (fs/d_path.c prepend_unreachable/d_path).
    * b"/path/file (deleted)": unlinked regular file; the suffix is stripped, ``deleted`` set.
      (A file really named "x (deleted)" is indistinguishable; that is a kernel ABI limit.)
    * anything else not starting with "/" (b"net:[4026531993]", b"[eventpoll]"): "other".
    """
    if not target:
        raise ParseError("fd target: empty", target)
    m = _BRACKET_INODE.match(target)
    if m is not None:
        return FdTarget(m.group(1).decode(), target, int(m.group(2)))
    if target.startswith(b"socket:") or target.startswith(b"pipe:"):
        raise ParseError("fd target: bad socket/pipe inode", target)
    if target.startswith(b"anon_inode:"):
        return FdTarget("anon_inode", target)
    deleted = target.endswith(DELETED_SUFFIX)
    path = target[: -len(DELETED_SUFFIX)] if deleted else target
    if path.startswith(MEMFD_PREFIX):
        return FdTarget("memfd", path, None, deleted)
    if path.startswith(b"/"):
        return FdTarget("file", path, None, deleted)
    return FdTarget("other", target)


# --- cgroup ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CgroupEntry:
    hierarchy: int  # 0 for the cgroup2 unified hierarchy
    controllers: tuple[bytes, ...]  # empty for cgroup2; b"name=systemd" for named v1
    path: bytes


def parse_cgroup(data: bytes) -> tuple[CgroupEntry, ...]:
    """Parse <pid>/cgroup: "hierarchy-ID:controller-list:cgroup-path" per line (cgroups(7)).
    The path may contain ":" so split at most twice."""
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        parts = line.split(b":", 2)
        if len(parts) != 3:
            raise ParseError("cgroup: not 'id:controllers:path'", line)
        hid = _int(parts[0], line, "cgroup hierarchy id")
        ctrls = tuple(c for c in parts[1].split(b",") if c)
        out.append(CgroupEntry(hid, ctrls, parts[2]))
    return tuple(out)


def primary_cgroup_path(entries: Sequence[CgroupEntry]) -> bytes | None:
    """The path to report: the cgroup2 one if present, else systemd's v1 one, else the first."""
    for e in entries:
        if e.hierarchy == 0 and not e.controllers:
            return e.path
    for e in entries:
        if b"name=systemd" in e.controllers:
            return e.path
    return entries[0].path if entries else None


_HEX64 = re.compile(rb"[0-9a-f]{64}\Z")
# Prefixes runtimes put in front of the id in systemd scope names:
# docker-<id>.scope (docker, systemd driver), cri-containerd-<id>.scope (containerd CRI),
# crio-<id>.scope (cri-o), libpod-<id>.scope (podman); cgroupfs drivers use the bare id:
# /docker/<id>, /kubepods/burstable/pod<uid>/<id>, /libpod_parent/libpod-<id>, /default/<id>.
_RUNTIME_PREFIXES = (b"docker-", b"cri-containerd-", b"crio-", b"libpod-", b"containerd-")


def container_id_from_cgroup(paths: Iterable[bytes]) -> str | None:
    """The 64-hex container id found in a cgroup path, or None (not in a container).

    Components are tried from innermost to outermost, so a container nested in another
    (docker-in-docker, podman's ".../libpod-<id>.scope/container") yields the innermost id
    that names a container. "conmon" scopes belong to podman's/cri-o's monitor process, not to
    the container, and are skipped.
    """
    for path in paths:
        for comp in reversed(path.split(b"/")):
            if not comp or b"conmon" in comp:
                continue
            if comp.endswith(b".scope"):
                comp = comp[: -len(b".scope")]
            for prefix in _RUNTIME_PREFIXES:
                if comp.startswith(prefix):
                    comp = comp[len(prefix) :]
                    break
            if _HEX64.match(comp):
                return comp.decode("ascii")
    return None


# --- maps / mountinfo / loginuid -------------------------------------------------------------

def parse_maps(data: bytes) -> tuple[bytes, ...]:
    """Distinct file paths mapped by a process, in first-seen order, from <pid>/maps.

    Line: "address perms offset dev inode [pathname]" (proc(5)); the pathname is padded with
    spaces and may contain spaces, so split the first five fields only. Pseudo-paths ([heap],
    [stack], [vdso], anonymous) are dropped; " (deleted)" is kept: a deleted library still
    mapped is exactly what an upgrade-without-restart or a dropped payload looks like.
    """
    seen: dict[bytes, None] = {}
    for line in data.split(b"\n"):
        if not line:
            continue
        parts = line.split(None, 5)
        if len(parts) < 5 or b"-" not in parts[0]:
            raise ParseError("maps: short line", line)
        if len(parts) == 6:
            path = parts[5].lstrip(b" ")
            if path.startswith(b"/"):
                seen[path] = None
    return tuple(seen)


@dataclass(frozen=True, slots=True)
class MountSummary:
    mount_point: bytes  # octal-escaped by the kernel (space is "\\040"), so never contains " "
    fstype: bytes

    def render(self) -> bytes:
        return self.mount_point + b" " + self.fstype


def parse_mountinfo(data: bytes) -> tuple[MountSummary, ...]:
    """Mount point and filesystem type of each line of <pid>/mountinfo.

    "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw" (proc(5)): field 5 is the
    mount point, then a variable number of optional fields end at "-", then the fstype.
    """
    return tuple(MountSummary(parts[4], fstype) for parts, fstype in _mountinfo_lines(data))


@dataclass(frozen=True, slots=True)
class Cgroup2Mount:
    """A cgroup2 mount from mountinfo, both paths unescaped (they may hold any byte but NUL)."""

    root: bytes  # field 4: the cgroup shown at the top of the mount ("/" unless a bind or cgroupns)
    mount_point: bytes  # field 5: where it is, in the reader's mount namespace


_MOUNT_ESCAPE = re.compile(rb"\\([0-7]{3})")


def unescape_mount_path(field: bytes) -> bytes:
    """Undo the escaping of show_mountinfo() (fs/proc_namespace.c): seq_dentry() and
    seq_path_root() pass " \\t\\n\\\\" to mangle_path() (fs/seq_file.c), which writes each of
    those bytes as a backslash and three octal digits."""
    return _MOUNT_ESCAPE.sub(lambda m: bytes((int(m.group(1), 8) & 0xFF,)), field)


def parse_cgroup2_mounts(data: bytes) -> tuple[Cgroup2Mount, ...]:
    """The cgroup2 mounts of a mountinfo file, in file order (see parse_mountinfo for the
    line format)."""
    return tuple(Cgroup2Mount(unescape_mount_path(parts[3]), unescape_mount_path(parts[4]))
                 for parts, fstype in _mountinfo_lines(data) if fstype == b"cgroup2")


def _mountinfo_lines(data: bytes):
    for line in data.split(b"\n"):
        if not line:
            continue
        parts = line.split(b" ")
        try:
            sep = parts.index(b"-", 6)
        except ValueError:
            raise ParseError("mountinfo: no ' - ' separator", line) from None
        if sep + 1 >= len(parts):
            raise ParseError("mountinfo: no fstype", line)
        yield parts, parts[sep + 1]


def parse_loginuid(data: bytes) -> int | None:
    """<pid>/loginuid or <pid>/sessionid: a decimal u32; 4294967295 means never set (a daemon
    not started from a login session), which we report as None."""
    value = _int(data.strip(), data, "loginuid")
    if value < 0 or value > AUDIT_UNSET:
        raise ParseError("loginuid: out of u32 range", data)
    return None if value == AUDIT_UNSET else value


def parse_comm(data: bytes) -> bytes:
    """<pid>/comm or task/<tid>/comm: the name plus a newline (proc_task_name)."""
    return data[:-1] if data.endswith(b"\n") else data
