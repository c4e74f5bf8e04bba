"""Where records become bytes on a stream: JSON lines (orjson), terminal text, or `ps` lines.

What a process chose is already text when it reaches a record (monitor/text.py is the policy);
the text formats escape it once more for terminals with text.safe().
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import time
from typing import IO, Any

import orjson

from monitor.events import AlertEvent, ExitEvent, LostEvent, ProcessEvent, StatsEvent
from monitor.rotate import RotatingFile, Rotation
from monitor.text import safe


def _default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode("utf-8", "backslashreplace")
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def to_json(record: Any) -> bytes:
    return orjson.dumps(record, default=_default, option=orjson.OPT_APPEND_NEWLINE)


def to_text(record: Any) -> bytes:
    if isinstance(record, ProcessEvent):
        t = record.time[11:23]
        head = f"{t} {record.event:<8} {record.pid:>7} {record.ppid if record.ppid is not None else '-':>7} "
        who = f"{record.user or record.uid}"
        if isinstance(record, ExitEvent):
            if record.signal is not None:
                how = f"signal={record.signal}{' core' if record.core_dumped else ''}"
            else:
                how = f"code={record.exit_code}"
            dur = f"{record.duration_ns / 1e9:.3f}s" if record.duration_ns is not None else "?"
            tail = f"{safe(record.comm)} {how} after {dur}"
        else:
            argv = " ".join(safe(a) for a in record.argv) if record.argv is not None else "-"
            if record.argv_truncated:
                argv += " ..."
            tail = f"{safe(record.exe)} [{argv}] cwd={safe(record.cwd)}"
        return f"{head}{who:<10} {tail}\n".encode()
    if isinstance(record, AlertEvent):
        # The rule's author is part of every alert line: SigmaHQ's Detection Rule License
        # requires it wherever the rule's matches are shown.
        r = record.rule
        argv = " ".join(safe(a) for a in record.argv) if record.argv is not None else "-"
        tags = ",".join(t for t in r.tags if t.startswith("attack.t")) or "-"
        return (f"{record.time[11:23]} ALERT    {record.pid:>7} {r.level.upper()} {safe(r.title)} "
                f"[{r.id}, {tags}, by {safe(r.author) if r.author else 'unknown author'}] "
                f"{safe(record.user or str(record.uid))} {safe(record.exe)} [{argv}]\n").encode()
    if isinstance(record, LostEvent):
        return f"{record.time[11:23]} lost     cpu={record.cpu} count={record.count}\n".encode()
    if isinstance(record, StatsEvent):
        ev = " ".join(f"{k}={v}" for k, v in sorted(record.events.items()))
        return (f"{record.time[11:23]} stats    {ev} lost={record.lost} missed={record.missed} "
                f"inferred_exits={record.inferred_exits} cpu={record.cpu_time_s:.2f}s "
                f"rss={record.rss_bytes // 1024}KiB\n").encode()
    return to_json(record)


PS_HEADER = f"{'PID':>7} {'PPID':>7} {'USER':<10} {'S':1} {'THR':>4} {'RSS_KIB':>9} {'CONTAINER':<12} COMMAND\n"


def to_ps(record: Any) -> bytes:
    """One `ps`-like line per process, for `procsentry snapshot --format text`."""
    if not isinstance(record, ProcessEvent):
        return b""
    proc = record.proc
    state = (proc.state if proc and proc.state else "?")
    threads = proc.threads if proc and proc.threads is not None else "?"
    rss = proc.rss_bytes // 1024 if proc and proc.rss_bytes is not None else "?"
    if record.argv:
        cmd = " ".join(safe(a) for a in record.argv)
    else:
        cmd = f"[{safe(record.comm)}]"
    user = record.user or (str(record.uid) if record.uid is not None else "?")
    container = (record.container_id or "-")[:12]
    return f"{record.pid:>7} {record.ppid if record.ppid is not None else '-':>7} {user:<10.10} {state:1} {threads:>4} {rss:>9} {container:<12} {cmd}\n".encode()


class OutputRefused(Exception):
    """--output names something a root daemon must not write to (the message says why)."""


def open_output(path: str, dir_fd: int | None = None, name: str | None = None,
                exclusive: bool = False) -> int:
    """Open (or create, 0600) the events file for appending, the way a root daemon may.

    Running as root, a path in a world-writable directory could be a symlink or a FIFO planted
    by someone else to steer the event stream (every command line on the host) into a file of
    their choosing or to block the monitor. So: the last component is never followed
    (O_NOFOLLOW: a symlink fails with ELOOP), the open does not block (O_NONBLOCK, so a FIFO
    without a reader cannot hang us before it is refused), and what was opened must be a regular
    file owned by this user. An existing file readable by group or others is used, with a
    warning on stderr: the mode is the operator's to choose. monitor/rotate.py opens `name`
    relative to the directory it holds (dir_fd), and a new file after a rotation with exclusive
    (O_EXCL: only a file it creates itself).
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    if exclusive:
        flags |= os.O_EXCL
    try:
        fd = os.open(name or path, flags, 0o600, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputRefused(f"{path} is a symbolic link; give the file itself") from None
        if e.errno == errno.ENXIO:  # O_NONBLOCK write-open of a FIFO with no reader
            raise OutputRefused(f"{path} is not a regular file") from None
        raise OutputRefused(f"cannot open {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OutputRefused(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise OutputRefused(f"{path} is owned by uid {st.st_uid}, not by this user "
                                f"(uid {os.geteuid()})")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    if st.st_mode & 0o044:
        print(f"procsentry: warning: {path} is readable by group or others (mode "
              f"{stat.S_IMODE(st.st_mode):04o}); the events hold every command line on the host",
              file=sys.stderr)
    return fd


class Sink:
    """Writes encoded records to stdout or a file and counts what could not be written.

    A full disk or a vanished NFS server is no reason to stop watching: failed writes are
    counted (and reported in `stats` on stderr's copy if stdout is the failing stream).
    A closed pipe (`| head -3`) is the reader's way of saying stop: BrokenPipe propagates.
    """

    def __init__(self, fmt: str = "auto", path: str | None = None, stream: IO[bytes] | None = None,
                 rotation: Rotation | None = None):
        self._file: RotatingFile | None = None
        if path:
            # 0600: the stream holds every command line on the host, secrets included.
            self.stream: IO[bytes] | None = None
            self._file = RotatingFile(path, rotation)  # --max-size, SIGHUP: monitor/rotate.py
            self._fd = self._file.fd
        else:
            self.stream = stream if stream is not None else sys.stdout.buffer
            # Write with os.write on the descriptor: a signal arriving during a large buffered
            # write to a pipe made BufferedWriter drop the rest of the buffer without an error
            # (seen with CPython 3.11: 131072 of 2 MB written, no exception).
            try:
                self.stream.flush()
                self._fd = self.stream.fileno()
            except (AttributeError, OSError, ValueError):
                self._fd = None
        if fmt == "auto":
            fmt = "text" if (not path and os.isatty(self._fd if self._fd is not None else -1)) else "json"
        self.format = fmt
        self.encode = {"text": to_text, "ps": to_ps}.get(fmt, to_json)
        self.dropped_writes = 0
        # Encoded events not yet written: the one in-memory queue between the sensor and the
        # output. The pipeline flushes when it passes its bound (--output-buffer), so a reader
        # that stalls blocks the pipeline and the kernel's buffers fill and count what they
        # drop (lost events), instead of memory growing with the backlog. One bytearray, not
        # a list of the encoded events: orjson 3.13 returns each line in an allocation of
        # 8-16 KiB whatever its length (seen with tracemalloc), so holding them cost ~20x
        # their size (80 MB for 5,000 pending events).
        # The bytearray keeps its memory across flushes (the first _used bytes are pending):
        # emptied with clear() it was freed at every flush and grown again 12.5 % at a time,
        # each step a realloc that copied it or an mremap, and fresh pages to fault in. Under
        # a storm that was 5 % of the monitor's samples (py-spy), more when other work between
        # two events (detection) left no room to grow in place. It keeps at most the bound
        # (--output-buffer) plus one flush's overshoot.
        self._buf = bytearray()
        self._used = 0
        self._pending_events = 0
        self.pending_peak = 0
        self._last_error_report = 0.0
        if fmt == "ps":
            self._append(PS_HEADER.encode())

    @property
    def pending_bytes(self) -> int:
        return self._used

    def _append(self, data: bytes) -> None:
        used = self._used
        end = used + len(data)
        if end > len(self._buf):  # grow at least twofold: few resizes, then none
            grow = bytes(max(end, 2 * len(self._buf), 65536) - len(self._buf))
            try:
                self._buf.extend(grow)
            except BufferError:  # a view of it outlived a failed flush (held by a traceback)
                self._buf = self._buf[:used] + grow
        self._buf[used:end] = data
        self._used = end

    def write(self, record: Any) -> None:
        self._append(self.encode(record))
        self._pending_events += 1

    def write_encoded(self, data: bytes) -> None:
        """An already encoded line (the delivery fan-out encodes once for every output)."""
        self._append(data)
        self._pending_events += 1

    def flush(self) -> None:
        if not self._used:
            return
        if self._used > self.pending_peak:
            self.pending_peak = self._used
        self._flush(memoryview(self._buf)[:self._used])  # written from where it is: no copy

    def _flush(self, data: memoryview) -> None:
        n = self._pending_events
        self._used = 0
        self._pending_events = 0
        try:
            if self._file is not None:
                try:
                    self._file.write(data)
                finally:
                    self._fd = self._file.fd
            elif self._fd is not None:
                view = data
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
            else:
                self.stream.write(data)
                self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            if e.errno == errno.EPIPE:
                raise BrokenPipeError(e.errno, e.strerror) from None
            self.dropped_writes += n - getattr(e, "written", 0)  # rotate.WriteFailed: lines out
            now = time.monotonic()
            if now - self._last_error_report > 10:
                self._last_error_report = now
                print(f"procsentry: cannot write events ({e.strerror}); "
                      f"{self.dropped_writes} dropped so far", file=sys.stderr)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._file is not None:
                self._file.close()
            self._fd = None
