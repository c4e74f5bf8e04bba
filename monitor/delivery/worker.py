"""One destination: its spool, the drop policy, and the thread that delivers.

The pipeline thread calls offer() with each flushed batch: a size check and one write(2) to
the spool, never anything that waits for the network. The worker thread reads the spool from
the ack cursor, sends windows of events, and moves the cursor only for what the destination
acknowledged.

Drop policy when the spool is full: drop the newest. Events that do not fit are counted, and
once space is back a `dropped` record (first_seq, last_seq, count) takes their place in the
stream. Keeping the oldest keeps the beginning of an incident (the first shell, the first
download); a flood that fills the spool cannot push that evidence out, and what it hides is
reported as a gap.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from monitor.delivery.relp import RelpTransport
from monitor.delivery.spool import HDR, Record, Spool
from monitor.delivery.state import StateDir
from monitor.delivery.syslog_tls import SyslogTLSTransport
from monitor.delivery.transport import DeliveryError, Outcome, Transport
from monitor.delivery.urls import Destination
from monitor.events import DestinationStats

log = logging.getLogger(__name__)

# Room kept free for `dropped` records, so the record that reports a gap always fits.
MARKER_RESERVE = 4096
# What a syslog header adds to the JSON (PRI, timestamp, hostname, app, pid, msgid): counted
# against max_size, as rsyslog's maxMessageSize applies to the whole message.
SYSLOG_OVERHEAD = 400


@dataclass
class Options:
    spool_size: int = 256 << 20
    drain_rate: float = 10000.0  # events per second at most (0: no cap)
    window: int = 1024  # events in flight per round trip
    timeout: float = 10.0  # connect, handshake and acknowledgement timeout
    retry_initial: float = 0.5
    retry_max: float = 30.0
    close_grace: float = 3.0  # at shutdown, how long to keep delivering what is pending


class Backoff:
    """Exponential backoff with full jitter (a random wait up to the current ceiling), so a
    fleet that lost its collector at the same moment does not reconnect in lockstep."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial, self.cap = initial, cap
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.initial * (2 ** self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class TokenBucket:
    """At most `rate` events per second, with a burst of a tenth of a second's worth (at least
    one window): a backlog drains at the rate, not at the rate plus a second's burst."""

    def __init__(self, rate: float, window: int = 1) -> None:
        self.rate = rate
        self.burst = max(rate / 10, window)
        self.tokens = self.burst
        self.at = time.monotonic()

    def available(self) -> int:
        if self.rate <= 0:
            return 1 << 30
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return int(self.tokens)

    def take(self, n: int) -> None:
        if self.rate > 0:
            self.tokens -= n

    def wait_s(self) -> float:
        return 0.0 if self.rate <= 0 else max(0.001, (1 - self.tokens) / self.rate)


def make_transport(dest: Destination, timeout: float, hostname: str) -> Transport:
    if dest.scheme.startswith("relp"):
        return RelpTransport(dest, timeout, hostname)
    if dest.scheme.startswith("redis"):
        # redis-py (and the asyncio it imports) was ~9 MB of the daemon's RSS: only for redis.
        from monitor.delivery.redis_dest import RedisTransport  # noqa: PLC0415
        return RedisTransport(dest, timeout)
    if dest.scheme == "syslog+tls":
        return SyslogTLSTransport(dest, timeout, hostname)
    raise ValueError(dest.scheme)


class Channel:
    def __init__(self, dest: Destination, state: StateDir, hostname: str, opts: Options,
                 marker: Callable[[str, str, int, int, int], bytes]) -> None:
        self.dest = dest
        self.opts = opts
        self._marker = marker  # (destination, reason, first, last, count) -> encoded dropped event
        label = f"{state.path}/spool/{dest.spool_name}"
        self.spool = Spool(state.spool_dir(dest.spool_name), label, opts.spool_size)
        self.transport = make_transport(dest, opts.timeout, hostname)
        self.limit = dest.max_size - (SYSLOG_OVERHEAD if not dest.scheme.startswith("redis") else 0)
        # figures (each written by one thread only; read for stats)
        self.acknowledged = 0
        self.reconnects = 0
        # Each counter has one writing thread: spool_full and too_large the pipeline's (offer),
        # refused the worker's. `dropped` in stats is their sum.
        self.spool_full = 0
        self.too_large = 0
        self.refused = 0
        self.resent = 0
        self.duplicates = 0
        self.connected = False
        self.last_error: str | None = None
        self._run_first = self._run_last = self._run_count = 0  # the open spool_full run
        self._sent_high = self._spool_end()  # records up to here may have arrived already
        self._stop = threading.Event()
        self._stop_by = float("inf")
        self.thread = threading.Thread(target=self._work, name=f"procsentry deliver {dest.url}", daemon=True)

    def _spool_end(self) -> tuple[int, int]:
        return (self.spool.write_seg, self.spool.sizes.get(self.spool.write_seg, 0))

    def start(self) -> None:
        self.thread.start()

    # -- the pipeline thread ---------------------------------------------------------------------
    def offer(self, batch: list[tuple[int, bytes]]) -> None:
        """Spool a flushed batch (seq, encoded JSON line). Never waits for the destination."""
        out: list[tuple[int, int, bytes]] = []
        used = self.spool.bytes
        cap = self.spool.capacity

        def fits(n: int, reserve: int) -> bool:
            return used + HDR.size + n <= cap - reserve

        if self._run_count:
            used = self._close_run(out, used)
        for seq, payload in batch:
            if len(payload) > self.limit:
                # Larger than the destination accepts: a cut event would be a lie, so the
                # event is replaced by a `dropped` record with reason too_large.
                m = self._marker(self.dest.url, "too_large", seq, seq, 1)
                self.too_large += 1
                if fits(len(m), MARKER_RESERVE):
                    out.append((seq, 0, m))
                    used += HDR.size + len(m)
                continue
            if self._run_count:
                used = self._close_run(out, used)
            if not self._run_count and fits(len(payload), MARKER_RESERVE):
                out.append((seq, 0, payload))
                used += HDR.size + len(payload)
            else:
                if not self._run_count:
                    self._run_first = seq
                self._run_last = seq
                self._run_count += 1
                self.spool_full += 1
        self.spool.append(out)

    def _close_run(self, out, used, force: bool = False) -> int:
        """Space is back: the `dropped` record of the run goes in before the next event.
        Its stream position is (last_seq, 1): after every seq before the gap, before the next.
        The run ends only once a sixteenth of the spool is free again (space returns a segment
        at a time), so a full spool gives one long run, not a marker between every event."""
        m = self._marker(self.dest.url, "spool_full", self._run_first, self._run_last, self._run_count)
        cap = self.spool.capacity
        room = cap - (0 if force else MARKER_RESERVE + cap // 16)
        if used + HDR.size + len(m) <= room:
            out.append((self._run_last, 1, m))
            self._run_count = 0
            return used + HDR.size + len(m)
        return used

    # -- the worker thread -----------------------------------------------------------------------
    def _work(self) -> None:
        # A bug or an unforeseen library error must not end delivery for good: it is reported
        # in stats, the connection is dropped, and the worker starts over from the ack cursor.
        while True:
            try:
                self._deliver_loop()
                return
            except Exception as e:  # noqa: BLE001
                log.exception("delivery to %s failed", self.dest.url)
                self.last_error = f"internal error: {type(e).__name__}: {e}"
                try:
                    self.transport.close()
                except Exception:  # noqa: BLE001
                    pass
                self.connected = False
                if self._stop.wait(self.opts.retry_initial) and time.monotonic() > self._stop_by:
                    return

    def _deliver_loop(self) -> None:
        backoff = Backoff(self.opts.retry_initial, self.opts.retry_max)
        bucket = TokenBucket(self.opts.drain_rate, self.opts.window)
        pos = self.spool.acked_pos
        ever_connected = False
        stalls = 0  # established sessions in a row that ended without any acknowledgement
        substitute: dict[int, bytes] = {}  # seq -> `dropped` record sent in place of a refused event
        while True:
            if self._stop.is_set() and (time.monotonic() > self._stop_by or self.spool.pending == 0):
                break
            if not self.connected:
                try:
                    self.transport.connect()
                except DeliveryError as e:
                    self.last_error = str(e)
                    self._stop.wait(min(backoff.next(), max(0.0, self._stop_by - time.monotonic())))
                    continue
                if ever_connected:
                    self.reconnects += 1
                ever_connected = True
                self.connected = True
                pos = self.spool.acked_pos  # resend everything not acknowledged
            n = min(self.opts.window, bucket.available())
            if n <= 0:
                time.sleep(bucket.wait_s())
                continue
            if stalls:
                n = 1  # probe with the head event alone: is it the one the server rejects?
            records = self.spool.read(pos, n, 8 << 20)
            if not records:
                with self.spool.data_ready:
                    # Wait for the writer; never spin (if the spool says there is more but
                    # nothing could be read, the short wait keeps this from eating a CPU).
                    idle = self.spool.end_locked() <= pos
                    self.spool.data_ready.wait((0.2 if idle else 0.01) if not self._stop.is_set() else 0.05)
                continue
            if stalls >= 3 and records[0].seq not in substitute:
                # The server took the session down three times on this event alone: it will
                # never accept it. Send a `dropped` record in its place; count the loss.
                r = records[0]
                substitute[r.seq] = self._marker(self.dest.url, "refused", r.seq, r.seq, 1)
                self.refused += 1
                self.last_error = f"seq {r.seq} refused by the destination (it closed the session on it)"
            sending = [Record(r.seq, r.sub, substitute.get(r.seq, r.payload), r.end) if r.sub == 0 else r
                       for r in records]
            bucket.take(len(sending))
            outcomes = self.transport.deliver(sending)
            self._account(records, outcomes, substitute)
            if outcomes:
                pos = records[len(outcomes) - 1].end
                self.spool.ack(pos, len(outcomes))
                stalls = 0
                backoff.reset()
                for r in records[:len(outcomes)]:
                    substitute.pop(r.seq, None)
            if self.transport.broken is not None:
                if not outcomes and self.transport.peer_closed:
                    stalls += 1  # the server ended the session under this window
                self.last_error = self.transport.broken
                self.transport.close()
                self.connected = False
                self._stop.wait(min(backoff.next(), max(0.0, self._stop_by - time.monotonic())))
        self.transport.close()
        self.connected = False

    def _account(self, records: list[Record], outcomes: list[Outcome], substitute: dict[int, bytes]) -> None:
        refused_now = []
        for i, (r, o) in enumerate(zip(records, outcomes)):
            if r.end <= self._sent_high:
                self.resent += 1
            if o is Outcome.OK:
                self.acknowledged += 1
            elif o is Outcome.DUPLICATE:
                self.duplicates += 1
                self.acknowledged += 1
            else:
                refused_now.append((r, self.transport.refusals.get(i, "refused")))
        sent_to = records[len(outcomes) - 1].end if outcomes else None
        if len(outcomes) < len(records):
            sent_to = records[-1].end  # sent, answer unknown: a resend may duplicate them
        if sent_to and sent_to > self._sent_high:
            self._sent_high = sent_to
        for r, why in refused_now:
            # Refused by the destination with an answer (not a broken session): put a
            # `dropped` record in its place, once; a refused marker is counted and given up.
            self.refused += 1
            self.last_error = f"seq {r.seq} refused: {why}"
            if r.seq in substitute:
                continue
            m = self._marker(self.dest.url, "refused", r.seq, r.seq, 1)
            again = self.transport.deliver([Record(r.seq, r.sub, m, r.end)])
            if again == [Outcome.OK] or again == [Outcome.DUPLICATE]:
                self.acknowledged += 1

    # -- both ------------------------------------------------------------------------------------
    def figures(self) -> DestinationStats:
        return DestinationStats(
            acknowledged=self.acknowledged, pending=max(0, self.spool.pending), spool_bytes=self.spool.bytes,
            reconnects=self.reconnects, dropped=self.spool_full + self.too_large + self.refused, too_large=self.too_large, resent=self.resent,
            duplicates=self.duplicates, connected=self.connected, last_error=self.last_error)

    def stop(self) -> None:
        """Deliver what is pending for up to close_grace seconds more, then stop (the rest
        stays in the spool for the next start). Returns at once; close() waits."""
        if not self._stop.is_set():
            self._stop_by = time.monotonic() + self.opts.close_grace
            self._stop.set()
            with self.spool.data_ready:
                self.spool.data_ready.notify_all()

    def close(self) -> None:
        self.stop()
        if self.thread.is_alive():
            # A worker blocked on a silent destination is left behind (a daemon thread) rather
            # than holding up the exit; what it had not delivered is still in the spool.
            self.thread.join(max(0.0, self._stop_by - time.monotonic()) + 0.5)
        if self._run_count:
            # Still dropping at exit: the record of the gap goes to the spool (its reserve is
            # kept for this), so the next start delivers it.
            out: list = []
            self._close_run(out, self.spool.bytes, force=True)
            self.spool.append(out)
        if not self.thread.is_alive():
            self.spool.close()
