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
import functools
import grp
import os
import pwd
import stat


class Untrusted(Exception):
    """The path cannot be used safely (one line for the user, naming it and why)."""


def trusted_uids() -> frozenset[int]:
    """Whose files we take orders from: root's and ours; and, when root was reached with sudo,
    the invoking user's (SUDO_UID: they could run anything as root already, and a newcomer's
    `sudo make run` uses rules from their own checkout). A service has no SUDO_UID."""
    uids = {0, os.geteuid()}
    sudo_uid = os.environ.get("SUDO_UID", "")
    if os.geteuid() == 0 and sudo_uid.isdigit():
        uids.add(int(sudo_uid))
    return frozenset(uids)


@functools.lru_cache(maxsize=64)  # (one passwd walk per group and owner: NSS may be LDAP)
def _private_group(gid: int, owner: int) -> bool:
    """A group only its owner is in (Debian/Ubuntu's user private groups, with umask 002: a
    user's files are group-writable, and harmlessly so). As Debian's OpenSSH decides it for
    StrictModes: no other member, and no other user's primary group."""
    try:
        group = grp.getgrgid(gid)
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        return False
    if any(m != name for m in group.gr_mem):
        return False
    return not any(u.pw_gid == gid and u.pw_uid != owner for u in pwd.getpwall())


def _owner_problem(st: os.stat_result, owners: frozenset[int], private_group_ok: bool = True) -> str | None:
    if st.st_uid not in owners:
        return f"owned by uid {st.st_uid}, not {os.geteuid()}"
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and not (
            private_group_ok and _private_group(st.st_gid, st.st_uid))):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _open_no_foreign_link(path: str, flags: int, owners: frozenset[int]) -> int:
    """open(2) that follows a symlink in the last component only when one of owners owns it.
    Checking the link before a plain open would leave a window to swap in someone else's;
    so it is opened with O_NOFOLLOW first, and a link, once followed, must still be the same
    link, and lead to the file that was opened."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise Untrusted(f"{path}: cannot read: {e.strerror}") from None
    try:
        link = os.lstat(path)
        if not stat.S_ISLNK(link.st_mode):
            raise Untrusted(f"{path}: changed while being opened; refusing to use it")
        if link.st_uid not in owners:
            raise Untrusted(f"{path}: a symbolic link owned by uid {link.st_uid}; refusing to follow it")
        fd = os.open(path, flags)
    except OSError as e:
        raise Untrusted(f"{path}: cannot read: {e.strerror}") from None
    try:
        after, opened, target = os.lstat(path), os.fstat(fd), os.stat(path)
        if ((after.st_dev, after.st_ino) != (link.st_dev, link.st_ino)
                or (target.st_dev, target.st_ino) != (opened.st_dev, opened.st_ino)):
            raise Untrusted(f"{path}: changed while being opened; refusing to use it")
    except OSError as e:
        os.close(fd)
        raise Untrusted(f"{path}: cannot read: {e.strerror}") from None
    except Untrusted:
        os.close(fd)
        raise
    return fd


def check_ancestors(path: str) -> None:
    """Whoever can write a directory on the way to a file can swap the file, or the directory
    holding it, for one of theirs: every directory from / down to it, as named and as resolved,
    must be one of owners' and writable by no one else (a sticky one, as /tmp, lets no one
    rename another's entries: it is fine when its owner is trusted); a symlink on the way must
    be one of owners' too."""
    owners = trusted_uids()
    named = os.path.abspath(path)
    chains = [named, os.path.realpath(named)]
    seen: set[str] = set()
    for chain in chains:
        parts = chain.split("/")[1:-1]
        at = "/"
        for part in [""] + parts:
            at = os.path.join(at, part) if part else at
            if at in seen:
                continue
            seen.add(at)
            try:
                st = os.lstat(at)
                if stat.S_ISLNK(st.st_mode):
                    if st.st_uid not in owners:
                        raise Untrusted(f"{path}: {at} is a symbolic link owned by uid {st.st_uid}; "
                                        "refusing to use it")
                    continue  # where it leads is on the resolved chain
                if st.st_uid not in owners:
                    raise Untrusted(f"{path}: the directory {at} is owned by uid {st.st_uid}; "
                                    "refusing to use it")
                if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX \
                        and not (st.st_mode & 0o002 == 0 and _private_group(st.st_gid, st.st_uid)):
                    raise Untrusted(f"{path}: the directory {at} is writable by group or others "
                                    f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it")
            except OSError as e:  # vanished, or not ours to search: the file cannot be read
                raise Untrusted(f"{path}: cannot read: {e.strerror}") from None


def read_trusted(path: str, max_bytes: int) -> bytes:
    """The bytes of a file this daemon takes orders from, once it is known to be one.

    It must be a regular file of trusted_uids(), writable by its owner alone (or its private
    group). The open does not block (O_NONBLOCK: a FIFO planted under the name would hang the
    start for ever); a symlink is followed only when a trusted user owns it (/etc may be
    managed with symlinks, but not by other users); it is read to at most max_bytes (a symlink
    to /dev/zero would take all memory)."""
    owners = trusted_uids()
    fd = _open_no_foreign_link(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, owners)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise Untrusted(f"{path}: cannot read: {os.strerror(errno.EISDIR)}")
        if not stat.S_ISREG(st.st_mode):
            raise Untrusted(f"{path}: not a regular file; refusing to use it")
        problem = _owner_problem(st, owners)
        if problem:
            raise Untrusted(f"{path}: {problem}; refusing to use it")
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
    """A directory whose files this daemon takes orders from: a trusted user's, and no one else
    may add, replace or remove a file in it. A symlink to it is followed under the same rule
    as a file's."""
    owners = trusted_uids()
    fd = _open_no_foreign_link(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, owners)
    try:
        problem = _owner_problem(os.fstat(fd), owners)
    finally:
        os.close(fd)
    if problem:
        raise Untrusted(f"{path}: {problem}; refusing to use it")


# -- directories and files of our own (state, spools, caches) -------------------------------------
def _checked_own(fd: int, what: str, kind, allow_root: bool) -> int:
    """fd, once fstat says it is of the kind asked, ours (or root's) and writable by its owner
    alone; else it is closed and Untrusted raised."""
    try:
        _check_own(os.fstat(fd), what, kind, allow_root)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_own(st: os.stat_result, what: str, kind, allow_root: bool = False) -> None:
    if not kind(st.st_mode):
        raise Untrusted(f"{what}: unexpected file type (a symlink or special file?); refusing to use it")
    owners = frozenset((os.geteuid(), 0) if allow_root else (os.geteuid(),))
    problem = _owner_problem(st, owners, private_group_ok=False)  # ours: created 0600/0700
    if problem:
        raise Untrusted(f"{what}: {problem}; refusing to use it")


def open_own_dir(path: str, parent_fd: int | None = None, create: bool = True,
                 allow_root: bool = False) -> int:
    """A checked descriptor of a directory of ours (created 0700 when missing): never a
    symlink, ours (or root's, with allow_root: a cache a user may read but not write),
    writable by its owner alone. Its files are then opened relative to it."""
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
    return _checked_own(fd, path, stat.S_ISDIR, allow_root)


def open_own_file(dir_fd: int, name: str, flags: int, what: str, allow_root: bool = False) -> int:
    """A checked regular file in a checked directory: never through a symlink, never another
    user's file (root's, with allow_root), created 0600."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as e:
        raise Untrusted(f"{what}: cannot open ({e.strerror})") from None
    return _checked_own(fd, what, stat.S_ISREG, allow_root)


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
