"""A bounded on-disk queue of encoded events for one destination.

Layout under STATE/spool/<destination>/:
    0000000000000001.seg ...  segment files, appended in order, each record framed as
                              HDR (payload length, crc32 of payload, seq, sub) + payload
    acked                     the ack cursor "SEGMENT OFFSET": everything before it was
                              acknowledged by the destination

The pipeline thread appends (one write(2) per batch, to the page cache: it never waits for
the destination); the destination's worker thread reads from the ack cursor and moves the
cursor only after the destination acknowledged. Both write straight to the kernel (no user
space buffer), so `kill -9` of procsentry loses nothing appended: the next start reads the
cursor and replays the rest. A record torn by a crash mid-write (a full disk) fails its crc
and the segment is cut there. Space comes back a whole segment at a time, once every record
in it is acknowledged.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass

from monitor.delivery.state import StateError, open_file

log = logging.getLogger(__name__)

HDR = struct.Struct("<IIQI")  # payload length, crc32(payload), seq, sub (0 event, 1 dropped marker)
CURSOR_WIDTH = 41


@dataclass
class Record:
    seq: int
    sub: int
    payload: bytes
    end: tuple[int, int]  # (segment, offset) just after this record: the cursor once acked


def _seg_name(n: int) -> str:
    return f"{n:016d}.seg"


class Spool:
    def __init__(self, dir_fd: int, label: str, capacity: int, segment_size: int | None = None) -> None:
        self.dir_fd = dir_fd
        self.label = label
        self.capacity = capacity
        # Space is reclaimed per segment, so a segment is a fraction of the capacity.
        self.segment_size = segment_size or max(4096, min(16 << 20, capacity // 8))
        self._lock = threading.Lock()
        self.data_ready = threading.Condition(self._lock)
        self._cursor_fd = open_file(dir_fd, "acked", os.O_RDWR | os.O_CREAT, f"{label}/acked")
        self.acked_pos = self._read_cursor()
        self.sizes: dict[int, int] = {}  # segment -> bytes on disk
        self.pending = 0  # records after the ack cursor
        self.recovered = 0  # of which found at start (unacknowledged by the previous run)
        self._recover()
        seg, off = self.acked_pos
        if seg not in self.sizes or off > self.sizes[seg]:
            # The cursor's segment is gone (fully acknowledged and reclaimed): continue from the
            # next segment on disk, or a fresh one numbered after it.
            seg = min(self.sizes) if self.sizes else (seg + 1 if off else seg)
            self.acked_pos = (seg, 0)
            os.pwrite(self._cursor_fd, f"{seg:020d} {0:020d}\n".encode(), 0)
        self._open_write(max(self.sizes) if self.sizes else seg)

    # -- start-up -------------------------------------------------------------------------------
    def _read_cursor(self) -> tuple[int, int]:
        raw = os.pread(self._cursor_fd, 64, 0).split()
        if len(raw) == 2 and raw[0].isdigit() and raw[1].isdigit():
            return int(raw[0]), int(raw[1])
        if raw:
            raise StateError(f"{self.label}/acked: unreadable ack cursor; move the spool away to start afresh")
        return (1, 0)

    def _recover(self) -> None:
        names = sorted(n for n in os.listdir(self.dir_fd) if n.endswith(".seg"))
        seg0, off0 = self.acked_pos
        for name in names:
            stem = name[:-4]
            if not stem.isdigit():
                continue
            n = int(stem)
            if n < seg0:
                os.unlink(name, dir_fd=self.dir_fd)  # acknowledged before the crash
                continue
            fd = open_file(self.dir_fd, name, os.O_RDWR, f"{self.label}/{name}")
            try:
                valid, count = self._scan(fd, off0 if n == seg0 else 0)
                size = os.fstat(fd).st_size
                if valid < size:
                    os.ftruncate(fd, valid)  # a torn record from a crash: cut it
            finally:
                os.close(fd)
            self.sizes[n] = valid
            self.pending += count
        self.recovered = self.pending

    @staticmethod
    def _scan(fd: int, start: int) -> tuple[int, int]:
        """(offset after the last intact record, intact records after `start`)."""
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
        off, count = 0, 0
        while off + HDR.size <= len(data):
            length, crc, _seq, _sub = HDR.unpack_from(data, off)
            end = off + HDR.size + length
            if end > len(data) or zlib.crc32(data[off + HDR.size:end]) != crc:
                break
            if off >= start:
                count += 1
            off = end
        return off, count

    def _open_write(self, n: int) -> None:
        name = _seg_name(n)
        self._wfd = open_file(self.dir_fd, name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, f"{self.label}/{name}")
        size = os.fstat(self._wfd).st_size
        with self._lock:
            self.write_seg = n
            self.sizes.setdefault(n, size)

    # -- the pipeline side ----------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        with self._lock:  # the worker deletes segments from this dict
            return sum(self.sizes.values())

    def fits(self, nbytes: int, reserve: int = 0) -> bool:
        return self.bytes + HDR.size + nbytes <= self.capacity - reserve

    def append(self, records: list[tuple[int, int, bytes]]) -> None:
        """Write records (seq, sub, payload) the caller has checked with fits(). One write(2)
        per segment touched."""
        if not records:
            return
        chunk: list[bytes] = []
        size = 0
        with self._lock:
            caught_up = self.pending == 0 and self.sizes[self.write_seg] >= self.segment_size // 2
        if caught_up:
            # Everything so far is acknowledged: start a new segment so this one's space comes
            # back (space is reclaimed per segment). Only this thread, the writer, ever rotates:
            # rotating from the worker raced with a write in progress and corrupted the sizes.
            self._rotate()
        for seq, sub, payload in records:
            frame = HDR.pack(len(payload), zlib.crc32(payload), seq, sub) + payload
            if self.sizes[self.write_seg] + size + len(frame) > self.segment_size and \
                    (self.sizes[self.write_seg] + size) > 0:
                self._write(chunk, size)
                chunk, size = [], 0
                self._rotate()
            chunk.append(frame)
            size += len(frame)
        self._write(chunk, size)

    def _write(self, chunk: list[bytes], size: int) -> None:
        if not chunk:
            return
        data = b"".join(chunk)
        view = memoryview(data)
        while view:
            n = os.write(self._wfd, view)
            view = view[n:]
        with self._lock:
            self.sizes[self.write_seg] += size
            self.pending += len(chunk)
            self.data_ready.notify_all()

    def _rotate(self) -> None:
        os.close(self._wfd)
        with self._lock:
            nxt = self.write_seg + 1
        self._open_write(nxt)
        with self._lock:
            self._reclaim()


    def end_locked(self) -> tuple[int, int]:
        """Where the next record will go (call with data_ready held)."""
        return (self.write_seg, self.sizes.get(self.write_seg, 0))

    # -- the worker side ------------------------------------------------------------------------
    def read(self, pos: tuple[int, int], max_records: int, max_bytes: int) -> list[Record]:
        """Records after `pos`, in order, as far as they were completely written."""
        out: list[Record] = []
        seg, off = pos
        total = 0
        while len(out) < max_records and total < max_bytes:
            with self._lock:
                limit = self.sizes.get(seg)
                newer = [s for s in self.sizes if s > seg]
            if limit is None or off >= limit:
                if not newer:
                    break
                seg, off = min(newer), 0
                continue
            try:
                fd = os.open(_seg_name(seg), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
            except FileNotFoundError:
                break
            try:
                want = min(limit - off, max(max_bytes - total, HDR.size))
                data = os.pread(fd, want, off)
                i = 0
                if not data:
                    # Shorter on disk than accounted (cannot happen unless the file was cut
                    # behind our back): move on rather than spin on it forever.
                    log.warning("%s: segment %d ends at %d, expected %d", self.label, seg, off, limit)
                    with self._lock:
                        self.sizes[seg] = off
                    continue
                while i + HDR.size <= len(data) and len(out) < max_records and total < max_bytes:
                    length, crc, rseq, sub = HDR.unpack_from(data, i)
                    end = i + HDR.size + length
                    if end > len(data):
                        if i == 0:  # one record larger than the read budget: read it whole
                            data = os.pread(fd, HDR.size + length, off)
                            continue
                        break
                    payload = data[i + HDR.size:end]
                    out.append(Record(rseq, sub, payload, (seg, off + end)))
                    total += end - i
                    i = end
                off += i
            finally:
                os.close(fd)
            if i == 0:
                break
        return out

    def ack(self, pos: tuple[int, int], count: int) -> None:
        """The destination acknowledged `count` records up to `pos`: persist the cursor first,
        then free whole segments before it."""
        os.pwrite(self._cursor_fd, f"{pos[0]:020d} {pos[1]:020d}\n".encode(), 0)
        with self._lock:
            self.acked_pos = pos
            self.pending -= count
            self._reclaim()

    def _reclaim(self) -> None:
        seg, off = self.acked_pos
        for s in sorted(self.sizes):
            done = s < seg or (s == seg and off >= self.sizes[s] and s != self.write_seg)
            if not done or s == self.write_seg:
                continue
            try:
                os.unlink(_seg_name(s), dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
            del self.sizes[s]

    def close(self) -> None:
        for fd in (self._wfd, self._cursor_fd):
            try:
                os.fsync(fd)
            except OSError:
                pass
            os.close(fd)
