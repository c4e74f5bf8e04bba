"""The one way a test waits: for a condition, with a bound, failing with what it saw."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from typing import Callable, TypeVar

import pytest

from userspace.parsers import parse_stat

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
    ready, _, _ = select.select([pipe], [], [], timeout)
    if not ready:
        pytest.fail(f"timed out after {timeout}s waiting for {what}", pytrace=False)
    return pipe.readline()


def task_states(pid: int) -> str:
    """Where each thread of pid is, tid:state:kernel frames (what a hung child is doing, for a
    failure message)."""
    out = []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError:
        return f"pid {pid} gone"
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                state = parse_stat(f.read()).state
        except (OSError, ValueError):
            continue
        try:  # the kernel stack (root, CONFIG_STACKTRACE): its top frames say where it waits
            with open(f"/proc/{pid}/task/{tid}/stack") as f:
                where = ",".join(line.split()[-1].split("+")[0] for line in f.read().splitlines()[:3])
        except (OSError, IndexError):
            where = "?"
        out.append(f"{tid}:{state}:{where}")
    return f"pid {pid} threads " + " ".join(out)


def reap(proc, timeout: float, what: str | None = None) -> int:
    """proc.wait(timeout) for a Popen, failing with where its threads are instead of hanging."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _fail_hung(proc, timeout, what or f"pid {proc.pid} {proc.args!r}")


def reap_pid(pid: int, timeout: float, what: str | None = None) -> int:
    """os.waitpid for a child this process forked itself; its wait status. Fails like reap."""
    child = _Forked(pid)
    try:
        return child.wait(timeout)
    except subprocess.TimeoutExpired:
        _fail_hung(child, timeout, what or f"pid {pid}")


class _Forked:
    """The part of Popen that _fail_hung uses, for a child forked with os.fork."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return status
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.02)


def _fail_hung(proc, timeout: float, what: str):
    """Say where a child's threads are, kill it, reap it within a further bound, and fail."""

    seen = task_states(proc.pid)
    proc.kill()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        seen += f"; still there 10 s after SIGKILL: {task_states(proc.pid)}"
    pytest.fail(f"timed out after {timeout}s waiting for {what} to exit; seen: {seen}", pytrace=False)


def run(argv, timeout: float = 60.0, what: str | None = None, check: bool = False, **popen):
    """subprocess.run with a bound that fails the test with what the child was doing (never a
    hang, never an unbounded wait after the kill). Returns a CompletedProcess that also has the
    child's pid; stdout and stderr are captured only if asked for (stdout=PIPE...), through
    communicate with the same bound."""

    what = what or f"{argv!r}"
    proc = subprocess.Popen(argv, **popen)  # not `with`: its __exit__ waits without a bound
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _fail_hung(proc, timeout, what)
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    done.pid = proc.pid
    if check:
        done.check_returncode()
    return done
