"""A RELP client (the Reliable Event Logging Protocol of rsyslog's imrelp), on socket/ssl.

No maintained Python client exists and the protocol is small (librelp's doc/relp.html):

    frame    = TXNR SP COMMAND SP DATALEN [SP DATA] LF
    open     offers relp_version=0, relp_software, commands=syslog; answered "rsp 200 OK"+offers
    syslog   one message per frame; answered, in order, by "TXNR rsp 6 200 OK"
    close    answered by "rsp 0"; the server may also send "0 serverclose 0" when it stops

TXNR counts from 1 (the open) to 999 999 999 and wraps to 1. A window of frames is sent in
one write and the answers are read as they come; rsyslog answers once the message is
enqueued (its issue #3941), which with a Direct queue and synchronous omfile is after the
write.
"""
from __future__ import annotations

import socket
import ssl
import time

from monitor.delivery import syslog5424
from monitor.delivery.transport import DeliveryError, Outcome, Transport, connect_socket

MAX_TXNR = 999_999_999
OFFER = b"relp_version=0\nrelp_software=procsentry,1,https://procsentry.invalid\ncommands=syslog"


class ProtocolError(DeliveryError):
    pass


def frame(txnr: int, command: bytes, data: bytes = b"") -> bytes:
    if data:
        return b"%d %s %d %s\n" % (txnr, command, len(data), data)
    return b"%d %s 0\n" % (txnr, command)


def parse_frames(buf: bytearray) -> list[tuple[int, bytes, bytes]]:
    """Complete frames at the front of buf (consumed); a partial frame stays for the next read.
    Raises ProtocolError on bytes that cannot be RELP."""
    out = []
    while True:
        head_end = -1
        # TXNR SP COMMAND SP DATALEN then SP or LF: find the third field's end.
        sp1 = buf.find(b" ", 0, 12)
        if sp1 < 0:
            if len(buf) >= 12 or (buf and not buf[:len(buf)].strip(b"0123456789") == b""):
                raise ProtocolError(f"not a RELP frame: {bytes(buf[:40])!r}")
            return out
        sp2 = buf.find(b" ", sp1 + 1, sp1 + 34)
        if sp2 < 0:
            if len(buf) > sp1 + 34:
                raise ProtocolError(f"not a RELP frame: {bytes(buf[:40])!r}")
            return out
        i = sp2 + 1
        while i < len(buf) and 48 <= buf[i] <= 57:
            i += 1
        if i == len(buf):
            return out  # DATALEN not complete yet
        if i == sp2 + 1 or i - sp2 > 10 or buf[i] not in (0x20, 0x0A):
            raise ProtocolError(f"bad RELP DATALEN: {bytes(buf[:40])!r}")
        try:
            txnr = int(buf[:sp1])
        except ValueError:
            raise ProtocolError(f"bad RELP TXNR: {bytes(buf[:40])!r}") from None
        command = bytes(buf[sp1 + 1:sp2])
        datalen = int(buf[sp2 + 1:i])
        if datalen == 0:
            # "TXNR cmd 0\n" (some peers also put a space before the LF)
            head_end = i + (1 if buf[i] == 0x0A else 2)
            if buf[i] == 0x20 and len(buf) < i + 2:
                return out
            data = b""
        else:
            if buf[i] != 0x20:
                raise ProtocolError(f"bad RELP frame: {bytes(buf[:40])!r}")
            end = i + 1 + datalen
            if len(buf) < end + 1:
                return out
            if buf[end] != 0x0A:
                raise ProtocolError(f"RELP frame not terminated by LF: {bytes(buf[:40])!r}")
            data = bytes(buf[i + 1:end])
            head_end = end + 1
        del buf[:head_end]
        out.append((txnr, command, data))


class RelpTransport(Transport):
    def __init__(self, dest, timeout: float, hostname: str) -> None:
        super().__init__(dest, timeout)
        self.tls = dest.scheme == "relp+tls"
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.txnr = 0
        self.fields = syslog5424.header_fields(hostname)
        self.server_software = ""

    def _next_txnr(self) -> int:
        self.txnr = self.txnr % MAX_TXNR + 1
        return self.txnr

    def connect(self) -> None:
        self.broken = None
        self.peer_closed = False
        self.buf.clear()
        self.txnr = 0
        self.sock = connect_socket(self.dest, self.timeout, self.tls)
        try:
            t = self._next_txnr()
            self.sock.sendall(frame(t, b"open", OFFER))
            answers = self._read_until(lambda got: any(a[0] == t for a in got), time.monotonic() + self.timeout)
            rsp = next(a for a in answers if a[0] == t)
            if rsp[1] != b"rsp" or not rsp[2].startswith(b"200"):
                raise DeliveryError(f"RELP open refused: {rsp[2][:200].decode(errors='replace')}")
            for line in rsp[2].split(b"\n"):
                if line.startswith(b"relp_software="):
                    self.server_software = line[14:].decode(errors="replace")
                if line.startswith(b"commands=") and b"syslog" not in line[9:].split(b","):
                    raise DeliveryError("RELP server does not offer the syslog command")
        except DeliveryError:
            self.close()
            raise
        except (OSError, socket.timeout) as e:
            self.close()
            raise DeliveryError(f"RELP open: {_why(e)}") from None

    def _read_until(self, done, deadline: float) -> list[tuple[int, bytes, bytes]]:
        got: list[tuple[int, bytes, bytes]] = []
        while not done(got):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeliveryError(f"no RELP answer within {self.timeout:g}s")
            self.sock.settimeout(min(remaining, self.timeout))
            try:
                # rsyslog writes each rsp separately and its socket has Nagle on: the second
                # rsp waits until we ACK the first, and a delayed ACK is 40 ms. Quick ACKs
                # (re-armed before every read: the kernel drops the mode by itself) took a
                # window of a few messages from 42 ms to under 1 ms here.
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
                chunk = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                raise DeliveryError(f"no RELP answer within {self.timeout:g}s") from None
            if not chunk:
                raise _PeerClosed("the RELP server closed the connection")
            self.buf += chunk
            for f in parse_frames(self.buf):
                if f[1] == b"serverclose":
                    got.append(f)
                    raise _ServerClose(got)
                got.append(f)
        return got

    def deliver(self, records: list) -> list[Outcome]:
        self.refusals = {}
        ts = syslog5424.timestamp()
        first = None
        frames = []
        for r in records:
            t = self._next_txnr()
            if first is None:
                first = t
            frames.append(frame(t, b"syslog", syslog5424.message(self.fields, r.payload, ts)))
        expect = {(first - 1 + i) % MAX_TXNR + 1: i for i in range(len(records))}
        results: dict[int, Outcome] = {}

        def prefix() -> list[Outcome]:
            out = []
            for i in range(len(records)):
                if i not in results:
                    break
                out.append(results[i])
            return out

        def absorb(got) -> None:
            for txnr, command, data in got:
                i = expect.get(txnr)
                if i is None or command != b"rsp":
                    continue
                if data.startswith(b"200"):
                    results[i] = Outcome.OK
                else:
                    results[i] = Outcome.REFUSED
                    self.refusals[i] = data[:200].decode(errors="replace")
            got.clear()

        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(b"".join(frames))
            deadline = time.monotonic() + self.timeout
            while len(results) < len(records):
                got = self._read_until(lambda g: len(g) > 0, deadline)
                absorb(got)
                deadline = time.monotonic() + self.timeout  # progress: the server is alive
        except _ServerClose as e:
            # rsyslog sends serverclose when it stops, and also when it aborts a session on a
            # frame above its maxDataSize (imrelp oversizeMode="abort"): the worker tells them
            # apart by probing with that event alone.
            absorb(e.got)
            self.broken = "the RELP server closed the session (serverclose)"
            self.peer_closed = True
        except _PeerClosed as e:
            self.broken = str(e)
            self.peer_closed = True
        except DeliveryError as e:
            self.broken = str(e)
        except (ConnectionResetError, BrokenPipeError) as e:
            self.broken = f"RELP: {_why(e)}"
            self.peer_closed = True
        except (OSError, socket.timeout) as e:
            self.broken = f"RELP: {_why(e)}"
        return prefix()

    def close(self) -> None:
        if self.sock is None:
            return
        if self.broken is None:
            try:
                # A polite close so the server does not log an aborted session; best effort.
                self.sock.settimeout(1.0)
                self.sock.sendall(frame(self._next_txnr(), b"close"))
                self.sock.recv(256)
            except (OSError, socket.timeout):
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.sock = None


class _PeerClosed(DeliveryError):
    pass


class _ServerClose(DeliveryError):
    def __init__(self, got) -> None:
        super().__init__("serverclose")
        self.got = got


def _why(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
