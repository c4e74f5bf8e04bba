"""The sink of `watch`: numbers every record, then hands it to every output.

It has the interface of monitor/output.py's Sink (write, flush, close, dropped_writes), so the
pipeline does not know whether events go to stdout, a file, or a collector across the
network. This is the one place seq is assigned: a record gets the next number as it is
written, and `seq` and `host` are spliced at the end of its encoded JSON (the record itself
is built without them; the schema lists them in monitor/events.py's Envelope).

Local outputs (stdout, files) are written in the pipeline thread as before. Each network
destination gets the encoded line through its Channel: a bounded spool on disk and a worker
thread, so a slow or dead collector never holds up the pipeline.
"""
from __future__ import annotations

from typing import Any

import orjson

from monitor.clock import Clock
from monitor.delivery.state import Sequencer, StateDir, read_host
from monitor.delivery.urls import Destination
from monitor.delivery.worker import Channel, Options
from monitor.events import DroppedEvent, StatsEvent
from monitor.output import Sink, to_json


class FanOut:
    def __init__(self, dests: list[Destination], fmt: str, state_dir: str, opts: Options | None = None,
                 rotation=None) -> None:
        self.opts = opts or Options()
        self._clock = Clock()
        self.host = read_host()
        self._host_json = orjson.dumps(self.host)
        self.state = StateDir(state_dir)
        self.locals: list[Sink] = []
        self.channels: list[Channel] = []
        try:
            self.seq = Sequencer(self.state)
            for d in dests:
                if d.scheme == "stdout":
                    self.locals.append(Sink(fmt))
                elif d.scheme == "file":
                    self.locals.append(Sink(fmt, d.path, rotation=rotation))
                else:
                    self.channels.append(Channel(d, self.state, self.host.name, self.opts, self._marker))
        except BaseException:
            self._close_quietly()
            raise
        self._batch: list[tuple[int, bytes]] = []
        self.pending_bytes = 0  # encoded bytes written since the last flush (--output-buffer)
        self.pending_peak = 0
        self._json_locals = [s for s in self.locals if s.encode is to_json]
        self._other_locals = [s for s in self.locals if s.encode is not to_json]

    def start(self) -> None:
        for c in self.channels:
            c.start()

    # -- the Sink interface -------------------------------------------------------------------
    @property
    def dropped_writes(self) -> int:
        return sum(s.dropped_writes for s in self.locals)

    @property
    def format(self) -> str:
        return self.locals[0].format if self.locals else "json"

    def stamp(self, body: bytes, seq: int | None) -> bytes:
        """The record's own fields + ,"seq":N,"host":{...}. body is orjson's `{...}\\n`.
        At the end, not the front: readers that look for `"event":"stats"` near the start
        of a line (bench/contenders.py does) keep working."""
        return b'%s,"seq":%s,"host":%s}\n' % (body[:-2], b"null" if seq is None else str(seq).encode(),
                                               self._host_json)

    def write(self, record: Any) -> None:
        if isinstance(record, StatsEvent):
            record.delivery = {c.dest.url: c.figures() for c in self.channels}
        seq = self.seq.next()
        line = self.stamp(to_json(record), seq)
        self._batch.append((seq, line))
        self.pending_bytes += len(line)
        for s in self._json_locals:
            s.write_encoded(line)
        for s in self._other_locals:
            s.write(record)

    def flush(self) -> None:
        # The new high-water mark is on disk before any of these numbers leaves the process.
        self.seq.persist()
        batch, self._batch = self._batch, []
        if self.pending_bytes > self.pending_peak:
            self.pending_peak = self.pending_bytes
        self.pending_bytes = 0
        for c in self.channels:
            try:
                c.offer(batch)
            except OSError as e:
                # The spool's disk failed (full, I/O error): the batch is lost for this
                # destination; counted like a full spool, never fatal for the pipeline.
                c.spool_full += len(batch)
                c.last_error = f"spool: {e.strerror or e}"
        for s in self.locals:
            s.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._close_quietly()

    def _close_quietly(self) -> None:
        errors = []
        for c in self.channels:
            c.stop()  # all at once: shutdown waits for the slowest destination, not their sum
        for c in self.channels:
            try:
                c.close()
            except Exception as e:  # noqa: BLE001 - close every output even if one fails
                errors.append(e)
        for s in self.locals:
            try:
                s.close()
            except BrokenPipeError as e:
                errors.append(e)
        if getattr(self, "seq", None) is not None:
            self.seq.close()
        self.state.close()
        for e in errors:
            raise e

    # -- for the channels ---------------------------------------------------------------------
    def _marker(self, destination: str, reason: str, first: int, last: int, count: int) -> bytes:
        """A `dropped` record for one destination: it carries no seq of its own (it is not an
        event every output sees), only the range it stands for."""
        rec = DroppedEvent(event="dropped", time=self._clock.now(), source="delivery", destination=destination,
                           reason=reason, first_seq=first, last_seq=last, count=count)
        return self.stamp(to_json(rec), None)
