"""read_process: one ProcessSnapshot from procfs, tolerant of the process racing us.

Rules (STYLE 2.2 items 8 and 11):

* Only stat is mandatory: it gives the identity (start time) and the state. If stat cannot be
  read, the call raises (ProcessGone, AccessDenied or ParseError). After that, nothing raises:
  each field that could not be read is None and ``missing[field]`` says why.
* A zombie (state Z) and a kernel thread (PF_KTHREAD) are states, not errors; their missing
  fields are explained as "zombie" / "kernel_thread", not as failures.
* Collections (fds, task/, ns/) skip an entry that vanishes mid-listing, and then check once
  that the process is still the same one (psutil ``_raise_if_not_alive``); if it is not, the
  partial collection is dropped and marked "gone".

A snapshot is not atomic: the files are read one after another. PID reuse between the stat
read and the others would need a whole PID-space wrap within one call; we re-check identity
only where an entry vanished.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from . import parsers as P
from .procfs import AccessDenied, ParseError, ProcessGone, ProcFS, ProcFSError, Unavailable
from .sockets import SocketTables, join_sockets, missed_by_table
from .types import USER_HZ, Depth, FdInfo, Missing, Namespaces, ProcessSnapshot, ProcKey, ThreadInfo

T = TypeVar("T")

NS_NAMES = ("pid", "mnt", "net", "user", "uts", "ipc", "cgroup", "time")

# What each depth reads beyond CHEAP (the CHEAP fields are always read). EXEC is what
# enriching a fresh exec needs: its fds and sockets, its namespaces (the netns picks the socket
# table) and its container. FULL adds what a sweep can afford once per process.
EXEC_FIELDS = ("fds", "fd_count", "sockets", "ns", "cgroup", "container_id")
FULL_ONLY_FIELDS = ("thread_list", "ns_differs_from_init", "libraries", "mounts")
FULL_FIELDS = EXEC_FIELDS + FULL_ONLY_FIELDS
# Fields read from a process's mm (exe is mm->exe_file), which kernel threads do not have.
_MM_FIELDS = frozenset(("argv", "exe", "environ", "libraries"))


def _reason(exc: ProcFSError) -> str:
    if isinstance(exc, ProcessGone):
        return Missing.GONE.value
    if isinstance(exc, AccessDenied):
        return Missing.DENIED.value
    if isinstance(exc, ParseError):
        return Missing.PARSE.value
    return Missing.UNAVAILABLE.value


class _Reader:
    """State for one read_process call: the fields gathered so far and why others are absent."""

    def __init__(self, fs: ProcFS, pid: int, stat: P.Stat) -> None:
        self.fs = fs
        self.pid = pid
        self.stat = stat
        self.zombie = stat.state == "Z"
        self.kthread = stat.kernel_thread
        self.missing: dict[str, str] = {}
        self.gone = False  # once a read says ProcessGone, later reads are skipped as "gone"

    def absent(self, fields: tuple[str, ...] | str, exc: ProcFSError | None, reason: str | None = None) -> None:
        """Record why fields are absent.

        For a zombie or kernel thread, a failure is usually that state, not an error: the data
        does not exist, and the kernel says so with ENOENT/ESRCH, or as EACCES when the ptrace
        check runs first (proc_fd_access_allowed, mm_access). A zombie has released its mm,
        files, fs and namespaces (do_exit), so any failure is "zombie". A kernel thread only
        lacks what lives in an mm; its cwd, root and namespace links are real, and EACCES on
        them is a genuine denial.
        """
        if reason is None:
            assert exc is not None
            if isinstance(exc, ProcessGone):
                self.gone = True
            reason = _reason(exc)
            if isinstance(exc, (Unavailable, AccessDenied)):
                names = (fields,) if isinstance(fields, str) else fields
                if self.zombie:
                    reason = Missing.ZOMBIE.value
                elif self.kthread and (isinstance(exc, Unavailable) or set(names) <= _MM_FIELDS):
                    reason = Missing.KERNEL_THREAD.value
        for f in (fields,) if isinstance(fields, str) else fields:
            self.missing[f] = reason

    def get(self, fields: tuple[str, ...] | str, fn: Callable[[], T]) -> T | None:
        if self.gone:
            self.absent(fields, None, Missing.GONE.value)
            return None
        try:
            return fn()
        except ProcFSError as exc:
            self.absent(fields, exc)
            return None

    def still_same(self) -> bool:
        """Is pid still the process we started reading (not exited, not reused)?"""
        try:
            st = self.fs.read_parsed(self.pid, "stat", P.parse_stat)
        except ProcFSError:
            return False
        return st.starttime == self.stat.starttime


def read_stat(fs: ProcFS, pid: int) -> P.Stat:
    """<pid>/stat parsed; ENOENT here always means the process is gone."""
    try:
        return fs.read_parsed(pid, "stat", P.parse_stat)
    except Unavailable as exc:
        raise ProcessGone(f"process {pid} gone", exc.path) from None


def read_namespaces(fs: ProcFS, pid: int) -> Namespaces:
    """Inodes of <pid>/ns/*; a link that does not exist on this kernel (time before 5.6, cgroup
    before 4.6) is None. Raises ProcessGone/AccessDenied if the process is gone or hidden, and
    Unavailable if no link at all could be read (zombie: its nsproxy is already released)."""
    values: dict[str, int | None] = {}
    denied: AccessDenied | None = None
    for name in NS_NAMES:
        try:
            values[name] = P.parse_ns_link(fs.readlink(pid, "ns/" + name))
        except (Unavailable, ParseError):
            values[name] = None
        except AccessDenied as exc:
            denied = exc
            values[name] = None
    if all(v is None for v in values.values()):
        if denied is not None:
            raise denied
        if not fs.exists(pid):
            raise ProcessGone(f"process {pid} gone", fs.path(pid, "ns"))
        raise Unavailable("no readable namespace link", fs.path(pid, "ns"))
    return Namespaces(**values)


def ns_differences(ns: Namespaces, init: Namespaces) -> tuple[str, ...]:
    """Names of the namespaces where ns and init are both known and differ."""
    return tuple(
        n for n in NS_NAMES if getattr(ns, n) is not None and getattr(init, n) is not None and getattr(ns, n) != getattr(init, n)
    )


def _read_fds(r: _Reader, names: list[bytes]) -> tuple[FdInfo, ...]:
    fs, pid = r.fs, r.pid
    out = []
    lost = False
    for name in names:
        try:
            fd = int(name)
            target = fs.readlink(pid, b"fd/" + name)
        except (Unavailable, ValueError):
            lost = True  # closed between listdir and readlink
            continue
        try:
            t = P.parse_fd_target(target)
        except ParseError:
            out.append(FdInfo(fd, "other", target))
            continue
        out.append(FdInfo(fd, t.kind, t.target, t.inode, t.deleted))
    if lost and not r.still_same():
        raise ProcessGone(f"process {pid} gone", fs.path(pid, "fd"))
    out.sort(key=lambda f: f.fd)
    return tuple(out)


def _read_threads(r: _Reader) -> tuple[ThreadInfo, ...]:
    fs, pid = r.fs, r.pid
    out = []
    lost = False
    for name in fs.listdir(pid, "task"):
        try:
            tid = int(name)
            comm = P.parse_comm(fs.read_bytes(pid, b"task/" + name + b"/comm"))
        except (Unavailable, ValueError):
            lost = True  # thread exited between listdir and read
            continue
        out.append(ThreadInfo(tid, comm))
    if lost and not r.still_same():
        raise ProcessGone(f"process {pid} gone", fs.path(pid, "task"))
    out.sort(key=lambda t: t.tid)
    return tuple(out)


def _exe_fields(target: bytes) -> dict[str, object]:
    """exe link -> exe, exe_deleted, exe_memfd. The binary was unlinked (or replaced by a
    package upgrade) after exec: d_path appends " (deleted)". A memfd exe
    (fexecve of a memfd_create file, fileless malware) reads "/memfd:<name> (deleted)"."""
    try:
        t = P.parse_fd_target(target)
    except ParseError:
        return {"exe": target}
    if t.kind not in ("file", "memfd"):
        return {"exe": target}
    return {"exe": t.target, "exe_deleted": t.deleted, "exe_memfd": t.kind == "memfd"}


def read_process(
    fs: ProcFS,
    pid: int,
    depth: Depth = Depth.FULL,
    environ: bool = False,
    sockets: SocketTables | None = None,
    init_ns: Namespaces | ProcFSError | None = None,
    mounts_cache: dict[int, tuple[bytes, ...]] | None = None,
    netns: int | None = None,
    container: tuple[bytes | None, str | None] | None = None,
) -> ProcessSnapshot:
    """Snapshot of one process.

    ``depth`` ENRICH skips what the kernel sensor captured at exec; ``netns`` is then the
    sensor's net namespace inode (used to pick the socket table) and ``container`` an already
    known (cgroup path, container id) for the process's cgroup, which skips reading it.

    ``depth``: CHEAP (stat, status, cmdline, exe, cwd, root, loginuid), EXEC (+ fds, sockets,
    ns, cgroup, container id) or FULL (+ threads, ns comparison, libraries, mounts).
    ``sockets``: the sweep's SocketTables (one is made for this call if None and needed).
    ``init_ns``: PID 1's namespaces, read once per sweep (read here if None and FULL); the
    ProcFSError the sweep got reading them, if it could not.
    ``mounts_cache``: mount summaries per mnt-namespace inode, shared across a sweep: every
    process of a namespace has the same mount table, and mountinfo is the biggest file we read.
    ``environ`` is opt-in and redacted (parsers.parse_environ).
    """
    stat = read_stat(fs, pid)
    r = _Reader(fs, pid, stat)
    v: dict[str, object] = {}
    if depth is Depth.ENRICH_STAT:
        v.update(threads=stat.num_threads, rss_bytes=stat.rss * fs.page_size,
                 vsz_bytes=stat.vsize)
        if container is not None:
            v["cgroup"], v["container_id"] = container
        else:
            _read_cgroup(r, v)
        return _finish(r, v, stat, ENRICH_STAT_SKIPPED, environ)

    # --- status: uids, gids, caps, threads, memory, NSpid -----------------------------------
    status = r.get(("uids", "gids", "cap_eff", "cap_prm", "cap_inh", "vpid", "pid_level"),
                   lambda: fs.read_parsed(pid, "status", P.parse_status))
    if status is not None:
        v.update(uids=status.uids, gids=status.gids, cap_eff=status.cap_eff, cap_prm=status.cap_prm,
                 cap_inh=status.cap_inh, ns_pids=status.ns_pid, vpid=status.vpid,
                 pid_level=status.pid_level)
        if status.vpid is None:  # a kernel before 4.1, or a status cut short
            r.absent(("vpid", "pid_level"), None, Missing.UNAVAILABLE.value)
    # stat always has these; status adds kB precision names but the same counters (get_mm_rss).
    v["threads"] = status.threads if status is not None and status.threads is not None else stat.num_threads
    v["rss_bytes"] = status.vm_rss if status is not None and status.vm_rss is not None else stat.rss * fs.page_size
    v["vsz_bytes"] = status.vm_size if status is not None and status.vm_size is not None else stat.vsize

    # --- cmdline and exe --------------------------------------------------------------------
    # falco scap_proc_add_from_proc: no cmdline and no exe is a kernel thread or a zombie;
    # no cmdline *with* an exe is a (strange) user process and keeps argv == ().
    argv = r.get("argv", lambda: fs.read_parsed(pid, "cmdline", P.parse_cmdline))
    if depth is Depth.ENRICH:
        v["argv"] = argv
        fds = _read_fd_fields(r, v)
        _read_sockets(r, v, fds, netns, sockets)
        if container is not None:
            v["cgroup"], v["container_id"] = container
        else:
            _read_cgroup(r, v)
        return _finish(r, v, stat, ENRICH_SKIPPED, environ)
    exe_raw = r.get("exe", lambda: fs.readlink(pid, "exe"))
    if argv == () and exe_raw is None and not r.zombie and r.missing.get("exe") == Missing.UNAVAILABLE.value:
        # No mm: a kernel thread (PF_KTHREAD, set in stat flags), or a user process inside
        # do_exit after exit_mm (PF_EXITING) that is not a zombie yet: that one is going.
        if stat.flags & P.PF_EXITING and not r.kthread:
            r.missing["exe"] = Missing.GONE.value
            r.gone = True
        else:  # PF_KTHREAD, or falco's rule (no cmdline and no exe) when the flags are absent
            r.kthread = True
            r.missing["exe"] = Missing.KERNEL_THREAD.value
    if argv == () and (r.zombie or r.kthread or r.gone):
        argv = None  # the empty cmdline is the absence of an mm, not an empty argv
        r.missing["argv"] = (Missing.ZOMBIE.value if r.zombie else
                             Missing.KERNEL_THREAD.value if r.kthread else Missing.GONE.value)
    v["argv"] = argv
    if exe_raw is not None:
        v.update(_exe_fields(exe_raw))
    v["cwd"] = r.get("cwd", lambda: fs.readlink(pid, "cwd"))
    v["root"] = r.get("root", lambda: fs.readlink(pid, "root"))

    # --- audit login identity ---------------------------------------------------------------
    v["loginuid"] = r.get("loginuid", lambda: fs.read_parsed(pid, "loginuid", P.parse_loginuid))
    v["sessionid"] = r.get("sessionid", lambda: fs.read_parsed(pid, "sessionid", P.parse_loginuid))

    if depth is Depth.CHEAP:
        not_read: tuple[str, ...] = FULL_FIELDS
    else:
        ns = _read_exec(r, v, sockets)
        if depth is Depth.FULL:
            _read_full(r, v, ns, init_ns, mounts_cache)
            not_read = ()
        else:
            not_read = FULL_ONLY_FIELDS
    return _finish(r, v, stat, not_read, environ)


def _finish(r: _Reader, v: dict[str, object], stat: P.Stat, not_read: tuple[str, ...],
            environ: bool) -> ProcessSnapshot:
    fs, pid = r.fs, r.pid
    for f in not_read:
        r.missing[f] = Missing.NOT_REQUESTED.value

    if environ:
        env = r.get("environ", lambda: fs.read_parsed(pid, "environ", P.parse_environ))
        if env == () and (r.zombie or r.kthread):
            env = None  # no mm, not an empty environment
            r.absent("environ", None, Missing.ZOMBIE.value if r.zombie else Missing.KERNEL_THREAD.value)
        v["environ"] = env
    else:
        r.missing["environ"] = Missing.NOT_REQUESTED.value

    # The image layout (identity of the current program image) comes with stat, at every depth.
    if stat.layout_hidden:
        r.absent(IMAGE_FIELDS, None, _layout_reason(r, stat))
    else:
        v.update(start_code=stat.start_code, end_code=stat.end_code,
                 start_stack=stat.start_stack, arg_start=stat.arg_start)

    # None with no reason would be ambiguous: loginuid/sessionid None means "unset" (audit),
    # container_id None means "not in a container"; everything else got a reason above.
    return ProcessSnapshot(
        key=ProcKey(fs.boot_id(), pid, stat.starttime),
        pid=pid,
        ppid=stat.ppid,
        comm=stat.comm,
        state=stat.state,
        start_ticks=stat.starttime,
        utime_ticks=stat.utime,
        stime_ticks=stat.stime,
        tty_nr=stat.tty_nr,
        kernel_thread=r.kthread,
        zombie=r.zombie,
        missing=r.missing,
        **v,  # type: ignore[arg-type]
    )


IMAGE_FIELDS = ("start_code", "end_code", "start_stack", "arg_start")


def _layout_reason(r: _Reader, stat: P.Stat) -> str:
    """Why stat showed no image layout (do_task_stat prints it only with an mm and to a
    reader with ptrace access)."""
    if stat.arg_start is None:
        return Missing.UNAVAILABLE.value  # a kernel whose stat stops before field 48 (< 3.5)
    if r.zombie:
        return Missing.ZOMBIE.value
    if r.kthread:
        return Missing.KERNEL_THREAD.value
    if stat.flags & P.PF_EXITING:
        return Missing.GONE.value  # past exit_mm in do_exit
    return Missing.DENIED.value


ENRICH_SKIPPED = ("exe", "cwd", "root", "loginuid", "sessionid", "ns", "thread_list",
                  "ns_differs_from_init", "libraries", "mounts")
# Depth.ENRICH_STAT reads no status, cmdline or fd/: what they carry came from the kernel at
# exec (uids, caps, argv, fds 0-2), or is left to --enrich full (every fd, sockets).
ENRICH_STAT_SKIPPED = ENRICH_SKIPPED + ("argv", "uids", "gids", "cap_eff", "cap_prm", "cap_inh",
                                        "vpid", "pid_level", "fds", "fd_count", "sockets")


def _read_fd_fields(r: _Reader, v: dict[str, object]) -> tuple[FdInfo, ...] | None:
    """fds and fd_count."""
    fs, pid = r.fs, r.pid
    # Listing fd/ and reading its links are separate permission checks: a process may let us
    # count its fds (proc_fd_permission) yet deny the links (proc_fd_access_allowed, ptrace).
    listing = r.get(("fds", "fd_count", "sockets"), lambda: fs.listdir(pid, "fd"))
    fds = None
    if listing is not None:
        fds = r.get(("fds", "sockets"), lambda: _read_fds(r, listing))
        v["fds"] = fds
        if fds is not None:
            v["fd_count"] = len(fds)
        elif r.missing.get("fds") == Missing.GONE.value:
            r.missing["fd_count"] = Missing.GONE.value
        else:
            v["fd_count"] = sum(1 for n in listing if n.isdigit())
    return fds


def _read_sockets(r: _Reader, v: dict[str, object], fds: tuple[FdInfo, ...] | None,
                  netns: int | None, sockets: SocketTables | None) -> None:
    """Join socket fds with the socket table of the process's net namespace."""
    if fds is None:
        return
    if not any(f.kind == "socket" for f in fds):
        v["sockets"] = ()
        return
    tables = sockets if sockets is not None else SocketTables(r.fs)
    table = r.get("sockets", lambda: tables.for_pid(r.pid, netns))
    if table is not None:
        v["sockets"] = join_sockets(fds, table)
        missed = missed_by_table(r.fs, r.pid, fds, table)
        if missed:
            # The list is short of what the process holds: say so (the enricher's table is
            # cached for a second, and a connection made since is not in it).
            r.missing["sockets"] = Missing.NOT_IN_TABLE.value
            tables.counts["not_in_table"] += missed


def _read_cgroup(r: _Reader, v: dict[str, object]) -> None:
    found = r.get(("cgroup", "container_id"), lambda: r.fs.read_parsed(r.pid, "cgroup", _cgroup_of))
    if found is not None:
        path, v["container_id"] = found
        v["cgroup"] = path
        if path is None:  # a zombie's cgroup file can be empty
            r.absent("cgroup", None, Missing.ZOMBIE.value if r.zombie else Missing.UNAVAILABLE.value)


def _cgroup_of(data: bytes, _seen: dict[bytes, tuple[bytes | None, str | None]] = {}) \
        -> tuple[bytes | None, str | None]:  # noqa: B006 - the cache
    """(primary cgroup path, container id) of a <pid>/cgroup file. A host has few distinct
    files (every process of a cgroup has the same one), and where the kernel's cgroup v2 id
    cannot stand for the file (a hybrid v1/v2 host: the v1 paths differ within one v2 cgroup)
    it is read per exec: parsed once per distinct content (parse, path and container id were
    ~11 of the ~20 us its read costs, bench/pipeline_cost.py)."""
    got = _seen.get(data)
    if got is None:
        cg = P.parse_cgroup(data)  # a ParseError is not cached: every read raises it
        got = (P.primary_cgroup_path(cg), P.container_id_from_cgroup(e.path for e in cg))
        if len(_seen) >= 1024:
            _seen.clear()
        _seen[data] = got
    return got


def _read_exec(r: _Reader, v: dict[str, object], sockets: SocketTables | None) -> Namespaces | None:
    """fds, sockets, namespaces, cgroup and container id (Depth.EXEC and FULL)."""
    fds = _read_fd_fields(r, v)
    ns = r.get("ns", lambda: read_namespaces(r.fs, r.pid))
    v["ns"] = ns
    if fds is not None and any(f.kind == "socket" for f in fds) and (ns is None or ns.net is None):
        r.absent("sockets", None, r.missing.get("ns", Missing.UNAVAILABLE.value))
    else:
        _read_sockets(r, v, fds, ns.net if ns is not None else None, sockets)
    _read_cgroup(r, v)
    return ns


def _read_full(
    r: _Reader,
    v: dict[str, object],
    ns: Namespaces | None,
    init_ns: Namespaces | ProcFSError | None,
    mounts_cache: dict[int, tuple[bytes, ...]] | None,
) -> None:
    """threads, namespace comparison with PID 1, libraries and mounts (Depth.FULL only)."""
    fs, pid = r.fs, r.pid
    v["thread_list"] = r.get("thread_list", lambda: _read_threads(r))

    if ns is None:
        r.absent("ns_differs_from_init", None, r.missing.get("ns", Missing.UNAVAILABLE.value))
    else:
        if pid == 1:
            init_ns = ns
        elif init_ns is None:
            try:
                init_ns = read_namespaces(fs, 1)
            except ProcFSError as exc:
                init_ns = exc
        if isinstance(init_ns, ProcFSError):
            # PID 1 is unreadable (a hardened init, a sandbox); its reason is ours
            r.missing["ns_differs_from_init"] = _reason(init_ns)
        else:
            v["ns_differs_from_init"] = ns_differences(ns, init_ns)

    # --- libraries (maps) and mounts ----------------------------------------------------------
    libs = r.get("libraries", lambda: fs.read_parsed(pid, "maps", P.parse_maps))
    if libs == () and (r.zombie or r.kthread):
        libs = None  # no mm
        r.absent("libraries", None, Missing.ZOMBIE.value if r.zombie else Missing.KERNEL_THREAD.value)
    v["libraries"] = libs

    mnt_ns = ns.mnt if ns is not None else None
    if mounts_cache is not None and mnt_ns is not None and mnt_ns in mounts_cache:
        v["mounts"] = mounts_cache[mnt_ns]
    else:
        mounts = r.get("mounts", lambda: tuple(m.render() for m in fs.read_parsed(pid, "mountinfo", P.parse_mountinfo)))
        v["mounts"] = mounts
        if mounts is not None and mounts_cache is not None and mnt_ns is not None:
            mounts_cache[mnt_ns] = mounts


def cpu_percent(prev: ProcessSnapshot, cur: ProcessSnapshot, elapsed_s: float, clock_ticks: int = USER_HZ) -> float | None:
    """CPU used between two snapshots of the same process, in percent of one CPU (so a busy
    process with 4 threads can show 400, as top does). None if the snapshots are of different
    processes (PID reuse) or lack times."""
    if prev.key != cur.key or elapsed_s <= 0:
        return None
    if None in (prev.utime_ticks, prev.stime_ticks, cur.utime_ticks, cur.stime_ticks):
        return None
    used = (cur.utime_ticks + cur.stime_ticks) - (prev.utime_ticks + prev.stime_ticks)  # type: ignore[operator]
    return max(0.0, used / clock_ticks / elapsed_s * 100.0)
