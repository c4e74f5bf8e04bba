"""Where records become bytes on a stream, and the one policy for turning a process's bytes
into text.

Records carry text: the pipeline decodes comm, exe, argv and paths once, with text() below,
when a process enters the process table (so fork and exit events, and every descendant's
ancestry, reuse the decoded strings and orjson serialises them natively, without a Python
callback per byte string). Text policy: byte strings a process chose (comm, argv, paths) are decoded as UTF-8 with
``backslashreplace``: valid UTF-8 (newlines and escape sequences included) is kept exactly, and
JSON escapes control characters, so a hostile argv cannot break a line or the JSON. An invalid
byte becomes the four characters ``\\xNN``; because that is ambiguous with a literal backslash,
exec events whose argv is not valid UTF-8 also carry ``argv_raw`` (base64 of the exact bytes,
NUL-separated), so nothing is lost. ``surrogateescape`` must never reach orjson: it rejects
lone surrogates.
"""
from __future__ import annotations

import base64
import errno
import os
import sys
import time
from typing import IO, Any

import orjson

from monitor.events import ExitEvent, LostEvent, ProcessEvent, StatsEvent


def text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def text_or_none(b: bytes | str | None) -> str | None:
    """text() for optional values; str passes through (already decoded by this policy)."""
    if b is None or isinstance(b, str):
        return b
    return b.decode("utf-8", "backslashreplace")


def texts(seq: tuple[bytes, ...] | None) -> tuple[str, ...] | None:
    if seq is None:
        return None
    return tuple(b.decode("utf-8", "backslashreplace") for b in seq)


def argv_raw(argv: tuple[bytes, ...] | None) -> str | None:
    """base64 of NUL-joined argv when some element is not valid UTF-8, else None."""
    if not argv:
        return None
    try:
        for a in argv:
            a.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(b"\0".join(argv)).decode("ascii")
    return None


def _default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode("utf-8", "backslashreplace")
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def to_json(record: Any) -> bytes:
    return orjson.dumps(record, default=_default, option=orjson.OPT_APPEND_NEWLINE)


# -- text format ------------------------------------------------------------------------------
_CONTROL = {i: f"\\x{i:02x}" for i in range(0x20)}
_CONTROL.update({0x7F: "\\x7f", ord("\\"): "\\\\", ord("\n"): "\\n", ord("\t"): "\\t"})
# C1 controls (U+0080-U+009F) are also interpreted by many terminals.
_CONTROL.update({i: f"\\u{i:04x}" for i in range(0x80, 0xA0)})


def safe(b: bytes | str | None) -> str:
    """Terminal-safe text: no control character survives, so argv cannot move the cursor."""
    if b is None:
        return "-"
    s = text(b) if isinstance(b, (bytes, bytearray)) else b
    return s.translate(_CONTROL)


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


class Sink:
    """Writes encoded records to stdout or a file and counts what could not be written.

    A full disk or a vanished NFS server is no reason to stop watching: failed writes are
    counted (and reported in `stats` on stderr's copy if stdout is the failing stream).
    A closed pipe (`| head -3`) is the reader's way of saying stop: BrokenPipe propagates.
    """

    def __init__(self, fmt: str = "auto", path: str | None = None, stream: IO[bytes] | None = None):
        if path:
            # 0600: the stream holds every command line on the host, secrets included.
            self.stream: IO[bytes] | None = None
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
        self._owns_fd = bool(path)
        if fmt == "auto":
            fmt = "text" if (not path and os.isatty(self._fd if self._fd is not None else -1)) else "json"
        self.format = fmt
        self.encode = {"text": to_text, "ps": to_ps}.get(fmt, to_json)
        self.dropped_writes = 0
        self._pending: list[bytes] = []
        self._last_error_report = 0.0
        if fmt == "ps":
            self._pending.append(PS_HEADER.encode())

    def write(self, record: Any) -> None:
        self._pending.append(self.encode(record))

    def write_encoded(self, data: bytes) -> None:
        """An already encoded line (the delivery fan-out encodes once for every output)."""
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        n = len(self._pending)
        self._pending.clear()
        try:
            if self._fd is not None:
                view = memoryview(data)
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
            self.dropped_writes += n
            now = time.monotonic()
            if now - self._last_error_report > 10:
                self._last_error_report = now
                print(f"procsentry: cannot write events ({e.strerror}); "
                      f"{self.dropped_writes} dropped so far", file=sys.stderr)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._fd is not None and self._owns_fd:
                os.close(self._fd)
            self._fd = None
