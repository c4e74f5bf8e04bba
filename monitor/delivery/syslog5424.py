"""One event -> one RFC 5424 syslog message whose MSG is the event's JSON line.

    <110>1 2026-12-01T12:00:00.123456Z web1 procsentry 4242 exec - {"seq":1,...}

PRI 110 is facility 13 (log audit, RFC 5424 table 1) at severity 6 (informational): the
stream is an audit trail, and a separate facility lets rsyslog route it without parsing MSG.
MSGID is the event type (exec, exit, dropped, ...), so `if $msgid == "exec"` works in rsyslog.
TIMESTAMP is when the message was formatted; the event's own time is in the JSON. MSG is sent
without the UTF-8 BOM (MSG-ANY): the JSON is UTF-8, and a BOM would end up in the stored line.
"""
from __future__ import annotations

import os
import re
import time

PRI = b"<110>1 "
_EVENT = re.compile(rb'"event":"([a-z_]{1,32})"')


def header_fields(hostname: str) -> bytes:
    # HOSTNAME and APP-NAME are PRINTUSASCII without spaces (RFC 5424 6.2.4); a hostname that
    # is not is replaced by NILVALUE rather than breaking the header.
    host = hostname[:255]
    if not host or not all(33 <= ord(c) <= 126 for c in host):
        host = "-"
    return f" {host} procsentry {os.getpid()} ".encode("ascii")


def msgid(payload: bytes) -> bytes:
    # The event type is the first field of every record.
    m = _EVENT.search(payload, 0, 64)
    return m.group(1) if m else b"-"


def timestamp(now: float | None = None) -> bytes:
    t = time.time() if now is None else now
    sec = int(t)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{int((t - sec) * 1e6):06d}Z").encode()


def message(fields: bytes, payload: bytes, ts: bytes) -> bytes:
    """The syslog message for one encoded event (its trailing newline removed: the framing,
    RELP's or octet counting, delimits the message)."""
    if payload.endswith(b"\n"):
        payload = payload[:-1]
    return b"".join((PRI, ts, fields, msgid(payload), b" - ", payload))
