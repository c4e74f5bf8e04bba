"""cgroup v2 id -> cgroup path -> container id, without the process.

The BPF exec record carries ``bpf_get_current_cgroup_id()``: the id of the task's cgroup on
the default (v2) hierarchy, ``cgroup_id()`` = ``kernfs_node->id`` of the cgroup's directory
(include/linux/cgroup.h). A short-lived container's only process is often gone before procfs
can be read, but its cgroup usually is not (a runtime removes it after reaping the process):
resolving the id to the directory gives the cgroup path, and the path names the container
(parsers.container_id_from_cgroup).

Two ways to resolve, chosen once per resolver:

* ``handle``: ``open_by_handle_at(2)`` on the cgroup2 mount with a ``FILEID_KERNFS`` handle
  whose 8 bytes are the id (kernfs_encode_fh / kernfs_fh_to_dentry, fs/kernfs/mount.c), then
  the path of the resulting fd. One syscall and one readlink per miss. It needs
  CAP_DAC_READ_SEARCH, and seccomp profiles of container runtimes often forbid it.
* ``walk``: readdir of the whole cgroup2 tree, keyed by inode number. On 64-bit kernels a
  kernfs inode number *is* the node id (kernfs_id_ino(), include/linux/kernfs.h; readdir's
  d_ino comes from kernfs_ino(), fs/kernfs/dir.c), so no stat is needed. Refreshed on a miss,
  at most once per ``walk_interval_s``, and never past ``walk_max_dirs`` directories.

Ids are never reused within a boot (kernfs allocates them cyclically and bumps the high 32
bits on wrap: __kernfs_new_node), so a cached answer never turns wrong; entries are still
evicted when their cgroup is gone, to keep the cache to cgroups that exist (``prune``).

Everything here degrades by counting: an id that cannot be resolved is ``None`` and a counter
in ``stats`` says why; nothing raises to the caller.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

from . import parsers as P
from .procfs import ProcFS, ProcFSError

# include/linux/exportfs.h enum fid_type: "64 bit kernfs node id" (since 5.5, commit
# "kernfs: use 64bit inos if ino_t is 64bit"); struct kernfs's fid->kernfs.id is a u64.
FILEID_KERNFS = 0xFE
KERNFS_HANDLE_BYTES = 8
_U64 = struct.Struct("=Q")  # native order: kernfs_encode_fh stores the u64 as it is in memory
AT_FDCWD = -100
U64_MAX = (1 << 64) - 1

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_WALK_INTERVAL_S = 0.25
DEFAULT_WALK_MAX_DIRS = 65536
# A walk costs ~14 us per cgroup here (one getdents of ~30 entries each); after a walk that took
# t, the next waits at least WALK_IDLE_FACTOR * t, so walking never takes over 10 % of a CPU
# however fast containers come and go.
WALK_IDLE_FACTOR = 9.0
# O_PATH: no open of the directory itself (do_dentry_open skips f_op->open), only a reference
# to the dentry, which is all the path lookup needs; O_DIRECTORY: an id of a kernfs file (a
# cgroup's interface files have ids too) fails with ENOTDIR.
_OPEN_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
DELETED_SUFFIX = b" (deleted)"  # d_path() of an unlinked dentry (fs/d_path.c prepend " (deleted)")


class _FileHandle(ctypes.Structure):
    # struct file_handle, open_by_handle_at(2); f_handle sized for a kernfs handle only.
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * KERNFS_HANDLE_BYTES)]


@dataclass(frozen=True, slots=True)
class Cgroup:
    id: int
    path: bytes  # as the "0::" line of <pid>/cgroup shows it (relative to the cgroup2 root)
    container_id: str | None


def find_cgroup2_mount(fs: ProcFS) -> P.Cgroup2Mount | None:
    """The cgroup2 mount in our own mount namespace that shows the most of the hierarchy (the
    shortest root; "/" on a host). Raises ProcFSError (ParseError included) when mountinfo
    cannot be read or understood."""
    mounts = fs.read_parsed("self", "mountinfo", P.parse_cgroup2_mounts)
    if not mounts:
        return None
    return min(mounts, key=lambda m: len(m.root))  # min() keeps the first of equals: file order


def unified_only(fs: ProcFS) -> bool:
    """Is this a cgroup v2-only host? Then the v2 path is a process's whole cgroup identity.
    With v1 hierarchies in use (hybrid), a runtime may put a container in v1 hierarchies only
    (the cgroupfs driver), so a v2 path that names no container does not prove there is none.
    <pid>/cgroup lists one line per active hierarchy (proc_cgroup_show, kernel/cgroup/cgroup.c)."""
    try:
        lines = [x for x in fs.read_bytes("self", "cgroup").splitlines() if x]
    except ProcFSError:
        return False
    return len(lines) == 1 and lines[0].startswith(b"0::")


def _libc_functions():
    """open_by_handle_at and name_to_handle_at from libc (glibc >= 2.14, musl), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        open_fn = libc.open_by_handle_at
        name_fn = libc.name_to_handle_at
    except (OSError, AttributeError):
        return None
    open_fn.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]
    open_fn.restype = ctypes.c_int
    name_fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle),
                        ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    name_fn.restype = ctypes.c_int
    return open_fn, name_fn


def kernfs_id_of(path: bytes | str) -> int:
    """The kernfs node id of a cgroup2 directory, from name_to_handle_at(2) (what perf and
    libbpf's get_cgroup_id do). Raises OSError; ValueError when path is not on kernfs."""
    fns = _libc_functions()
    if fns is None:
        raise OSError(errno.ENOSYS, "name_to_handle_at is not in this libc")
    h = _FileHandle(handle_bytes=KERNFS_HANDLE_BYTES)
    mount_id = ctypes.c_int()
    if fns[1](AT_FDCWD, os.fsencode(path), ctypes.byref(h), ctypes.byref(mount_id), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    if h.handle_type != FILEID_KERNFS or h.handle_bytes != KERNFS_HANDLE_BYTES:
        raise ValueError(f"{path!r}: handle type {h.handle_type:#x}, not a kernfs node")
    return _U64.unpack(bytes(h.f_handle))[0]


class CgroupResolver:
    """cgroup v2 id -> Cgroup, cached (LRU, ``max_entries``). ``method`` is "auto" (handle if
    it works here, else walk), "handle" or "walk"; after construction ``self.method`` is the
    one in use, or None with ``self.reason`` saying why ids cannot be resolved at all
    (``handle_unusable`` says why "auto" fell back to the walk)."""

    def __init__(self, fs: ProcFS, *, mount: P.Cgroup2Mount | None = None, method: str = "auto",
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 walk_interval_s: float = DEFAULT_WALK_INTERVAL_S,
                 walk_max_dirs: int = DEFAULT_WALK_MAX_DIRS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._mount_fd = -1
        if method not in ("auto", "handle", "walk"):
            raise ValueError(f"method: {method!r}")  # a programming error, not input
        self.fs = fs
        self.max_entries = max_entries
        self.walk_interval_s = walk_interval_s
        self.walk_max_dirs = walk_max_dirs
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self.unified_only = unified_only(fs)
        self.method: str | None = None
        self.reason: str | None = None  # why the method is None
        self.handle_unusable: str | None = None  # why "auto" did not choose handle
        self._cache: OrderedDict[int, Cgroup] = OrderedDict()
        self._gone: set[int] = set()  # ids seen gone: never asked of the kernel again
        self._fns = None
        self._handle = _FileHandle()
        self._tree: dict[int, bytes] = {}  # last walk: id -> path below the mount point
        self._tree_max = 0  # the newest id the last walk saw
        self._tree_complete = False  # the last walk saw every directory (not truncated)
        self._sought: set[int] = set()  # newer ids a walk was made for and did not find
        self._walked_at: float | None = None
        self._walk_cost = 0.0  # how long the last walk took
        self.root_id: int | None = None

        if mount is None:
            try:
                mount = find_cgroup2_mount(fs)
            except ProcFSError as e:
                self.reason = f"mountinfo unreadable: {e}"
                return
            if mount is None:
                self.reason = "no cgroup2 mount (a v1-only host: every process has cgroup id 1)"
                return
        self.mount = mount
        self._mp = mount.mount_point.rstrip(b"/") or b"/"
        if method in ("auto", "handle"):
            why_not = self._open_handle_method()
            if why_not is None:
                self.method = "handle"
                return
            if method == "handle":
                self.reason = why_not
                return
            self.handle_unusable = why_not
        try:
            self.root_id = os.stat(self._mp).st_ino
        except OSError as e:
            self.reason = f"cannot stat the cgroup2 mount {self._mp!r}: {e.strerror}"
            return
        self.method = "walk"

    # -- the two methods -----------------------------------------------------------------------
    def _open_handle_method(self) -> str | None:
        """Open the mount and prove a round trip on its own root: name_to_handle_at must give a
        kernfs handle, and open_by_handle_at must open it and read back the mount point. Returns
        None when it works, else why not."""
        fns = _libc_functions()
        if fns is None:
            return "not in this libc"
        try:
            root_id = kernfs_id_of(self._mp)
        except ValueError:
            return "the mount is not kernfs"
        except OSError as e:
            return f"name_to_handle_at: {e.strerror}"
        try:
            self._mount_fd = os.open(self._mp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            return f"cannot open the mount: {e.strerror}"
        self._fns = fns
        res = self._by_handle(root_id)
        if isinstance(res, int):
            self.close()
            return f"open_by_handle_at: {os.strerror(res)}"
        if res != b"/":
            self.close()
            return f"the mount root resolved to {res!r}"
        self.root_id = root_id
        return None

    def _by_handle(self, cgroup_id: int) -> bytes | int | None:
        """The path below the mount point, an errno, or None (not below our mount point)."""
        h = self._handle
        h.handle_bytes = KERNFS_HANDLE_BYTES
        h.handle_type = FILEID_KERNFS
        ctypes.memmove(h.f_handle, _U64.pack(cgroup_id), KERNFS_HANDLE_BYTES)
        fd = self._fns[0](self._mount_fd, ctypes.byref(h), _OPEN_FLAGS)
        if fd < 0:
            return ctypes.get_errno()
        try:
            target = self.fs.readlink("self", b"fd/%d" % fd)
        except ProcFSError:
            return errno.EBADF
        finally:
            os.close(fd)
        if target.endswith(DELETED_SUFFIX):
            # rmdir between the open and the readlink (d_path adds the suffix to an unlinked
            # dentry), or a cgroup really named so: ask again, ESTALE settles it.
            again = self._fns[0](self._mount_fd, ctypes.byref(h), _OPEN_FLAGS)
            if again < 0:
                return ctypes.get_errno()
            os.close(again)
        return self._below_mount(target)

    def _below_mount(self, target: bytes) -> bytes | None:
        if self._mp == b"/":
            return target
        if target == self._mp:
            return b"/"
        if target.startswith(self._mp + b"/"):
            return target[len(self._mp):]
        return None

    def _walk(self) -> None:
        """id -> path for every directory under the mount (depth first, at most walk_max_dirs)."""
        self.stats["walks"] += 1
        started = self.clock()
        tree: dict[int, bytes] = {}
        if self.root_id is not None:
            tree[self.root_id] = b"/"
        queue = [b""]
        dirs = 0
        while queue:
            rel = queue.pop()
            try:
                it = os.scandir(self._mp + rel)
            except OSError as e:
                if e.errno != errno.ENOENT:  # removed since its parent was read: normal
                    self.stats["walk_errors"] += 1
                continue
            with it:
                for entry in it:
                    try:
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                    except OSError:
                        continue
                    dirs += 1
                    if dirs > self.walk_max_dirs:
                        self.stats["walk_truncated"] += 1
                        queue.clear()
                        break
                    child = rel + b"/" + entry.name
                    tree[entry.inode()] = child
                    queue.append(child)
        self._tree = tree
        self._tree_max = max(tree, default=0)
        self._tree_complete = dirs <= self.walk_max_dirs
        self._walked_at = self.clock()
        self._walk_cost = self._walked_at - started

    def _by_walk(self, cgroup_id: int) -> bytes | None:
        path = self._tree.get(cgroup_id)
        if path is not None:
            return path
        # Ids only grow (idr_alloc_cyclic in __kernfs_new_node, fs/kernfs/dir.c, the high 32
        # bits bumped on wrap): an id newer than any the last walk saw is a cgroup made since,
        # worth a walk at once, but once only, and within the duty cycle (WALK_IDLE_FACTOR).
        # Other misses walk at most once per walk_interval_s.
        newer = cgroup_id > self._tree_max and cgroup_id not in self._sought
        if self._walked_at is not None:
            idle = self.clock() - self._walked_at
            if idle < (WALK_IDLE_FACTOR * self._walk_cost if newer else self.walk_interval_s):
                self.stats["walk_rate_limited"] += 1
                return None
        self._walk()
        path = self._tree.get(cgroup_id)
        if path is None:
            if len(self._sought) >= self.max_entries:
                self._sought.clear()
            self._sought.add(cgroup_id)
        return path

    # -- the API ------------------------------------------------------------------------------
    def cgroup_path(self, below_mount: bytes) -> bytes:
        """The path as <pid>/cgroup shows it: the mount's root, then the path below the mount."""
        root = self.mount.root.rstrip(b"/")
        if below_mount == b"/":
            return root or b"/"
        return root + below_mount

    def resolve(self, cgroup_id: object) -> Cgroup | None:
        """The cgroup with this id, or None (gone, unknown, bad id, or no method here)."""
        if type(cgroup_id) is not int:  # not bool (True == 1 would hit the root's entry)
            self.stats["bad_id"] += 1
            return None
        c = self._cache.get(cgroup_id)
        if c is not None:
            self.stats["hits"] += 1
            self._cache.move_to_end(cgroup_id)
            return c
        self.stats["misses"] += 1
        if not 0 < cgroup_id <= U64_MAX:
            self.stats["bad_id"] += 1
            return None
        if self.method is None:
            self.stats["unavailable"] += 1
            return None
        if cgroup_id in self._gone:
            self.stats["gone"] += 1
            return None
        if self.method == "handle":
            res = self._by_handle(cgroup_id)
            if isinstance(res, int):
                self._count_errno(cgroup_id, res)
                return None
        else:
            res = self._by_walk(cgroup_id)
        if res is None:
            self.stats["unknown" if self.method == "walk" else "outside_mount"] += 1
            return None
        path = self.cgroup_path(res)
        c = Cgroup(cgroup_id, path, P.container_id_from_cgroup((path,)))
        self.stats["resolved"] += 1
        self._cache[cgroup_id] = c
        if len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
            self.stats["evicted_full"] += 1
        return c

    def _count_errno(self, cgroup_id: int, code: int) -> None:
        if code == errno.ESTALE:  # kernfs_find_and_get_node_by_id: no such node, or removed
            self._remember_gone(cgroup_id)
            self.stats["gone"] += 1
        elif code == errno.ENOTDIR:  # the id of a kernfs file (cgroup.procs...), not a cgroup
            self.stats["not_a_cgroup"] += 1
        elif code in (errno.EPERM, errno.EACCES):
            self.stats["denied"] += 1
        else:
            self.stats["error"] += 1

    def _remember_gone(self, cgroup_id: int) -> None:
        if len(self._gone) >= self.max_entries:
            self._gone.clear()
        self._gone.add(cgroup_id)

    def gone(self, ids: Iterable[int]) -> set[int]:
        """Which of these cgroups no longer exist. An id whose fate cannot be told (an error,
        no method) is not reported gone."""
        ids = [i for i in ids if type(i) is int and 0 < i <= U64_MAX]
        if self.method == "handle":
            out = set()
            for i in ids:
                res = self._by_handle(i)
                if res == errno.ESTALE:
                    out.add(i)
            return out
        if self.method == "walk":
            self._walk()
            if not self._tree_complete:
                return set()  # a directory not seen may still exist
            return {i for i in ids if i not in self._tree}
        return set()

    def prune(self, also: Iterable[int] = ()) -> set[int]:
        """Evict the cached cgroups that are gone. Returns the ids found gone among the cached
        ones and ``also`` (a caller's own cache keyed by cgroup id), checked in one pass."""
        dead = self.gone(set(self._cache).union(also))
        for i in dead:
            if self._cache.pop(i, None) is not None:
                self.stats["evicted_gone"] += 1
            self._remember_gone(i)
        return dead

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        if self._mount_fd >= 0:
            os.close(self._mount_fd)
            self._mount_fd = -1

    def __del__(self) -> None:
        self.close()
