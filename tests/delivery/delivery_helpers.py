"""Helpers of the delivery tests: what the monitor wrote locally, waiting, the workload."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest


def read_jsonl(path: Path) -> list[dict]:
    """Complete JSON lines (a line cut by a SIGKILL mid-write is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def wait_for(predicate, timeout: float, what, every: float = 0.1):
    """Poll until predicate() is true. `what` (a string, or a callable giving one at the
    timeout) says what was awaited and, when it can, what was seen instead."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(every)


def last_stats(path: Path, url: str) -> dict | None:
    stats = [e for e in read_jsonl(path) if e["event"] == "stats" and url in e.get("delivery", {})]
    return stats[-1]["delivery"][url] if stats else None


def storm(progs: Path, n: int, exe: str = "/bin/true") -> subprocess.Popen:
    """fork+exec `exe` n times as fast as possible (tests/progs/fork_storm.c)."""
    return subprocess.Popen([str(progs / "fork_storm"), str(n), exe], stdout=subprocess.DEVNULL)
