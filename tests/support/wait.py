"""The one way a test waits: for a condition, with a bound, failing with what it saw."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")


def until(predicate: Callable[[], T], timeout: float, what: str,
          seen: Callable[[], object] | None = None, interval: float = 0.02) -> T:
    """Call predicate() until it returns something truthy, and return that.

    After `timeout` seconds the test fails with "timed out after Ns waiting for <what>", plus
    seen() (what there was instead: the events so far, the state a process is in...).
    predicate may itself call pytest.fail (a monitor that exited is not worth waiting for).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"; seen: {seen()}" if seen is not None else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{detail}", pytrace=False)
        time.sleep(interval)


def readline(pipe, timeout: float, what: str) -> bytes:
    """One line from a child's stdout pipe, or fail after timeout (a child that never writes
    must not hang the suite)."""
    import select  # noqa: PLC0415

    ready, _, _ = select.select([pipe], [], [], timeout)
    if not ready:
        pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
    return pipe.readline()
