"""Enrichment: what procfs adds to an event, and the reasons for whatever it could not add.

Kernel-captured fields are never overwritten: a process may rewrite its own argv (setproctitle)
or chdir after exec. Where procfs disagrees with the kernel, both are kept (`differs`).
"""
from __future__ import annotations

import pwd
import time

from monitor.events import ProcDetails, Socket
from monitor.text import text, text_or_none
from userspace.cgroups import CgroupResolver
from userspace.procfs import ProcFS, ProcFSError
from userspace.process import read_process
from userspace.sockets import DumpBudget, SocketTables
from userspace.types import Depth, ProcessSnapshot

# --enrich: how much procfs a kernel-captured exec costs. The kernel record is complete without
# any (argv, exe, cwd, credentials and capabilities, namespaces, cgroup id, fds 0-2).
#   minimal   no procfs read at all: proc is null; the container from the cgroup id (cached).
#   standard  <pid>/stat (is it still the process, its state, threads and memory) and, once per
#             cgroup whose id alone does not name it, <pid>/cgroup: one small file per exec.
#   full      also status, cmdline (to notice a rewritten argv or changed euid: differs), every
#             fd with its link target, and the sockets among them (sock_diag): ~24 syscalls.
LEVELS = ("minimal", "standard", "full")
MAX_FDS_LISTED = 64  # fd targets carried per event; fd_count is always the full count
# A table is kept for a second, and longer while its dumps' budget (DumpBudget: at most 10 % of
# a CPU) allows no new one: any user can open tens of thousands of sockets (38,000 made one dump
# 1.2 s here), and the enricher dumped again every second. Sockets opened since are said
# (missing.sockets = not_in_table); a netns the kept table lacks waits for the same budget
# (missing.sockets = unavailable meanwhile).
SOCKET_TABLE_TTL_S = 1.0
CGROUP_PRUNE_INTERVAL_S = 30.0  # how often cached cgroups are checked for removal


class UserNames:
    """uid -> user name, cached (a host has few users; getpwuid reads /etc/passwd or NSS)."""

    def __init__(self) -> None:
        self._cache: dict[int, str | None] = {}

    def __call__(self, uid: int | None) -> str | None:
        if uid is None:
            return None
        try:
            return self._cache[uid]
        except KeyError:
            try:
                name: str | None = pwd.getpwuid(uid).pw_name
            except (KeyError, OverflowError):
                name = None
            if len(self._cache) < 4096:
                self._cache[uid] = name
            return name


class Enricher:
    """Reads a process from procfs for an event, with socket tables cached for a second."""

    def __init__(self, fs: ProcFS, depth: Depth = Depth.EXEC, environ: bool = False,
                 cgroups: CgroupResolver | None = None, level: str = "full") -> None:
        if level not in LEVELS:
            raise ValueError(f"enrichment level {level!r}: one of {', '.join(LEVELS)}")
        self.fs = fs
        self.level = level
        self._exec_depth = Depth.ENRICH if level == "full" else Depth.ENRICH_STAT
        self.depth = depth
        self.environ = environ
        self._sockets: SocketTables | None = None
        self._sockets_at = 0.0
        self._socket_counts = {"dumps": 0, "not_in_table": 0}  # over every table made here
        self._dump_budget = DumpBudget()  # and one limit on their dumps (see DumpBudget)
        # cgroup v2 id -> (path, container id) learned from procfs reads: a cgroup's path does
        # not change, and reading it once per cgroup instead of once per exec is most of the
        # saving. (cgroup ids <= 1 are the root, or every process on a v1-only host: never
        # cached on a hybrid host, where the v1 paths of the processes in the root differ.)
        self._containers: dict[int, tuple[bytes | None, str | None]] = {}
        # The same from the kernel's id alone, for a process gone before procfs could be read
        # (and, when the id settles it, instead of reading <pid>/cgroup at all).
        self.cgroups = cgroups if cgroups is not None else CgroupResolver(fs)
        self._min_cached_id = 1 if self.cgroups.unified_only else 2
        self._pruned_at = time.monotonic()

    def sockets(self) -> SocketTables:
        now = time.monotonic()
        if self._sockets is None or (now - self._sockets_at > SOCKET_TABLE_TTL_S
                                     and self._dump_budget.allows()):
            self._sockets = SocketTables(self.fs, counts=self._socket_counts, budget=self._dump_budget)
            self._sockets_at = now
        return self._sockets

    def socket_table_stats(self) -> dict[str, int]:
        """Socket tables read for enrichment, and sockets they lacked (opened since: the event
        says missing.sockets = not_in_table)."""
        return dict(self._socket_counts)

    def read(self, pid: int, start_ticks: int | None) -> ProcessSnapshot | None:
        """Snapshot of pid if it is still the process identified by start_ticks, else None."""
        return self._checked(start_ticks, lambda: read_process(
            self.fs, pid, self.depth, environ=self.environ, sockets=self.sockets()))

    def read_after_exec(self, pid: int, start_ticks: int, netns: int,
                        cgroup_id: int) -> ProcessSnapshot | None:
        """What procfs adds to a kernel exec record (Depth.ENRICH at --enrich full, else
        Depth.ENRICH_STAT): the kernel already has exe, cwd, credentials, capabilities,
        namespaces and fds 0-2. The cgroup path is read once per cgroup id."""
        self._maybe_prune()
        learned = known = self._containers.get(cgroup_id)
        if known is None and cgroup_id > 0:  # 0: the sensor has no cgroup id
            known = self._from_kernel_id(cgroup_id)
        snap = self._checked(start_ticks, lambda: read_process(
            self.fs, pid, self._exec_depth, environ=self.environ, sockets=self.sockets(),
            netns=netns, container=known))
        if snap is not None and snap.zombie:
            return None  # exited already: nothing but its stat is left to read
        if (snap is not None and known is None and learned is None and snap.cgroup is not None
                and cgroup_id >= self._min_cached_id):
            if len(self._containers) >= 4096:
                self._containers.clear()
            self._containers[cgroup_id] = (snap.cgroup, snap.container_id)
        return snap

    def container_of(self, cgroup_id: int) -> tuple[bytes | None, str | None] | None:
        """(cgroup path, container id) of a cgroup v2 id, whether or not any of its processes
        is still there to read; None when unknown (then the event says container_id missing)."""
        self._maybe_prune()
        known = self._containers.get(cgroup_id)
        if known is not None:
            return known
        return self._from_kernel_id(cgroup_id)

    def warm(self, cgroup_id: int | None) -> None:
        """Resolve a cgroup id as soon as its record arrives, before the hold window. The id
        resolves only while its cgroup exists, and a runtime removes a container's cgroup as
        soon as it has reaped the last process. Measured here (30 short-lived processes, each
        alone in a new cgroup removed after it exited): removed 5 ms after the exit, 8 of 30
        were named when resolved after the hold window, 30 of 30 when resolved on arrival;
        removed at once, 1 and 9 of 30. The answer is cached for container_of."""
        if cgroup_id and cgroup_id >= self._min_cached_id and cgroup_id not in self._containers:
            self.cgroups.resolve(cgroup_id)

    def _from_kernel_id(self, cgroup_id: int) -> tuple[bytes | None, str | None] | None:
        """What the cgroup id alone says, when that settles it. A v2 path naming a container
        settles it everywhere. One naming none settles it only on a v2-only host: on a hybrid
        host a runtime with the cgroupfs driver puts containers in v1 hierarchies only, so the
        process may still be in one (procfs, which lists every hierarchy, must tell)."""
        c = self.cgroups.resolve(cgroup_id)
        if c is None:
            return None
        if c.container_id is None and not self.cgroups.unified_only:
            return None
        return (c.path, c.container_id)

    def _maybe_prune(self) -> None:
        """Forget cgroups that are gone, at most every CGROUP_PRUNE_INTERVAL_S (one
        open_by_handle_at per cached id, ~5 us each here, so at most ~40 ms per 30 s)."""
        now = time.monotonic()
        if now - self._pruned_at < CGROUP_PRUNE_INTERVAL_S:
            return
        self._pruned_at = now
        for cgroup_id in self.cgroups.prune(also=self._containers):
            self._containers.pop(cgroup_id, None)

    @staticmethod
    def _checked(start_ticks, read) -> ProcessSnapshot | None:
        try:
            snap = read()
        except ProcFSError:  # gone (or hidden) before even its stat could be read
            return None
        if start_ticks is not None and snap.start_ticks != start_ticks:
            return None  # the PID now belongs to another process
        return snap


def details(snap: ProcessSnapshot, kernel=None) -> ProcDetails:
    """The procfs-only part of a snapshot, as carried in an event's `proc` object. Where the
    snapshot did not read status (--enrich standard), capabilities and saved/fs uid are the
    kernel's at exec (`kernel`: the ExecRecord), the values status would have shown then."""
    uids = snap.uids
    cap_eff = snap.cap_eff
    suid = fsuid = None
    if uids:
        suid, fsuid = uids[2], uids[3]
    elif kernel is not None and kernel.suid is not None:
        cap_eff, suid, fsuid = kernel.cap_eff, kernel.suid, kernel.fsuid
    fds = None
    if snap.fds is not None:
        fds = tuple(f"{f.fd}:{text(f.target)}" for f in snap.fds[:MAX_FDS_LISTED])
    sockets = None
    if snap.sockets is not None and snap.fds is not None:
        by_inode = {s.inode: s for s in snap.sockets}
        sockets = tuple(
            Socket(fd=f.fd, protocol=s.protocol, state=s.state,
                   local=_endpoint(s.local_address, s.local_port),
                   remote=_endpoint(s.remote_address, s.remote_port), inode=s.inode)
            for f in snap.fds if f.kind == "socket" and (s := by_inode.get(f.inode)) is not None
        )
    env = None
    if snap.environ is not None:
        env = {text(k): text(v) for k, v in snap.environ}
    return ProcDetails(
        state=snap.state,
        threads=snap.threads,
        rss_bytes=snap.rss_bytes,
        vsz_bytes=snap.vsz_bytes,
        cap_eff=f"{cap_eff:016x}" if cap_eff is not None else None,
        suid=suid,
        fsuid=fsuid,
        fd_count=snap.fd_count,
        fds=fds,
        sockets=sockets,
        cgroup=text_or_none(snap.cgroup),
        root=text_or_none(snap.root),
        environ=env,
    )


def _endpoint(addr: str, port: int | None) -> str:
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def outcome(snap: ProcessSnapshot | None) -> str:
    """full: everything asked for was read; partial: some of it; gone: the process was."""
    if snap is None:
        return "gone"
    short = [k for k, v in snap.missing.items()
             if v not in NOT_A_SHORTFALL and k not in ABOUT_OTHER_PROCESSES]
    return "partial" if short else "full"


# Reasons that describe the process rather than a failure to read it.
NOT_A_SHORTFALL = frozenset({"not_requested", "kernel_thread", "zombie"})
# Fields whose absence is about another process (PID 1's namespaces, which some hosts hide
# even from root), not about this one.
ABOUT_OTHER_PROCESSES = frozenset({"ns_differs_from_init"})
