"""ProcFS: the one place that knows the /proc layout and turns OSErrors into three exceptions.

Everything else in procsentry asks this class for "<pid>/stat" or "<pid>/fd"; nothing else
builds a /proc path (a test greps for the literal). The root is a value, so tests point it at
a fixture tree and a container deployment points it at the host's /proc (prometheus/procfs
``FS``; psutil ``get_procfs_path``; falco ``HOST_ROOT``).

Error map (psutil ``_pslinux.wrap_exceptions``), applied in ``_error`` and nowhere else:

* ENOENT or ESRCH while /proc/<pid> itself is gone     -> ``ProcessGone``
* EACCES / EPERM                                       -> ``AccessDenied``
* ENOENT/ESRCH while /proc/<pid> still exists, others   -> ``Unavailable`` (the file is not on
  this kernel, a collection entry such as fd/7 or task/42 went away under us, or the task has
  no mm: ESRCH from environ of a kernel thread)
* bytes a parser does not understand                    -> ``ParseError`` (path + excerpt)
"""
from __future__ import annotations

import errno
import os
from typing import Callable, TypeVar, Union

DEFAULT_ROOT = "/proc"

# prometheus/procfs internal/util/readfile.go ReadFileNoStat: /proc files report st_size 0 (or
# a fake 4096), so read until EOF instead of trusting stat, but never more than this.
MAX_READ = 1 << 20
_CHUNK = 1 << 16

# Files whose whole content one read(2) returns when the buffer is large enough: single_open
# seq_files (proc_single_show: stat, status, cgroup...; seq_read_iter retries the one show()
# with a larger buffer until it fits, then copies out at most the count asked for) and the
# page loops of cmdline/environ (get_mm_cmdline, environ_read loop until count or the end).
# A short first read of these is the whole file: no second read(2) to see EOF (one syscall
# less per file, on the per-exec path). Multi-record seq_files (maps, mountinfo) stop at a
# buffer's worth and are read to EOF.
_SINGLE_READ = frozenset((b"stat", b"status", b"statm", b"cgroup", b"cmdline", b"environ",
                          b"loginuid", b"sessionid", b"comm"))

T = TypeVar("T")
Pid = Union[int, str]  # an int, or "self" / "thread-self"
Name = Union[str, bytes]


class ProcFSError(Exception):
    """Base of everything ProcFS raises; ``path`` is the file involved (bytes), if known."""

    def __init__(self, message: str, path: bytes | None = None) -> None:
        super().__init__(message)
        self.path = path


class ProcessGone(ProcFSError):
    """The process exited (and was reaped) or never existed."""


class AccessDenied(ProcFSError):
    """EACCES/EPERM: e.g. fd/ or environ of another user's process without CAP_SYS_PTRACE."""


class Unavailable(ProcFSError):
    """The process lives, but this file/entry does not exist or could not be read."""

    def __init__(self, message: str, path: bytes | None = None, errno_: int | None = None) -> None:
        super().__init__(message, path)
        self.errno = errno_


class ParseError(ProcFSError):
    """Bytes that a parser did not understand. ``excerpt`` is at most 64 bytes of the input."""

    EXCERPT = 64

    def __init__(self, message: str, data: bytes = b"", path: bytes | None = None) -> None:
        super().__init__(message, path)
        self.excerpt = bytes(data[: self.EXCERPT])

    def __str__(self) -> str:
        where = f" in {self.path!r}" if self.path is not None else ""
        return f"{self.args[0]}{where}: {self.excerpt!r}"


def default_root(environ: dict[str, str] | None = None) -> str:
    """/proc, or $HOST_ROOT/proc when running in a container with the host's / mounted (falco)."""
    env = os.environ if environ is None else environ
    host_root = env.get("HOST_ROOT")
    if host_root:
        return os.path.join(host_root, DEFAULT_ROOT.lstrip("/"))
    return DEFAULT_ROOT


class ProcFS:
    """A procfs mount point. ``clock_ticks`` and ``page_size`` are attributes so that fixture
    trees recorded on another machine can say what they were recorded with."""

    clock_ticks: int = os.sysconf("SC_CLK_TCK")
    page_size: int = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root
        self._root_b = os.fsencode(root)
        self._boot_id: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r})"

    # -- paths ------------------------------------------------------------------------------
    def path(self, pid: Pid | None, name: Name = b"") -> bytes:
        """root/<pid>/<name>, or root/<name> when pid is None. Bytes: targets need not be UTF-8."""
        if isinstance(name, str):
            name = name.encode()
        if pid is None:
            return self._root_b + b"/" + name if name else self._root_b
        base = b"%s/%s" % (self._root_b, str(pid).encode())
        return base + b"/" + name if name else base

    # -- the error map ------------------------------------------------------------------------
    def _error(self, exc: OSError, pid: Pid | None, path: bytes) -> ProcFSError:
        code = exc.errno
        if code in (errno.EACCES, errno.EPERM):
            return AccessDenied(f"access denied: {exc.strerror}", path)
        if code in (errno.ENOENT, errno.ESRCH) and (pid is None or not self.exists(pid)):
            # psutil: ENOENT means the *process* is gone only if its directory is gone too;
            # otherwise just this file is missing (a zombie's exe, ns/time before 5.6).
            # ESRCH likewise: mm_access() (kernel/fork.c) answers ESRCH for a task without an
            # mm, so opening environ of a live kernel thread or zombie fails with ESRCH.
            if pid is not None:
                return ProcessGone(f"process {pid} gone", path)
        return Unavailable(f"{exc.strerror}", path, code)

    # -- primitives (FaultyProcFS in the tests overrides these three) -------------------------
    def read_bytes(self, pid: Pid | None, name: Name, limit: int = MAX_READ) -> bytes:
        """The whole file, binary, one open, at most ``limit`` bytes (silently truncated)."""
        if isinstance(name, str):
            name = name.encode()
        path = self.path(pid, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._error(exc, pid, path) from None
        try:
            # seq_file (mountinfo, maps) hands out at most one buffer per read(2): loop to EOF.
            want = min(_CHUNK, limit)
            first = os.read(fd, want)
            if not first:
                return b""
            if len(first) < want and pid is not None and name in _SINGLE_READ:
                return first
            chunks = [first]
            total = len(first)
            while total < limit:
                chunk = os.read(fd, min(_CHUNK, limit - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            return first if len(chunks) == 1 else b"".join(chunks)
        except OSError as exc:
            # ESRCH from read(2) of cmdline/environ once the mm is torn down (proc_pid_cmdline_read)
            raise self._error(exc, pid, path) from None
        finally:
            os.close(fd)

    def readlink(self, pid: Pid | None, name: Name) -> bytes:
        path = self.path(pid, name)
        try:
            return os.readlink(path)
        except OSError as exc:
            raise self._error(exc, pid, path) from None

    def getxattr(self, pid: Pid | None, name: Name, attr: str) -> bytes:
        path = self.path(pid, name)
        try:
            return os.getxattr(path, attr)
        except OSError as exc:
            raise self._error(exc, pid, path) from None

    def listdir(self, pid: Pid | None, name: Name = b"") -> list[bytes]:
        path = self.path(pid, name)
        try:
            return os.listdir(path)
        except OSError as exc:
            raise self._error(exc, pid, path) from None

    # -- helpers built on the primitives ----------------------------------------------------
    def read_parsed(self, pid: Pid | None, name: Name, parser: Callable[[bytes], T]) -> T:
        """read_bytes + parser; a ParseError gets the path filled in."""
        data = self.read_bytes(pid, name)
        try:
            return parser(data)
        except ParseError as exc:
            exc.path = self.path(pid, name)
            raise

    def exists(self, pid: Pid) -> bool:
        """Does root/<pid> exist? A zombie's directory does; a reaped process's does not."""
        return os.path.exists(self.path(pid))

    def pids(self) -> list[int]:
        """Numeric entries of the root: thread-group leaders only (tids are hidden from
        readdir, though root/<tid> is reachable by name; proc_pid_readdir)."""
        return [int(n) for n in self.listdir(None) if n.isdigit()]

    def boot_id(self) -> str:
        """sys/kernel/random/boot_id under the root: a UUID that changes at every boot, so
        ProcKeys from different boots never collide. Read once per ProcFS."""
        if self._boot_id is None:
            self._boot_id = self.read_bytes(None, b"sys/kernel/random/boot_id").strip().decode(
                "ascii", "replace"
            )
        return self._boot_id
