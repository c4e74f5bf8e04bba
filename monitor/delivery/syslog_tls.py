"""syslog+tls://: RFC 5424 messages over TLS with octet-counting framing (RFC 5425 section 4.3,
RFC 6587 3.4.1): `MSG-LEN SP SYSLOG-MSG`, as rsyslog's imtcp with a TLS driver receives them.

Best effort: syslog over TLS has no acknowledgement. An event counts as delivered once the
kernel accepted it on the socket; events in the socket buffers when the collector dies are
lost without anyone knowing. Use relp+tls:// where that matters.
"""
from __future__ import annotations

import socket

from monitor.delivery import syslog5424
from monitor.delivery.transport import DeliveryError, Outcome, Transport, connect_socket


class SyslogTLSTransport(Transport):
    unacknowledged = True

    def __init__(self, dest, timeout: float, hostname: str) -> None:
        super().__init__(dest, timeout)
        self.sock: socket.socket | None = None
        self.fields = syslog5424.header_fields(hostname)

    def connect(self) -> None:
        self.broken = None
        self.sock = connect_socket(self.dest, self.timeout, tls=True)

    def deliver(self, records: list) -> list[Outcome]:
        ts = syslog5424.timestamp()
        parts = []
        for r in records:
            msg = syslog5424.message(self.fields, r.payload, ts)
            parts.append(b"%d %s" % (len(msg), msg))
        try:
            self.sock.sendall(b"".join(parts))
        except (OSError, socket.timeout) as e:
            self.broken = f"syslog+tls: {'timed out' if isinstance(e, socket.timeout) else e}"
            return []
        return [Outcome.OK] * len(records)

    def close(self) -> None:
        if self.sock is not None:
            try:
                if self.broken is None:
                    # close_notify: the collector sees a clean end, not a truncation attack.
                    self.sock.settimeout(1.0)
                    self.sock.unwrap()
            except (OSError, ValueError):
                pass
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


__all__ = ["SyslogTLSTransport", "DeliveryError"]
