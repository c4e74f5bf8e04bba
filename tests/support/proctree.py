"""Fixture procfs trees: text specs in tests/fixtures/proc/*.ttar, materialised on disk.

The spec format (documented at the top of each .ttar) follows prometheus/procfs's
fixtures.ttar idea: reviewable text, explicit NUL markers, symlinks as entries.
``FaultyProcFS`` injects the races a real procfs produces (psutil's mock_open_exception).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from userspace.procfs import AccessDenied, ProcessGone, ProcFS, Unavailable

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "proc"
HEADER = "@@ "
_ESCAPE = re.compile(r"<NUL>|<x([0-9a-fA-F]{2})>")


def unescape(text: str) -> bytes:
    """<NUL> -> 0x00, <xHH> -> 0xHH; everything else is UTF-8."""
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += text[pos : m.start()].encode()
        out.append(0 if m.group(0) == "<NUL>" else int(m.group(1), 16))
        pos = m.end()
    out += text[pos:].encode()
    return bytes(out)


def materialise(spec: Path, dest: Path) -> Path:
    """Build the tree described by ``spec`` under ``dest``; returns dest."""
    dest.mkdir(parents=True, exist_ok=True)
    lines = spec.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if not line.startswith(HEADER):
            raise ValueError(f"{spec}:{i}: content outside a file: {line!r}")
        kind, _, rest = line[len(HEADER) :].partition(" ")
        if kind == "#":
            continue
        if kind == "link":
            name, sep, target = rest.partition(" -> ")
            if not sep:
                raise ValueError(f"{spec}:{i}: link without ' -> '")
            path = dest / name
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(unescape(target), os.fsencode(path))
            continue
        if kind == "dir":
            (dest / rest).mkdir(parents=True, exist_ok=True)
            continue
        if kind not in ("file", "file-noeol"):
            raise ValueError(f"{spec}:{i}: unknown header {kind!r}")
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith(HEADER):
            body.append(lines[i])
            i += 1
        while body and body[-1] == "":
            body.pop()
        data = unescape("\n".join(body))
        if body and kind == "file":
            data += b"\n"
        path = dest / rest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return dest


class FaultyProcFS(ProcFS):
    """A ProcFS whose primitives fail on command.

    * ``gone_after={pid: n}``: after n successful operations on that pid, everything about it
      raises ProcessGone (the process exited mid-read).
    * ``denied={b"100/fd", ...}``: operations on these relative paths raise AccessDenied
      (tests run as root, where chmod 000 blocks nothing).
    * ``vanish={b"100/fd/4", ...}``: these entries raise Unavailable (closed mid-listing).
    * ``extra_pids=[...]``: pids() lists these too (listed, then gone before the read).
    """

    def __init__(self, root: str, gone_after=None, denied=(), vanish=(), extra_pids=()) -> None:
        super().__init__(root)
        self.gone_after = dict(gone_after or {})
        self.denied = {os.fsencode(p) for p in denied}
        self.vanish = {os.fsencode(p) for p in vanish}
        self.extra_pids = list(extra_pids)
        self.ops: dict[object, int] = {}
        self.log: list[bytes] = []

    def _check(self, pid, name) -> None:
        rel = self.path(pid, name)[len(os.fsencode(self.root)) + 1 :]
        self.log.append(rel)
        if pid in self.gone_after:
            n = self.ops.get(pid, 0)
            if n >= self.gone_after[pid]:
                raise ProcessGone(f"injected: {pid} gone", rel)
            self.ops[pid] = n + 1
        if rel in self.denied:
            raise AccessDenied("injected", rel)
        if rel in self.vanish:
            raise Unavailable("injected: entry vanished", rel)

    def read_bytes(self, pid, name, limit=1 << 20):
        self._check(pid, name)
        return super().read_bytes(pid, name, limit)

    def readlink(self, pid, name):
        self._check(pid, name)
        return super().readlink(pid, name)

    def listdir(self, pid, name=b""):
        if pid is not None:
            self._check(pid, name)
        return super().listdir(pid, name)

    def exists(self, pid) -> bool:
        if pid in self.gone_after and self.ops.get(pid, 0) >= self.gone_after[pid]:
            return False
        return super().exists(pid)

    def pids(self) -> list[int]:
        return super().pids() + self.extra_pids
