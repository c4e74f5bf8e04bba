"""Kernel struct offsets for the BPF programs, resolved from the running kernel's BTF.

Why: bcc compiles against whatever headers /lib/modules/$(uname -r)/build points at. On custom
and cloud kernels those are the nearest distro headers, whose struct layouts differ from the
running kernel (on a 6.18 kernel with 6.1 headers, `task->real_parent->tgid` reads 0). The BPF
C therefore never dereferences a kernel struct through a header type: every member it reads is
`base + OFF_X`, and OFF_X comes from here as a `-DOFF_X=<n>` compiler flag.

Resolution is a pure-Python walk of every BTF type (its cost: bench/RESULTS.md); results are cached on disk
keyed by the SHA-256 of the BTF blob, so a restart on the same kernel costs one hash.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

from monitor.sensors.bpf.btf import BTF, BTFError
from monitor.trusted import Untrusted, open_own_dir, open_own_file, replace_own_file

log = logging.getLogger("procsentry.offsets")

BTF_PATH = "/sys/kernel/btf/vmlinux"
CACHE_DIR = os.environ.get("PROCSENTRY_CACHE_DIR", "/var/cache/procsentry")
CACHE_VERSION = 4  # bump whenever WANTS changes: a cached file lacks new macros


@dataclass(frozen=True)
class Want:
    """One offset the BPF C needs: macro name, struct, member path(s) to try, expected size."""

    macro: str
    struct: str
    paths: tuple[str, ...]
    size: int | None = None  # None: any (embedded structs, flexible arrays)
    optional: bool = False  # missing -> -1, and the C skips the read


def _w(macro, struct, paths, size=None, optional=False):
    if isinstance(paths, str):
        paths = (paths,)
    return Want(macro, struct, tuple(paths), size, optional)


WANTS: tuple[Want, ...] = (
    _w("TASK_PID", "task_struct", "pid", 4),
    _w("TASK_TGID", "task_struct", "tgid", 4),
    _w("TASK_FLAGS", "task_struct", "flags", 4),
    _w("TASK_REAL_PARENT", "task_struct", "real_parent", 8),
    _w("TASK_GROUP_LEADER", "task_struct", "group_leader", 8),
    # do_task_stat (array.c in the kernel's procfs) reports start_boottime (5.5+; real_start_time before) as
    # field 22; start_time is CLOCK_MONOTONIC, which bpf_ktime_get_ns also reads.
    _w("TASK_START_BOOTTIME", "task_struct", ("start_boottime", "real_start_time"), 8),
    _w("TASK_START_TIME", "task_struct", "start_time", 8),
    _w("TASK_CRED", "task_struct", "cred", 8),
    _w("TASK_FS", "task_struct", "fs", 8),
    _w("TASK_NSPROXY", "task_struct", "nsproxy", 8),
    _w("TASK_MM", "task_struct", "mm", 8),
    _w("TASK_SIGNAL", "task_struct", "signal", 8),
    _w("TASK_EXIT_CODE", "task_struct", "exit_code", 4),
    _w("TASK_THREAD_PID", "task_struct", "thread_pid", 8),
    _w("TASK_LOGINUID", "task_struct", "loginuid", 4, optional=True),  # CONFIG_AUDIT
    _w("TASK_SESSIONID", "task_struct", "sessionid", 4, optional=True),
    _w("CRED_UID", "cred", "uid", 4),
    _w("CRED_GID", "cred", "gid", 4),
    _w("CRED_EUID", "cred", "euid", 4),
    _w("CRED_EGID", "cred", "egid", 4),
    _w("CRED_USER_NS", "cred", "user_ns", 8),
    _w("CRED_SUID", "cred", "suid", 4),
    _w("CRED_FSUID", "cred", "fsuid", 4),
    # kernel_cap_t: { u64 val } since 6.3, { u32 cap[2] } before; 8 bytes either way, and the
    # two u32 read as one little-endian u64 give the same mask (cap_t in kernel/capability.c).
    _w("CRED_CAP_EFFECTIVE", "cred", "cap_effective", 8),
    _w("CRED_CAP_PERMITTED", "cred", "cap_permitted", 8),
    # stdio at exec: task->files->fdt->fd[i]->f_inode (include/linux/fdtable.h, fs.h)
    _w("TASK_FILES", "task_struct", "files", 8),
    _w("FILES_FDT", "files_struct", "fdt", 8),
    _w("FDTABLE_MAX_FDS", "fdtable", "max_fds", 4),
    _w("FDTABLE_FD", "fdtable", "fd", 8),
    _w("FILE_PRIVATE_DATA", "file", "private_data", 8),  # a socket file's struct socket
    _w("INODE_MODE", "inode", "i_mode", 2),
    _w("INODE_INO", "inode", "i_ino", 8),
    _w("INODE_RDEV", "inode", "i_rdev", 4),
    _w("INODE_SB", "inode", "i_sb", 8),
    _w("SB_MAGIC", "super_block", "s_magic", 8),
    _w("SOCKET_TYPE", "socket", "type", 2),
    _w("SOCKET_SK", "socket", "sk", 8),
    _w("SOCK_FAMILY", "sock", "__sk_common.skc_family", 2),
    # a u16 since 5.6; a bitfield before (BTF cannot give a byte offset): then 0 on the wire
    _w("SOCK_PROTOCOL", "sock", "sk_protocol", 2, optional=True),
    _w("SIGNAL_LIVE", "signal_struct", "live", 4),
    _w("SIGNAL_FLAGS", "signal_struct", "flags", 4),
    _w("SIGNAL_GROUP_EXIT_CODE", "signal_struct", "group_exit_code", 4),
    _w("SIGNAL_TTY", "signal_struct", "tty", 8),
    _w("TTY_NAME", "tty_struct", "name", 64),
    _w("MM_ARG_START", "mm_struct", "arg_start", 8),
    _w("MM_ARG_END", "mm_struct", "arg_end", 8),
    # The image identity (stat fields 26, 27, 28 in do_task_stat print these same members).
    _w("MM_START_CODE", "mm_struct", "start_code", 8),
    _w("MM_END_CODE", "mm_struct", "end_code", 8),
    _w("MM_START_STACK", "mm_struct", "start_stack", 8),
    _w("FS_PWD_MNT", "fs_struct", "pwd.mnt", 8),
    _w("FS_PWD_DENTRY", "fs_struct", "pwd.dentry", 8),
    _w("FILE_PATH_MNT", "file", "f_path.mnt", 8),
    _w("FILE_PATH_DENTRY", "file", "f_path.dentry", 8),
    _w("FILE_INODE", "file", "f_inode", 8),
    _w("INODE_NLINK", "inode", ("i_nlink", "__i_nlink"), 4),
    _w("DENTRY_PARENT", "dentry", "d_parent", 8),
    _w("DENTRY_NAME", "dentry", "d_name.name", 8),
    _w("MOUNT_MNT", "mount", "mnt"),
    _w("MOUNT_PARENT", "mount", "mnt_parent", 8),
    _w("MOUNT_MOUNTPOINT", "mount", "mnt_mountpoint", 8),
    _w("VFSMOUNT_ROOT", "vfsmount", "mnt_root", 8),
    _w("BINPRM_FILE", "linux_binprm", "file", 8),
    _w("BINPRM_FILENAME", "linux_binprm", "filename", 8),
    _w("BINPRM_ARGC", "linux_binprm", "argc", 4),
    _w("NSPROXY_UTS", "nsproxy", "uts_ns", 8),
    _w("NSPROXY_IPC", "nsproxy", "ipc_ns", 8),
    _w("NSPROXY_MNT", "nsproxy", "mnt_ns", 8),
    _w("NSPROXY_NET", "nsproxy", "net_ns", 8),
    _w("NSPROXY_CGROUP", "nsproxy", "cgroup_ns", 8),
    _w("UTS_NS_INUM", "uts_namespace", "ns.inum", 4),
    _w("IPC_NS_INUM", "ipc_namespace", "ns.inum", 4),
    _w("MNT_NS_INUM", "mnt_namespace", "ns.inum", 4),
    _w("NET_NS_INUM", "net", "ns.inum", 4),
    _w("CGROUP_NS_INUM", "cgroup_namespace", "ns.inum", 4),
    _w("USER_NS_INUM", "user_namespace", "ns.inum", 4),
    _w("PID_NS_INUM", "pid_namespace", "ns.inum", 4),
    _w("PID_LEVEL", "pid", "level", 4),
    _w("PID_NUMBERS", "pid", "numbers"),
    _w("UPID_NS", "upid", "ns", 8),
    _w("UPID_NR", "upid", "nr", 4),  # the pid number in that level's namespace (vpid)
)
# Sizes of whole structs, for array indexing (pid->numbers[level]).
SIZES: tuple[tuple[str, str], ...] = (("UPID_SIZE", "upid"),)


_MACROS = frozenset(w.macro for w in WANTS) | frozenset(m for m, _s in SIZES)


class OffsetsError(Exception):
    """BTF is missing or the kernel lacks a member the sensor cannot work without."""


def resolve(btf: BTF) -> dict[str, int]:
    """Map every WANTS macro to a byte offset (-1 for an absent optional member)."""
    out: dict[str, int] = {}
    problems = []
    for want in WANTS:
        for path in want.paths:
            try:
                m = btf.member(want.struct, path)
            except BTFError:
                continue
            if want.size is not None and m.size != want.size:
                problems.append(f"{want.struct}.{path} is {m.size} bytes, expected {want.size}")
            out[want.macro] = m.offset
            break
        else:
            if want.optional:
                out[want.macro] = -1
            else:
                problems.append(f"{want.struct}.{'|'.join(want.paths)} not found")
    for macro, struct_name in SIZES:
        try:
            out[macro] = btf.struct_size(struct_name)
        except BTFError as e:
            problems.append(str(e))
    if problems:
        raise OffsetsError("kernel BTF lacks what the sensor needs: " + "; ".join(problems))
    return out


def load(btf_path: str = BTF_PATH, cache_dir: str | None = CACHE_DIR) -> dict[str, int]:
    """Offsets for the running kernel, from the on-disk cache when the BTF blob is unchanged."""
    try:
        with open(btf_path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise OffsetsError(
            f"{btf_path} is missing: this kernel was built without CONFIG_DEBUG_INFO_BTF, "
            "and procsentry reads kernel structs only through BTF offsets"
        ) from None
    except OSError as e:
        raise OffsetsError(f"cannot read {btf_path}: {e.strerror}") from None
    digest = hashlib.sha256(blob).hexdigest()
    cache_name = f"offsets-{digest[:32]}.json"
    cache_fd = _cache_dir(cache_dir) if cache_dir else None
    try:
        if cache_fd is not None:
            got = _cached(cache_fd, cache_name, digest)
            if got is not None:
                return got
        try:
            offsets = resolve(BTF(blob))
        except BTFError as e:
            raise OffsetsError(f"cannot parse {btf_path}: {e}") from None
        if cache_fd is not None:
            try:
                replace_own_file(cache_fd, cache_name, json.dumps(
                    {"version": CACHE_VERSION, "btf_sha256": digest, "offsets": offsets}).encode())
            except OSError:
                pass  # a read-only /var is no reason not to run
        return offsets
    finally:
        if cache_fd is not None:
            os.close(cache_fd)


def _cache_dir(path: str) -> int | None:
    """The cache directory, when it is one a root daemon may take offsets from. Offsets decide
    which kernel fields the sensor reads: a file someone else could write there (a cache dir
    set to /tmp/..., a symlink planted in its place) would let them feed it wrong ones, and a
    symlink would make root write through it. Such a directory is not used: the offsets are
    resolved from BTF again at every start (the same offsets, one BTF walk later), with a
    warning."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), 0o755, exist_ok=True)
        # root's cache serves a user too (`watch --dump-bpf`), read only: writing it fails
        return open_own_dir(path, create=True, allow_root=True)
    except Untrusted as e:
        log.warning("offsets cache not used: %s", e)
    except OSError as e:
        log.warning("offsets cache not used: %s: %s", path, e.strerror)
    return None


def _cached(dir_fd: int, name: str, digest: str) -> dict[str, int] | None:
    try:
        fd = open_own_file(dir_fd, name, os.O_RDONLY, name, allow_root=True)
    except Untrusted:
        return None  # absent; or planted by someone else (a file of ours is never refused)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            cached = json.loads(f.read(1 << 20))
        if cached.get("version") == CACHE_VERSION and cached.get("btf_sha256") == digest:
            got = {str(k): int(v) for k, v in cached["offsets"].items()}
            # a file written by a build with fewer WANTS (same version by mistake) would
            # make the C fail to compile on a missing OFF_ macro: resolve again instead
            if _MACROS <= got.keys():
                return got
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # a corrupt cache: resolve again
    finally:
        os.close(fd)
    return None


def cflags(offsets: dict[str, int]) -> list[str]:
    return [f"-DOFF_{name}={value}" for name, value in sorted(offsets.items())]
