"""Built-in detections that Sigma cannot express: they need state across events, a join
between processes, the host's account database, or a live look at another process.

Each Behaviour has a RuleInfo like a Sigma rule (README.md lists them with the YAML ones) and an
`observe(ev, view, probe)` that returns (rule, the event the alert is about, matched fields)
for each alert, or None.
State is bounded (OrderedDicts trimmed to a size) so a hostile workload cannot grow it.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import posixpath
import pwd
import re
import time
from collections import OrderedDict
from typing import Any

from monitor.detect.fields import View, attr
from monitor.events import RuleInfo
from userspace.procfs import DEFAULT_ROOT, ProcFS, ProcFSError

PROC_PREFIX = DEFAULT_ROOT + "/"  # execs through <procfs>/self/fd/N, as passed to execve
FILE = "monitor/detect/behaviour.py"
AUTHOR = "procsentry"
SHELLS = frozenset(("sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "pdksh", "csh", "tcsh",
                    "fish", "ash", "busybox", "rbash", "yash"))
_INTERP = re.compile(r"(python[0-9.]*|perl[0-9.]*|ruby[0-9.]*|php[0-9.]*|lua[0-9.]*|node|nodejs|"
                     r"tclsh[0-9.]*|expect|irb|pwsh|awk|gawk|mawk|nawk)\Z")
NET_TOOLS = frozenset(("nc", "ncat", "netcat", "nc.openbsd", "nc.traditional", "socat", "telnet",
                       "openssl", "cryptcat", "pwncat"))
Hit = tuple[RuleInfo, Any, dict]


def _info(n: int, title: str, level: str, tags: tuple[str, ...], refs: tuple[str, ...] = ()) -> RuleInfo:
    return RuleInfo(id=f"5e27c0de-0000-4000-8000-{n:012d}", title=title, level=level,
                    status="experimental", author=AUTHOR, tags=tags, references=refs,
                    source="builtin", file=FILE)


def _base(path: str | None) -> str:
    return path.rsplit("/", 1)[-1] if path else ""


@functools.lru_cache(maxsize=4096)
def _program_kind(name: str) -> str | None:
    """"shell", "interpreter", "net" (a network tool) or None, by executable basename: asked
    for every exec, so remembered per name (a regex match costs more than the lookup)."""
    if name in SHELLS:
        return "shell"
    if _INTERP.match(name):
        return "interpreter"
    return "net" if name in NET_TOOLS else None


def _fd_map(ev) -> dict[int, str]:
    """fd number -> target text as procfs shows it ("socket:[123]", "pipe:[9]", "/dev/pts/3"):
    from proc.fds when procfs was read (--enrich full), else from what the kernel captured at
    exec for fds 0-2 (`stdio`), which is exact even for a process already gone."""
    fds = attr(attr(ev, "proc"), "fds")
    out = {}
    if fds:
        for item in fds:
            n, _, target = item.partition(":")
            if n.isdigit():
                out[int(n)] = target
        return out
    for s in attr(ev, "stdio") or ():
        kind, inode = attr(s, "kind"), attr(s, "inode")
        if kind in ("socket", "pipe") and inode is not None:
            out[attr(s, "fd")] = f"{kind}:[{inode}]"
        elif kind == "tty" and attr(s, "dev"):
            major, _, minor = attr(s, "dev").partition(":")
            if major.isdigit() and minor.isdigit() and 136 <= int(major) <= 143:  # UNIX98 ptys
                out[attr(s, "fd")] = f"/dev/pts/{(int(major) - 136) * 256 + int(minor)}"
    return out


def _kernel_inet_stdio(ev) -> list[dict]:
    """fds 0-2 that the kernel saw as TCP/UDP sockets at exec (`stdio`), remote unknown."""
    return [{"fd": attr(s, "fd"), "inode": attr(s, "inode"), "protocol": attr(s, "protocol"),
             "remote": None}
            for s in attr(ev, "stdio") or ()
            if attr(s, "kind") == "socket" and attr(s, "family") in ("inet", "inet6")
            and attr(s, "protocol") in ("tcp", "udp")]


def _pipe(target: str | None) -> int | None:
    if target and target.startswith("pipe:[") and target.endswith("]"):
        return int(target[6:-1])
    return None


def _reads_commands(argv) -> bool:
    """A shell that takes its commands from stdin or a terminal: `sh`, `sh -i`, `bash -s`,
    not `sh -c CMD` and not `sh script`."""
    if not argv:
        return False
    args = list(argv[1:])
    if any(a == "-c" or (a.startswith("-") and not a.startswith("--") and "c" in a[1:]) for a in args):
        return False
    return all(a.startswith("-") or a.startswith("+") for a in args) or "-i" in args or "-s" in args


def _start_ticks(exec_id: str | None) -> int | None:
    try:
        return int(exec_id.split(":")[1]) if exec_id else None
    except (IndexError, ValueError):
        return None


class Behaviour:
    """When the engine calls observe: for the execs of the basenames it `wants` (asked once per
    basename); for any exec while `pending` is non-zero (state that any program may complete:
    a downloaded file made executable; only behaviours that `can_pend` keep it); for any exec
    that has the `trigger` field; and for exits only if it `sees_exits` (every exit, or only
    while `pending` for one that `can_pend`). Most execs call no behaviour that does not look
    at every process."""

    info: RuleInfo
    sees_exits = False  # called for exit events too (view None): only state across exits needs it
    trigger: str | None = None  # an event field whose presence makes any exec matter
    can_pend = False  # keeps state that any exec may complete (then it keeps `pending`)
    pending = 0  # kept by the behaviour: how much state it holds that any event may complete

    def wants(self, base: str) -> bool:
        """Whether process events of executables with this (lower-cased) basename can matter:
        asked once per basename (the engine remembers the answer)."""
        return True

    def observe(self, ev: Any, view: View | None, probe) -> list[Hit] | None:
        """The alerts this event raises (None or empty: none). A list, not a generator: this is
        called for most execs and nearly always returns nothing, which a plain return does
        for less than creating and exhausting a generator."""
        raise NotImplementedError


class ReverseShell(Behaviour):
    """A shell or interpreter talking to the network on its standard descriptors:
    (a) its own fd 0/1/2 is a TCP/UDP socket (bash `>& /dev/tcp/...`, `socat exec:sh`);
    (b) a shell on a terminal whose parent has a TCP/UDP socket on fd 0/1/2 (python pty.spawn:
        the socket is the parent's, the shell gets the pty), checked live through the probe;
    (c) a shell reading commands from stdin joined by a pipe to a network tool (the mkfifo +
        `nc` pattern: `cat f | sh -i 2>&1 | nc host port > f`). The two execs arrive in either
        order; pipes seen on the other side are remembered for a while (bounded);
    (d) a shell reading commands, started by a network tool that holds a TCP/UDP socket on any
        fd (socat's exec: gives the shell a socketpair or a pty and relays), checked live."""

    info = _info(1, "Reverse shell: a shell or interpreter with its input/output on a network socket",
                 "critical", ("attack.execution", "attack.t1059.004"),
                 ("https://attack.mitre.org/techniques/T1059/004/",))
    PIPES_KEPT = 4096
    PIPE_TTL_S = 600.0

    def __init__(self) -> None:
        # pipe inode -> (side, event, monotonic time); side "shell" or "net"
        self._pipes: OrderedDict[int, tuple[str, Any, float]] = OrderedDict()
        # Socket inodes already reported: the shell's children (every command the attacker
        # types, and an interactive bash's .bashrc) inherit the socket; one alert per
        # connection, about the process that first had it, not one per command.
        self._reported: OrderedDict[int, None] = OrderedDict()

    def wants(self, base: str) -> bool:
        return _program_kind(base) is not None

    def _first(self, inodes: list[int]) -> bool:
        new = not any(i in self._reported for i in inodes)
        for i in inodes:
            self._reported[i] = None
            if len(self._reported) > self.PIPES_KEPT:
                self._reported.popitem(last=False)
        return new

    def observe(self, ev, view, probe):
        if view is None:
            return
        name = view.base
        kind = _program_kind(name)
        if kind is None:
            return
        is_shell = kind == "shell"
        fds = _fd_map(ev)
        if kind != "net":
            known = {attr(s, "fd"): s for s in (attr(attr(ev, "proc"), "sockets") or ())}
            socks = [{"fd": fd, "inode": attr(s, "inode"), "protocol": attr(s, "protocol"),
                      "remote": attr(s, "remote")}
                     for fd, s in known.items() if fd in (0, 1, 2) and attr(s, "protocol") in ("tcp", "udp")]
            unknown = [fd for fd in (0, 1, 2) if (fds.get(fd) or "").startswith("socket:") and fd not in known]
            if not socks and unknown and probe is not None:
                # The enricher's socket table is cached briefly; a socket connected just
                # before exec may not be in it. Look at this process now.
                for s in probe.std_inet_sockets(attr(ev, "pid"), attr(ev, "start_time")):
                    socks += [{"fd": fd, "inode": s["inode"], "protocol": s["protocol"], "remote": s["remote"]}
                              for fd in s["fds"]]
            if not socks:
                socks = _kernel_inet_stdio(ev)  # gone already, or procfs not read: the kernel's word
            if socks:
                if self._first([s["inode"] for s in socks]):
                    return [(self.info, ev, {"fds": [f"{s['fd']}:{fds.get(s['fd'], '')}" for s in socks],
                                             "remote": [s["remote"] for s in socks],
                                             "protocol": socks[0]["protocol"]})]
                return None  # else a descendant of a shell already reported: same connection
        if is_shell and probe is not None and (fds.get(0) or "").startswith("/dev/pts/"):
            ppid = attr(ev, "ppid")
            if ppid:
                socks = probe.std_inet_sockets(ppid, _start_ticks(attr(ev, "parent_exec_id")))
                if socks and self._first([s["inode"] for s in socks]):
                    return [(self.info, ev, {"fds": [f"0:{fds.get(0)}"], "parent_pid": ppid,
                                             "parent_exe": view.get("ParentImage"),
                                             "parent_sockets": socks})]
        reads = is_shell and _reads_commands(attr(ev, "argv"))
        if reads and probe is not None and _program_kind(_base(view.get("ParentImage")).lower()) == "net":
            # (d) a relay's shell: socat exec:sh (stdio a socketpair) or exec:sh,pty (a pty),
            # ncat --exec: the TCP socket is on any fd of the network tool that started it.
            ppid = attr(ev, "ppid")
            socks = probe.inet_sockets(ppid, _start_ticks(attr(ev, "parent_exec_id"))) if ppid else []
            if socks and self._first([s["inode"] for s in socks]):
                return [(self.info, ev, {"fds": [f"{fd}:{fds.get(fd, '')}" for fd in (0, 1, 2)],
                                         "parent_pid": ppid, "parent_exe": view.get("ParentImage"),
                                         "parent_sockets": socks})]
        side = "shell" if reads else (
            "net" if name in NET_TOOLS else None)
        if side is None:
            return
        now = time.monotonic()
        for fd in (0, 1):
            inode = _pipe(fds.get(fd))
            if inode is None:
                continue
            other = self._pipes.get(inode)
            if other is not None and other[0] != side and now - other[2] < self.PIPE_TTL_S:
                shell_ev, net_ev = (ev, other[1]) if side == "shell" else (other[1], ev)
                del self._pipes[inode]
                return [(self.info, shell_ev, {"pipe": f"pipe:[{inode}]",
                                               "network_tool": attr(net_ev, "exe"),
                                               "network_tool_pid": attr(net_ev, "pid"),
                                               "network_tool_argv": list(attr(net_ev, "argv") or ())})]
            self._pipes[inode] = (side, ev, now)
            if len(self._pipes) > self.PIPES_KEPT:
                self._pipes.popitem(last=False)


class ServiceAccountShell(Behaviour):
    """An account that cannot log in (a nologin/false shell in the account database) and is a
    system account (0 < uid < UID_MIN from /etc/login.defs) starts a shell that reads commands
    (interactive, or from stdin): what a web-shell or RCE hands an attacker."""

    info = _info(9, "Service account started an interactive shell", "high",
                 ("attack.execution", "attack.t1059.004"))

    def __init__(self) -> None:
        self.uid_min = _login_defs_uid_min()
        self._shells: dict[int, str | None] = {}

    def wants(self, base: str) -> bool:
        return base in SHELLS

    def _login_shell(self, uid: int) -> str | None:
        if uid not in self._shells:
            try:
                self._shells[uid] = pwd.getpwuid(uid).pw_shell
            except KeyError:
                self._shells[uid] = None
        return self._shells[uid]

    def observe(self, ev, view, probe):
        if view is None or view.base not in SHELLS:
            return
        uid = attr(ev, "uid")
        if uid is None or not 0 < uid < self.uid_min:
            return
        shell = self._login_shell(uid)
        if shell is None or _base(shell) not in ("nologin", "false", "sync", ""):
            return
        if _reads_commands(attr(ev, "argv")):
            return [(self.info, ev, {"uid": uid, "user": attr(ev, "user"), "login_shell": shell,
                                     "CommandLine": view.get("CommandLine")})]
        return None


def _login_defs_uid_min(path: str = "/etc/login.defs") -> int:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "UID_MIN" and parts[1].isdigit():
                    return int(parts[1])
    except OSError:
        pass
    return 1000


class DownloadChmodExec(Behaviour):
    """A file fetched by a download tool, made executable with chmod, then executed, within one
    audit session (sessionid; processes with none share one bucket), within an hour. Paths are
    resolved against each process's cwd."""

    info = _info(11, "Downloaded file made executable and run (download, chmod +x, exec)", "high",
                 ("attack.command_and_control", "attack.t1105"))
    DOWNLOADERS = frozenset(("curl", "wget", "wget2", "fetch", "tftp", "ftp", "aria2c", "scp",
                             "sftp", "rsync"))
    TTL_S = 3600.0
    KEPT = 4096
    can_pend = True

    def __init__(self) -> None:
        # (session, path) -> [state "downloaded"|"executable", download exec_id, downloader, time]
        self._files: OrderedDict[tuple[Any, str], list] = OrderedDict()
        self.pending = 0  # entries in state "executable": then any exec may be one of them

    def wants(self, base: str) -> bool:
        return base in self.DOWNLOADERS or base == "chmod" or base in MULTICALL_APPLETS

    def observe(self, ev, view, probe):
        if view is None:
            return
        name = view.base
        if name not in self.DOWNLOADERS and name != "chmod" and name not in MULTICALL_APPLETS \
                and not self.pending:
            return  # the common case: nothing downloaded and made executable is pending
        if attr(ev, "event") != "exec":
            return
        full = argv = attr(ev, "argv") or ()
        name, argv = _applet(name, argv)  # busybox wget / chmod, or through a link so named
        if name not in self.DOWNLOADERS and name != "chmod" and not self.pending:
            return  # another applet (on Alpine, every sh, ls, cat ... is one)
        cwd = attr(ev, "cwd") or "/"
        session = attr(ev, "sessionid")
        now = time.monotonic()
        if name in self.DOWNLOADERS:
            for path in _download_targets(name, argv):
                self._remember((session, _abs(cwd, path)), ["downloaded", attr(ev, "exec_id"),
                                                            " ".join(full), now])
            return
        if name == "chmod" and len(argv) >= 3 and _adds_exec(argv[1:]):
            for a in argv[1:]:
                if a.startswith("-") or _MODE.match(a):
                    continue
                st = self._files.get((session, _abs(cwd, a)))
                if st is not None and st[0] != "executable" and now - st[3] < self.TTL_S:
                    # (once: a second chmod counted it twice in `pending`, which then never
                    # came back to 0, and every exec was shown to this behaviour for good)
                    st[0] = "executable"
                    st.append(" ".join(full))
                    self.pending += 1
            return
        for path in {p for p in (attr(ev, "exe"), attr(ev, "filename")) if p}:
            key = (session, _abs(cwd, path))
            st = self._files.get(key)
            if st is not None and st[0] == "executable" and now - st[3] < self.TTL_S:
                del self._files[key]
                self.pending -= 1
                return [(self.info, ev, {"file": key[1], "downloaded_by": st[2], "chmod": st[4],
                                         "download_exec_id": st[1]})]
        return None

    def _remember(self, key, value) -> None:
        old = self._files.pop(key, None)
        if old is not None and old[0] == "executable":
            self.pending -= 1
        self._files[key] = value
        if len(self._files) > self.KEPT:
            _, dropped = self._files.popitem(last=False)
            if dropped[0] == "executable":
                self.pending -= 1


# (`[-+=]`: written `[+-=]`, it was the range + to =, digits, "," "." "/" included, so an
# operand such as a/x passed for a mode and was never tracked as the file made executable)
_MODE = re.compile(r"[0-7]{3,4}\Z|[ugoa]*[-+=][rwxXstugo]+(,[ugoa]*[-+=][rwxXstugo]+)*\Z")


def _adds_exec(args) -> bool:
    for a in args:
        if re.fullmatch(r"[0-7]{3,4}", a):
            return any(int(d) & 1 for d in a[-3:])
        if _MODE.match(a) and "+" in a and "x" in a.split("+", 1)[1]:
            return True
        if _MODE.match(a) and "=" in a and "x" in a.split("=", 1)[1]:
            return True
    return False


def _abs(cwd: str, path: str) -> str:
    return posixpath.normpath(path if path.startswith("/") else posixpath.join(cwd, path))


# Short options that take a value, per tool (curl 7.88 / wget 1.21 --help): in a cluster such
# as curl's -sSLo FILE or wget's -qO FILE the first of these takes the rest of the cluster, or
# the next argument when it ends the cluster. (wget's -nv/-nc/-nd are -n with a value.)
_SHORT_WITH_VALUE = {
    "curl": frozenset("AbcCdDeEFhHKmoPQrtTuUwxXyYz"),
    "wget": frozenset("aABDeiIlnoOPQRtTUwX"),
}
_SHORT_WITH_VALUE["wget2"] = _SHORT_WITH_VALUE["wget"]
MULTICALL_APPLETS = frozenset(("busybox", "toybox"))


def _applet(name: str, argv) -> tuple[str, Any]:
    """(tool, argv as the tool reads it) for a multi-call binary: an applet run through a link
    named after it (Alpine's /usr/bin/wget -> /bin/busybox) or as `busybox wget ...`."""
    if name in MULTICALL_APPLETS and argv:
        a0 = _base(argv[0]).lower()
        if a0 not in MULTICALL_APPLETS:
            return a0, argv
        if len(argv) > 1:
            return _base(argv[1]).lower(), argv[1:]
    return name, argv


def _options(tool: str, argv) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(option, value) pairs and the operands of a curl/wget command line: short clusters
    split (-fsSLO is -f -s -S -L -O), long options with `=value` or a following value."""
    with_value = _SHORT_WITH_VALUE.get(tool, frozenset())
    long_with_value = ("--output", "--output-dir", "--output-document", "--directory-prefix")
    opts: list[tuple[str, str | None]] = []
    operands: list[str] = []
    i, n = 1, len(argv)
    while i < n:
        a = argv[i]
        i += 1
        if a == "--":
            operands += argv[i:]
            break
        if a.startswith("--"):
            name, eq, value = a.partition("=")
            if not eq and name in long_with_value and i < n:
                value = argv[i]
                i += 1
            opts.append((name, value if (eq or name in long_with_value) else None))
        elif a.startswith("-") and len(a) > 1:
            for j in range(1, len(a)):
                c = a[j]
                if c in with_value:
                    value = a[j + 1:]
                    if not value and i < n:
                        value = argv[i]
                        i += 1
                    opts.append(("-" + c, value))
                    break
                opts.append(("-" + c, None))
        else:
            operands.append(a)
    return opts, operands


def _download_targets(tool: str, argv) -> list[str]:
    """Where the tool writes: -o/-O/--output/--output-document values (in option clusters
    too), or the URL's basename (curl -O, wget without -O) under --output-dir/-P."""
    if tool in ("scp", "rsync"):
        return [argv[-1]] if len(argv) > 2 and argv[-1] not in ("", "-") else []
    out: list[str] = []
    remote_name = tool in ("wget", "wget2")  # wget names the file after the URL by default
    prefix = ""
    opts, operands = _options(tool, argv)
    for opt, value in opts:
        if tool == "curl":
            if opt in ("-o", "--output") and value:
                out.append(value)
            elif opt in ("-O", "--remote-name", "--remote-name-all"):
                remote_name = True
            elif opt == "--output-dir" and value:
                prefix = value
        elif tool in ("wget", "wget2"):
            if opt in ("-O", "--output-document") and value:
                out.append(value)
                remote_name = False
            elif opt in ("-P", "--directory-prefix") and value:
                prefix = value
    if tool == "curl" and prefix:
        out = [p if p.startswith("/") or p == "-" else posixpath.join(prefix, p) for p in out]
    if remote_name:
        names = [u.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
                 for u in operands if "://" in u]
        out += [posixpath.join(prefix, b) if prefix else b for b in names if b and "://" not in b]
    return [p for p in out if p and p != "-"]


# Trees only root can write to, so no user can mount a filesystem there (FUSE needs a mountpoint
# the user may write to): argv[0] under them is resolved even where the dentry cache lacks it.
_SYSTEM_TREES = ("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/usr/lib/", "/usr/lib64/",
                 "/usr/libexec/", "/usr/games/", "/lib/", "/lib64/", "/etc/alternatives/")
# 437 on the architectures of the unified syscall table (5.6); alpha, ia64 and mips number it
# otherwise, and there no cached-only walk is tried.
_SYS_OPENAT2 = 437 if platform.machine() in ("x86_64", "aarch64", "riscv64", "s390x", "ppc64le",
                                             "ppc64", "armv7l", "armv6l", "i686", "loongarch64") else None
_RESOLVE_CACHED = 0x20  # include/uapi/linux/openat2.h, Linux 5.12
_AT_FDCWD = -100


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_PROCFS = ProcFS()  # where an O_PATH descriptor's path is read back (<procfs>/self/fd/N)
_cached_walks = [True]  # False once the kernel has said it has no RESOLVE_CACHED


def _open_cached(path: str) -> int:
    """open(path, O_PATH) from the dentry cache alone (openat2 RESOLVE_CACHED): BlockingIOError
    where some component would have to be looked up in its filesystem. A lookup in a FUSE
    filesystem waits for its daemon, and any user can mount one and name a path in it as
    argv[0]: the monitor's single thread would wait as long as that user likes."""
    if _cached_walks[0] and _SYS_OPENAT2 is not None:
        how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_CACHED)
        fd = _libc.syscall(_SYS_OPENAT2, _AT_FDCWD, os.fsencode(path), ctypes.byref(how),
                           ctypes.sizeof(how))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.E2BIG):
            raise OSError(err, os.strerror(err), path)  # EAGAIN: BlockingIOError
        _cached_walks[0] = False  # before 5.12 (5.6 for openat2): no walk that cannot block
    raise BlockingIOError(errno.EAGAIN, "no cached-only lookups in this kernel", path)


@functools.lru_cache(maxsize=1024)
def _realpath(path: str) -> str:
    """Where the kernel's own walk of `path` leads (else of its directory, for a name the host
    lacks), else the path normalised: one open(O_PATH) and one readlink. argv[0] is any user's
    text, up to 32 KiB, and os.path.realpath lstat()s every prefix of it, each a walk from the
    root: through a deep directory that links to itself, ~2 s per exec. The kernel's walk is
    bounded (PATH_MAX, 40 symlinks); O_PATH opens nothing (no FIFO or device is opened).
    Outside the system trees the walk must not reach a filesystem at all (see _open_cached):
    a path not wholly in the dentry cache there stays unresolved (normalised)."""
    norm = posixpath.normpath(path)
    system = norm.startswith(_SYSTEM_TREES)
    head, tail = (norm if system else path), ""
    for _ in range(2):
        try:
            fd = os.open(head, os.O_PATH | os.O_CLOEXEC) if system else _open_cached(head)
        except BlockingIOError:
            return norm
        except (OSError, ValueError):
            head, _, name = head.rpartition("/")
            head, tail = head or "/", "/" + name
            continue
        try:
            return (os.fsdecode(_PROCFS.readlink("self", f"fd/{fd}")).rstrip("/") + tail) or "/"
        except ProcFSError:
            break
        finally:
            os.close(fd)
    return norm


class Argv0Mismatch(Behaviour):
    """argv[0] names a different program than the one executed (`exec -a sshd payload`), the
    usual way to hide in a process list. Symlinks (python3 -> python3.11), login shells
    (`-bash`), multi-call binaries and paths given as /dev/fd/N are not mismatches."""

    info = _info(20, "Process name (argv[0]) does not match the executable", "medium",
                 ("attack.defense_evasion", "attack.t1036.005"))
    MULTICALL = frozenset(("busybox", "toybox", "systemd", "coreutils", "sudo", "su", "ld.so"))

    def wants(self, base: str) -> bool:
        return base not in self.MULTICALL and not base.startswith("ld-linux")

    def observe(self, ev, view, probe):
        # ev is a record or a Replayed (the engine's as_record): top-level fields as attributes
        if view is None or ev.event != "exec":
            return None
        argv, exe, filename = ev.argv, ev.exe, ev.filename
        if not argv or not exe or not filename or ev.exe_fileless or argv[0] == filename:
            # The last: argv[0] is the very path executed (as execvp passes it), whatever the
            # executable it leads to: a symlink's name is not a mismatch (the name checks
            # below decided the same, except for a name starting with "-", stripped from
            # argv[0] as a login shell's mark but not from the path).
            return None
        a0 = _base(argv[0]).lstrip("-")
        if not a0 or filename.startswith(("/dev/fd/", PROC_PREFIX)):
            return  # fexecve and friends: the path names a descriptor, not a program
        exe_name = view.base  # the engine's lower-cased basename of exe
        if exe_name in self.MULTICALL or exe_name.startswith("ld-linux"):
            return
        a0l = a0.lower()
        # python3 -> python3.11, vi -> vim.basic, x.sh run as x: one is a prefix of the other
        if exe_name.startswith(a0l) or a0l.startswith(exe_name):
            return
        nl = _base(filename).lower()
        if nl.startswith(a0l) or a0l.startswith(nl):
            return
        # Only now the filesystem (realpath costs a syscall per path component): most execs
        # were decided by their names above.
        if argv[0].startswith("/"):
            real = _realpath(argv[0])
            # /bin/sh -> /usr/bin/dash; and #! scripts, whose argv[0] the kernel sets to the
            # interpreter named on the #! line (argv = [interpreter, script, args...]). In a
            # chroot (debootstrap, a build root) the same path leads to <root>/usr/bin/dash:
            # argv[0] is resolved here on the host's root, the executable's path is the host's.
            if real == exe or (real.startswith("/") and exe.endswith(real)):
                return
        return [(self.info, ev, {"argv0": argv[0], "filename": filename, "Image": exe})]


class ArgvRewritten(Behaviour):
    """procfs showed another argv moments after exec than the kernel captured at exec (the
    event's differs.argv): the process may have overwritten its own command line. A process
    that exec'd again before enrichment (`bash -c 'exec x'`, env -> bash) shows another argv
    too, and its next exec event arrives after this one (with the same exec_id: exec keeps the
    start time), so the decision waits CONFIRM_S: a later exec or the exit of the process
    cancels it; otherwise, on the first event observed after CONFIRM_S, the alert is raised if
    the process still runs the same executable (live probe). Replay has no
    live processes: this rule cannot fire there. Daemons that set their title (nginx,
    postgres, sshd) do this legitimately, hence low."""

    info = _info(21, "Command line rewritten after exec", "low",
                 ("attack.defense_evasion", "attack.t1036"))
    CONFIRM_S = 1.0
    KEPT = 1024

    sees_exits = True  # an exit ends what is pending for the process
    trigger = "differs"  # procfs disagreed with the kernel about something
    can_pend = True  # a rewrite waiting to be confirmed by the next event after CONFIRM_S

    def __init__(self) -> None:
        self._pending: OrderedDict[str, tuple[Any, float]] = OrderedDict()

    def wants(self, base: str) -> bool:
        return False  # any executable, but only with `differs` (trigger) or while pending

    def observe(self, ev, view, probe):
        try:
            return self._observe(ev, probe)
        finally:
            self.pending = len(self._pending)

    def _observe(self, ev, probe):
        if probe is None or (not self._pending and attr(ev, "differs") is None):
            return
        now = time.monotonic()
        hits = []
        exec_id, kind = attr(ev, "exec_id"), attr(ev, "event")
        if exec_id in self._pending and kind in ("exec", "exit"):
            # Re-exec: not a rewrite. Exit: the executable can no longer be checked.
            del self._pending[exec_id]
        while self._pending:
            first_id, (pending, t) = next(iter(self._pending.items()))
            if now - t < self.CONFIRM_S:
                break
            del self._pending[first_id]
            if probe.exe(attr(pending, "pid"), attr(pending, "start_time")) == attr(pending, "exe"):
                hits.append((self.info, pending, {"argv_at_exec": list(attr(pending, "argv")),
                                                  "argv_now": list(attr(attr(pending, "differs"), "argv"))}))
        if kind == "exec" and attr(attr(ev, "differs"), "argv") and attr(ev, "exe") and attr(ev, "argv"):
            self._pending[exec_id] = (ev, now)
            if len(self._pending) > self.KEPT:
                self._pending.popitem(last=False)
        return hits


def builtin() -> list[Behaviour]:
    return [ReverseShell(), ServiceAccountShell(), DownloadChmodExec(), Argv0Mismatch(), ArgvRewritten()]

