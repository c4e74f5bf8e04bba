"""What every destination's transport provides to the worker, and the shared TLS setup.

A transport turns a batch of spooled records into outcomes, in order. It returns the outcomes
of the prefix of the batch the destination answered; when it returns fewer than it was given,
`broken` says why (the connection is then closed and the worker reconnects with backoff and
resends the rest). Every blocking call has a timeout: a destination that accepts TCP but never
answers costs a timeout in the worker thread, never a stall of the pipeline.
"""
from __future__ import annotations

import enum
import socket
import ssl

from monitor.delivery.urls import Destination


class Outcome(enum.Enum):
    OK = "ok"  # acknowledged (or, for syslog+tls, written to the socket)
    DUPLICATE = "duplicate"  # the destination already had it (Redis stream ID not newer)
    REFUSED = "refused"  # the destination answered with an error for this event alone


class DeliveryError(Exception):
    """Connecting or talking to a destination failed; the message goes to stats last_error."""


class Transport:
    unacknowledged = False  # True for syslog+tls: written is all we can know

    def __init__(self, dest: Destination, timeout: float) -> None:
        self.dest = dest
        self.timeout = timeout
        self.broken: str | None = None
        # The peer ended the session itself (EOF or reset) in the middle of a window: with
        # RELP, how a server rejects a message it will never take (or it is stopping: the worker
        # probes with the head event alone to tell). Timeouts and Redis never set it.
        self.peer_closed = False
        self.refusals: dict[int, str] = {}  # batch index -> the destination's reason

    def connect(self) -> None:
        raise NotImplementedError

    def deliver(self, records: list) -> list[Outcome]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def tls_context(dest: Destination) -> ssl.SSLContext:
    """Verify the server against --tls-ca (or the system CAs), check its name, and present
    --tls-cert/--tls-key when given. Nothing is ever sent before the handshake succeeds."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=dest.tls.ca if dest.tls else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if dest.tls and dest.tls.cert:
        ctx.load_cert_chain(dest.tls.cert, dest.tls.key)
    return ctx


def connect_socket(dest: Destination, timeout: float, tls: bool) -> socket.socket:
    try:
        sock = socket.create_connection((dest.host, dest.port), timeout=timeout)
    except OSError as e:
        raise DeliveryError(f"connect {dest.host}:{dest.port}: {e.strerror or e}") from None
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not tls:
        return sock
    try:
        return tls_context(dest).wrap_socket(sock, server_hostname=dest.host)
    except ssl.SSLCertVerificationError as e:
        sock.close()
        raise DeliveryError(f"TLS: the server's certificate is refused: {e.verify_message} "
                            f"(is it signed by --tls-ca and issued for {dest.host}?)") from None
    except (ssl.SSLError, OSError) as e:
        sock.close()
        raise DeliveryError(f"TLS handshake with {dest.host}:{dest.port} failed: {e}") from None
