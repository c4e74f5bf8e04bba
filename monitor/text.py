"""The one policy for turning what a process chose (comm, exe, argv, paths: bytes) into text.

Decoded once, when a process enters the process table (so fork and exit events, and every
descendant's ancestry, reuse the decoded strings and orjson serialises them natively, without a
Python callback per byte string). Bytes are decoded as UTF-8 with ``backslashreplace``: valid
UTF-8 (newlines and escape sequences included) is kept exactly, and JSON escapes control
characters, so a hostile argv cannot break a line or the JSON. An invalid byte becomes the four
characters ``\\xNN``; because that is ambiguous with a literal backslash, exec events whose argv
is not valid UTF-8 also carry ``argv_raw`` (base64 of the exact bytes, NUL-separated), so
nothing is lost. ``surrogateescape`` must never reach orjson: it rejects lone surrogates.

For terminals (`--format text`), safe() also escapes every control character, so an argv
cannot move the cursor or forge a line.
"""
from __future__ import annotations

import base64


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
