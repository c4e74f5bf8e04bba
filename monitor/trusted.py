"""Files a root daemon takes orders from, and the directories it keeps its own files in.

procsentry runs as root. A file that tells it what to do (the settings file, the Sigma rules,
its cached kernel offsets) must be one that only root or this user can have written: a rules
file another user can edit lets them switch off the alert about themselves, a forged offsets
file makes the sensor read the wrong kernel fields. A file it writes must never be reached
through someone else's symlink (to make root append to /etc/shadow) or be a file someone else
planted. Every check here is made on the open descriptor (fstat), so the file checked is the
file used: a rename between a check and the open cannot swap it.
"""
from __future__ import annotations

import errno
import os
import stat


class Untrusted(Exception):
    """The path cannot be used safely (one line for the user, naming it and why)."""


def _owner_problem(st: os.stat_result, allow_root: bool) -> str | None:
    owners = (os.geteuid(), 0) if allow_root else (os.geteuid(),)
    if st.st_uid not in owners:
        return f"owned by uid {st.st_uid}, not {os.geteuid()}"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def read_trusted(path: str, max_bytes: int) -> bytes:
    """The bytes of a file this daemon takes orders from, once it is known to be one.

    It must be a regular file, ours or root's, writable by its owner alone. The open does not
    block (O_NONBLOCK: a FIFO planted under the name would hang the start for ever); a symlink
    is followed only when we or root own it (/etc may be managed with symlinks, but not by other
    users); it is read to at most max_bytes (a symlink to /dev/zero would take all memory)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise Untrusted(f"{path}: cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise Untrusted(f"{path}: cannot read: {os.strerror(errno.EISDIR)}")
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted(f"{path}: not a regular file; refusing to use it")
        problem = _owner_problem(st, allow_root=True)
        if problem:
            raise Untrusted(f"{path}: {problem}; refusing to use it")
        try:
            link = os.lstat(path)
        except OSError as e:
            raise Untrusted(f"{path}: cannot read: {e.strerror}") from None
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in (os.geteuid(), 0):
            raise Untrusted(f"{path}: a symbolic link owned by uid {link.st_uid}; refusing to follow it")
        if st.st_size > max_bytes:
            raise Untrusted(f"{path}: larger than {max_bytes >> 10} KiB; refusing to read it")
        chunks, left = [], max_bytes + 1
        while left > 0 and (chunk := os.read(fd, min(left, 65536))):
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:  # grew since the fstat
            raise Untrusted(f"{path}: larger than {max_bytes >> 10} KiB; refusing to read it")
        return b"".join(chunks)
    except OSError as e:
        raise Untrusted(f"{path}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)


def check_trusted_dir(path: str) -> None:
    """A directory whose files this daemon takes orders from: ours or root's, and no one else
    may add, replace or remove a file in it. A symlink to it is followed under the same rule
    as a file's."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise Untrusted(f"{path}: cannot open as a directory: {e.strerror}") from None
    try:
        problem = _owner_problem(os.fstat(fd), allow_root=True)
    finally:
        os.close(fd)
    if problem:
        raise Untrusted(f"{path}: {problem}; refusing to use it")
    link = os.lstat(path)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (os.geteuid(), 0):
        raise Untrusted(f"{path}: a symbolic link owned by uid {link.st_uid}; refusing to follow it")


# -- directories and files of our own (state, spools, caches) -------------------------------------
def _check_own(st: os.stat_result, what: str, kind) -> None:
    if not kind(st.st_mode):
        raise Untrusted(f"{what}: unexpected file type (a symlink or special file?); refusing to use it")
    problem = _owner_problem(st, allow_root=False)
    if problem:
        raise Untrusted(f"{what}: {problem}; refusing to use it")


def open_own_dir(path: str, parent_fd: int | None = None, create: bool = True) -> int:
    """A checked descriptor of a directory of ours (created 0700 when missing): never a
    symlink, ours, writable by us alone. Its files are then opened relative to it."""
    if create:
        try:
            os.mkdir(path, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
        except OSError as e:
            raise Untrusted(f"{path}: cannot create ({e.strerror})") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError as e:
        raise Untrusted(f"{path}: cannot open as a directory ({e.strerror}; a symlink is refused)") from None
    try:
        _check_own(os.fstat(fd), path, stat.S_ISDIR)
    except Untrusted:
        os.close(fd)
        raise
    return fd


def open_own_file(dir_fd: int, name: str, flags: int, what: str) -> int:
    """A checked regular file in a checked directory: never through a symlink, never another
    user's file, always 0600."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as e:
        raise Untrusted(f"{what}: cannot open ({e.strerror})") from None
    try:
        _check_own(os.fstat(fd), what, stat.S_ISREG)
    except Untrusted:
        os.close(fd)
        raise
    return fd


def replace_own_file(dir_fd: int, name: str, data: bytes) -> None:
    """Atomically: a new 0600 file (O_EXCL: never an existing or planted one), then rename."""
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
