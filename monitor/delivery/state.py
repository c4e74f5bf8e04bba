"""The state directory (default /var/lib/procsentry): the per-host seq and the spools.

procsentry runs as root, so every file here is opened relative to a directory descriptor that
was checked once, with O_NOFOLLOW, and then checked again with fstat: a symlink or a file
planted by another user (to make root append to /etc/shadow, or to feed a forged ack cursor)
is refused with one line, never written through. Everything is created 0600/0700: spools hold
every command line on the host, secrets included.
"""
from __future__ import annotations

import fcntl
import os
import socket

from monitor.events import Host
from monitor.trusted import Untrusted, open_own_dir, open_own_file


def default_state_dir() -> str:
    """$PROCSENTRY_STATE_DIR, else /var/lib/procsentry for root and the XDG state directory
    for anyone else (the poll sensor runs without privileges)."""
    if os.environ.get("PROCSENTRY_STATE_DIR"):
        return os.environ["PROCSENTRY_STATE_DIR"]
    if os.geteuid() == 0:
        return "/var/lib/procsentry"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "procsentry")


# The directory checks are monitor/trusted.py's; a StateError is its Untrusted, so that one
# `except StateError` covers a refused directory and a refused state file alike.
StateError = Untrusted
open_dir = open_own_dir
open_file = open_own_file


def read_host() -> Host:
    mid = None
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, "rb") as f:
                value = f.read(64).strip().decode("ascii", "replace")
            if value:
                mid = value
                break
        except OSError:
            continue
    return Host(name=socket.gethostname(), machine_id=mid)


class StateDir:
    """The locked state directory. One procsentry per state directory: two would hand out the
    same seq numbers, so the second is refused."""

    def __init__(self, path: str) -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, 0o755, exist_ok=True)
        except OSError as e:
            raise StateError(f"--state-dir {path}: cannot create {parent} ({e.strerror})") from None
        self.fd = open_dir(os.path.abspath(path))
        self._lock_fd = open_file(self.fd, "lock", os.O_RDWR | os.O_CREAT, f"{path}/lock")
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            os.close(self.fd)
            raise StateError(f"{path} is in use by another procsentry (each needs its own --state-dir)") from None
        self._spool_fd: int | None = None

    def spool_dir(self, name: str) -> int:
        if self._spool_fd is None:
            self._spool_fd = open_dir("spool", self.fd)
        return open_dir(name, self._spool_fd)

    def close(self) -> None:
        for fd in (self._spool_fd, self._lock_fd, self.fd):
            if fd is not None:
                os.close(fd)
        self._spool_fd = None


class Sequencer:
    """The per-host event counter, +1 per emitted event, persisted in STATE/seq.

    persist() rewrites the file in place (pwrite of a fixed-width number) before the events
    numbered so far are handed to any output, so a restart, even after kill -9, continues
    after the last number that could have been seen. (After a power loss the page cache may
    lose the last write; the file is fsynced at clean shutdown.)
    """

    WIDTH = 20

    def __init__(self, state: StateDir) -> None:
        self._fd = open_file(state.fd, "seq", os.O_RDWR | os.O_CREAT, f"{state.path}/seq")
        raw = os.pread(self._fd, 64, 0).strip()
        if raw and not raw.isdigit():
            raise StateError(f"{state.path}/seq: not a number ({raw[:20]!r}); move it away to restart numbering")
        self.last = int(raw) if raw else 0
        self._persisted = self.last

    def next(self) -> int:
        self.last += 1
        return self.last

    def persist(self) -> None:
        if self.last != self._persisted:
            os.pwrite(self._fd, f"{self.last:0{self.WIDTH}d}\n".encode(), 0)
            self._persisted = self.last

    def close(self) -> None:
        if self._fd >= 0:
            self.persist()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
