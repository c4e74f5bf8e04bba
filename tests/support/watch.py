"""`procsentry watch` as a subprocess: its JSON lines as they arrive, its stderr line by line,
bounded waits that fail with what was seen, and a schema check of every event at teardown.

The `watch` fixture (registered for the whole suite by tests/conftest.py) starts monitors and
always cleans them up: `w = watch("--sensor", "connector")`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Callable

import jsonschema
import pytest

from monitor.schema import SCHEMA_PATH
from tests.support.procstat import proc_stat
from tests.support.wait import reap, until

REPO = Path(__file__).resolve().parents[2]
_VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
# Nothing inherited from the caller may switch a sensor off or resize its buffers: only what a
# test passes in `env`.
_SWITCHES = ("PROCSENTRY_DISABLE_BPF", "PROCSENTRY_DISABLE_CONNECTOR", "PROCSENTRY_CONNECTOR_RCVBUF")
# Given unless the test gives its own: JSON lines; no periodic stats in the middle of a test;
# and a bound on the monitor's life, so that even a test that never stops it ends.
_DEFAULTS = (("--format", "json"), ("--stats-interval", "600"), ("--duration", "300"))
# How long a monitor may take to start: natively a second or two; in the emulated kernel matrix
# (PROCSENTRY_VM=1) the sensor compile alone takes 20-50 s, depending on the host's load.
START_TIMEOUT = 180.0 if os.environ.get("PROCSENTRY_VM") == "1" else 60.0


class Watch:
    """A running `procsentry watch`. Lines are only collected on the reader thread (a busy host
    makes thousands of events a second: a reader that parsed and validated as it went would fill
    the pipe and stall the monitor); they are parsed when a test looks (snapshot) and validated
    at teardown (invalid)."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        cmd = [sys.executable, "-m", "monitor", "watch", *args]
        for opt, value in _DEFAULTS:
            if opt not in args:
                cmd += [opt, value]
        self.text = cmd[cmd.index("--format") + 1] == "text"
        full_env = {k: v for k, v in os.environ.items() if k not in _SWITCHES}
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=REPO, env=full_env)
        self._lines: list[bytes] = []
        self._events: list[dict] = []
        self._stderr: list[str] = []
        self._lock = threading.Lock()
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out.start()
        self._err.start()

    # -- reading -----------------------------------------------------------------------------------
    def _read_out(self) -> None:
        for line in self.proc.stdout:
            if not line.endswith(b"\n"):
                break  # the monitor was killed mid-line (teardown of a failed test)
            with self._lock:
                self._lines.append(line)

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            with self._lock:
                self._stderr.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def lines(self) -> list[bytes]:
        """Every complete stdout line so far, as bytes (the text format's output)."""
        with self._lock:
            return list(self._lines)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self._stderr)

    def snapshot(self) -> list[dict]:
        """Every event so far, parsed (JSON format only)."""
        assert not self.text, "a --format text monitor has lines, not events"
        with self._lock:
            new = self._lines[len(self._events):]
        parsed = [json.loads(line) for line in new]
        with self._lock:
            self._events.extend(parsed)
            return list(self._events)

    def find(self, **match) -> list[dict]:
        return [e for e in self.snapshot() if all(e.get(k) == v for k, v in match.items())]

    def seen(self) -> str:
        """What the monitor has said so far, for a failure message."""
        if self.text:
            out = f"{len(self.lines)} lines, last {self.lines[-3:]}"
        else:
            out = f"events {dict(Counter(e['event'] for e in self.snapshot()))}"
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"monitor {state}; {out}; stderr: {self.stderr[-2000:]!r}"

    # -- waiting -----------------------------------------------------------------------------------
    def _wait(self, look: Callable[[], object], timeout: float, what: str):
        def check():
            value = look()
            if value or self.proc.poll() is None:
                return value
            # it exited: take what it wrote before, then give up at once
            self._out.join(5)
            self._err.join(5)
            value = look()
            if not value:
                pytest.fail(f"the monitor exited while waiting for {what}; {self.seen()}", pytrace=False)
            return value
        return until(check, timeout, what, self.seen)

    def until(self, predicate: Callable[[list[dict]], object], timeout: float = 60.0,
              what: str = "the events the test expects"):
        """Wait until predicate(events so far) is truthy; return its value."""
        return self._wait(lambda: predicate(self.snapshot()), timeout, what)

    def until_lines(self, predicate: Callable[[list[bytes]], object], timeout: float = 60.0,
                    what: str = "the lines the test expects"):
        """Wait until predicate(stdout lines so far) is truthy (the text format)."""
        return self._wait(lambda: predicate(self.lines), timeout, what)

    def until_stderr(self, needle: str, timeout: float = 60.0) -> str:
        """Wait for a stderr line containing needle; return that line."""
        def look():
            return next((line for line in self.stderr.splitlines() if needle in line), None)
        return self._wait(look, timeout, f"{needle!r} on stderr")

    def sensor_line(self, timeout: float = START_TIMEOUT) -> str:
        """The start-up line, printed once the sensor is attached (or polling has its baseline)."""
        return self.until_stderr("procsentry: sensor ", timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """The start-up sweep is flushed in one write: once our own process is listed, all are."""
        me = os.getpid()
        self.until(lambda evs: any(e["event"] == "existing" and e["pid"] == me for e in evs),
                   timeout, f"the start-up sweep (an existing event for pid {me})")

    # -- controlling -------------------------------------------------------------------------------
    def pause(self) -> None:
        """SIGSTOP, and wait until the kernel has it stopped (state T): from then on it reads
        nothing, and whatever the kernel sends it stays queued (or is dropped)."""
        self.proc.send_signal(signal.SIGSTOP)
        until(lambda: proc_stat(self.proc.pid).state == "T", 10, "the monitor to stop (state T)",
              lambda: f"state {proc_stat(self.proc.pid).state}")

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def wait(self, timeout: float = 60.0) -> int:
        """Its exit status, once it ends by itself (--duration, --count, an error)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the monitor did not end within {timeout}s; {self.seen()}", pytrace=False)
        self._out.join(5)
        self._err.join(5)
        return rc

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Send sig (SIGINT by default, as a user's ^C) and return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused monitor must die too
            self.proc.kill()
        reap(self.proc, 30, "the monitor, killed")
        self._out.join(5)
        self._err.join(5)

    def invalid(self, limit: int = 5000) -> list[tuple[dict, str]]:
        """Events that violate the published schema: every lost/stats/missed event and the first
        `limit` others (jsonschema takes about a millisecond an event)."""
        if self.text:
            return []
        out = []
        n = 0
        for ev in self.snapshot():
            if ev["event"] not in ("lost", "stats", "missed"):
                n += 1
                if n > limit:
                    continue
            err = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(ev))
            if err is not None:
                out.append((ev, err.message))
        return out


@pytest.fixture
def watch():
    """watch(*args, env=None) -> Watch; every monitor is killed at teardown and every event it
    printed must validate against the published schema."""
    started: list[Watch] = []

    def start(*args: str, env: dict | None = None) -> Watch:
        w = Watch(*args, env=env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()
        invalid = w.invalid()
        assert not invalid, f"{len(invalid)} events violate the schema, first: {invalid[0]}"
