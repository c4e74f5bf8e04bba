"""A bounded events file: rotation by size, and reopening on SIGHUP (for logrotate).

Like Tetragon's export files (lumberjack's MaxSize/MaxBackups): when the next event would take
the file past --max-size, the file becomes FILE.1 (FILE.1 becomes FILE.2, ..., the oldest
beyond --max-backups is removed) and a new FILE is started. Rotation happens only between two
events, so a file holds whole events only and is never larger than the limit, except for a
single event that is larger than the limit by itself (it gets a file of its own).

SIGHUP (logrotate's postrotate) makes the next write reopen FILE by name: after an external
rename, events go to a new FILE, not on into the renamed one. The signal handler only bumps a
counter (request_reopen); the pipeline thread reopens at its next write.

A root daemon must never write through a symlink, nor be tricked into writing into a file
someone planted: every open goes through monitor.output.open_output (O_NOFOLLOW, a regular
file owned by us, 0600 when created), relative to the directory descriptor taken once at start,
and the new file after a rotation is created with O_EXCL, so nothing planted at FILE between the
rename and the open is ever used. Renames move names, never follow them. Rotated files keep the
file's mode (0600 as created).
"""
from __future__ import annotations

import errno
import os
import re
import sys
from typing import NamedTuple

_generation = 0


def request_reopen(*_args) -> None:
    """From a SIGHUP handler: every RotatingFile reopens its path at its next write."""
    global _generation
    _generation += 1


class Rotation(NamedTuple):
    max_size: int  # bytes; a file never grows past it (but for one event larger than it)
    max_backups: int  # rotated files kept: FILE.1 (newest) .. FILE.N


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(value: str) -> int:
    """'4096', '64k', '100m', '1g' (binary units) -> bytes; at least 1."""
    m = re.fullmatch(r"\s*(\d+)\s*([bkmg]?)(?:i?b)?\s*", str(value).lower())
    if not m:
        raise ValueError(f"not a size: {value!r} (e.g. 4096, 64k, 100m, 1g)")
    n = int(m.group(1)) * _UNITS[m.group(2)]
    if n <= 0:
        raise ValueError("must be positive")
    return n


class WriteFailed(OSError):
    """A write failed after `written` of the records had been written in full."""

    def __init__(self, err: OSError, written: int) -> None:
        super().__init__(err.errno, err.strerror)
        self.written = written


class RotatingFile:
    def __init__(self, path: str, rotation: Rotation | None = None) -> None:
        from monitor.output import OutputRefused, open_output  # noqa: PLC0415 - output imports us

        self._open = open_output
        self.path = path
        self.rotation = rotation
        self.name = os.path.basename(path)
        try:
            self.dir_fd = os.open(os.path.dirname(os.path.abspath(path)),
                                  os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise OutputRefused(f"cannot open {path}: {e.strerror}") from None
        # The names FILE, FILE.1 .. FILE.N live in this directory: another user who can write
        # it can delete the events file (events then go on into an unlinked file, lost
        # unseen) or plant a directory at FILE.1 (root shifted it up to FILE.N, then every
        # rotation failed on it and FILE grew without bound), even in sticky /tmp. So, like
        # the state directory: ours or root's, and writable by no one else.
        st = os.fstat(self.dir_fd)
        problem = None
        if st.st_uid not in (os.geteuid(), 0):
            problem = f"is owned by uid {st.st_uid}"
        elif st.st_mode & 0o022:
            problem = f"is writable by group or others (mode {st.st_mode & 0o7777:04o})"
        if problem:
            os.close(self.dir_fd)
            raise OutputRefused(f"the directory of {path} {problem}; give a file in a directory "
                                "only this user can write (e.g. /var/log/procsentry)")
        try:
            self.fd = open_output(path, dir_fd=self.dir_fd, name=self.name)
        except BaseException:
            os.close(self.dir_fd)
            raise
        self.generation = _generation
        self.rotations = 0
        self.reopens = 0
        self._warned = False

    # -- writing -----------------------------------------------------------------------------
    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def write(self, data: bytes) -> None:
        """Write encoded records (each ends with its one newline: JSON strings escape theirs,
        the text formats escape every control character), rotating between two records when
        the next would cross the limit."""
        if self.generation != _generation:
            self.reopen()
        done = 0  # records written in full, for the count of dropped ones if a write fails
        try:
            if self.rotation is None:
                self._write_all(data)
                return
            limit = self.rotation.max_size
            if not isinstance(data, bytes):  # a view of the sink's buffer: rfind and count below
                data = bytes(data)
            size = os.fstat(self.fd).st_size  # not a cached figure: copytruncate may have run
            start, n = 0, len(data)
            while start < n:
                if size + n - start <= limit:
                    self._write_all(data[start:])
                    return
                # the longest run of whole records that fits in what is left of this file
                room = limit - size
                cut = data.rfind(b"\n", start, start + room) + 1 if room > 0 else 0
                if cut > start:
                    self._write_all(data[start:cut])
                    done += data.count(b"\n", start, cut)
                    start = cut
                elif size == 0:
                    # a record larger than the limit by itself: a file of its own
                    end = data.find(b"\n", start) + 1 or n
                    self._write_all(data[start:end])
                    done += 1
                    start = end
                if start < n:  # the next record does not fit here
                    if self.rotate():
                        size = 0
                    else:  # cannot rotate (said once): write on into this file
                        self._write_all(data[start:])
                        return
        except OSError as e:
            raise WriteFailed(e, done) from None

    # -- rotating and reopening ---------------------------------------------------------------
    def _is_ours(self, name: str) -> bool:
        """Whether `name` in our directory is still the file we have open."""
        try:
            st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(self.fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def rotate(self) -> bool:
        """FILE -> FILE.1 -> ... -> FILE.N (the oldest dropped), then a new FILE. False when it
        could not be done (said once on stderr; writing goes on into the current file)."""
        n = self.rotation.max_backups
        d = self.dir_fd
        try:
            if self._is_ours(self.name):
                if n == 0:
                    os.unlink(self.name, dir_fd=d)
                else:
                    # Shift only the backups there are (FILE.1 .. FILE.top, up to the first gap):
                    # the rename onto FILE.N drops the oldest.
                    top = 0
                    while top < n and self._exists(f"{self.name}.{top + 1}"):
                        top += 1
                    for i in range(min(top, n - 1), 0, -1):
                        os.rename(f"{self.name}.{i}", f"{self.name}.{i + 1}", src_dir_fd=d, dst_dir_fd=d)
                    os.rename(self.name, f"{self.name}.1", src_dir_fd=d, dst_dir_fd=d)
            new = self._open(self.path, dir_fd=d, name=self.name, exclusive=True)
        except OSError as e:
            self._warn(f"cannot rotate {self.path} ({e.strerror}); writing on into it")
            return False
        except Exception as e:  # OutputRefused: something was planted at FILE meanwhile
            self._warn(f"cannot rotate {self.path} ({e}); writing on into the old file")
            return False
        os.close(self.fd)
        self.fd = new
        self.rotations += 1
        return True

    def reopen(self) -> None:
        """After SIGHUP: FILE by name again (a new one if it was renamed away)."""
        self.generation = _generation
        if self._is_ours(self.name):
            return
        try:
            new = self._open(self.path, dir_fd=self.dir_fd, name=self.name)
        except Exception as e:  # noqa: BLE001 - keep writing where we can, and say so
            self._warn(f"cannot reopen {self.path} ({e}); writing on into the old file")
            return
        os.close(self.fd)
        self.fd = new
        self.reopens += 1

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            print(f"procsentry: {message}", file=sys.stderr)

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            try:
                os.close(fd)
            except OSError as e:
                if e.errno != errno.EBADF:
                    raise
