"""Helpers for the sensor tests: `procsentry watch --sensor X` as a subprocess (its JSON lines,
parsed and schema-checked) and ground truth read from /proc."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from monitor.schema import SCHEMA_PATH

REPO = Path(__file__).resolve().parents[2]
_VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
# Nothing inherited from the caller may switch a sensor off, except what a test passes.
_SWITCHES = ("PROCSENTRY_DISABLE_BPF", "PROCSENTRY_DISABLE_CONNECTOR", "PROCSENTRY_CONNECTOR_RCVBUF")


class Monitor:
    def __init__(self, *args: str, env: dict | None = None) -> None:
        cmd = [sys.executable, "-m", "monitor", "watch", "--format", "json",
               "--stats-interval", "600", "--duration", "120", *args]
        full_env = {k: v for k, v in os.environ.items() if k not in _SWITCHES}
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=REPO, env=full_env)
        self._lines: list[bytes] = []  # as read; parsed on demand (snapshot)
        self.events: list[dict] = []
        self.stderr_lines: list[str] = []
        self._lock = threading.Lock()
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out.start()
        self._err.start()

    def _read_out(self) -> None:
        # Only collect: a busy host makes thousands of events a second, and a reader that
        # parses and validates as it goes fills the pipe and stalls the monitor.
        for line in self.proc.stdout:
            if not line.endswith(b"\n"):
                break  # the monitor was killed mid-line (fixture teardown)
            with self._lock:
                self._lines.append(line)

    def invalid(self, limit: int = 5000) -> list[tuple[dict, str]]:
        """Events that violate the published schema: all lost/stats/missed events and the
        first `limit` others (jsonschema takes about a millisecond an event)."""
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

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            with self._lock:
                self.stderr_lines.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.stderr_lines)

    def snapshot(self) -> list[dict]:
        with self._lock:
            new = self._lines[len(self.events):]
        parsed = [json.loads(line) for line in new]
        with self._lock:
            self.events.extend(parsed)
            return list(self.events)

    def until(self, predicate, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self.snapshot())
            if value:
                return value
            if self.proc.poll() is not None:
                self._out.join(5)
                value = predicate(self.snapshot())
                if value:
                    return value
                pytest.fail(f"monitor exited {self.proc.returncode}; stderr: {self.stderr}")
            if time.monotonic() > deadline:
                kinds = Counter(e["event"] for e in self.snapshot())
                pytest.fail(f"timed out after {timeout}s; events so far: {dict(kinds)}; "
                            f"stderr: {self.stderr}")
            time.sleep(0.05)

    def sensor_line(self, timeout: float = 30.0) -> str:
        """The start-up line: printed once the sensor is attached (or polling has its baseline)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stderr.splitlines():
                if line.startswith("procsentry: sensor "):
                    return line
            if self.proc.poll() is not None:
                self._err.join(5)
                pytest.fail(f"monitor exited {self.proc.returncode}; stderr: {self.stderr}")
            time.sleep(0.02)
        pytest.fail(f"no sensor line after {timeout}s; stderr: {self.stderr}")

    def wait_ready(self) -> None:
        """The start-up sweep is flushed in one write: once our own process is listed, all are."""
        me = os.getpid()
        self.until(lambda evs: any(e["event"] == "existing" and e["pid"] == me for e in evs), 30)

    def find(self, **match) -> list[dict]:
        return [e for e in self.snapshot() if all(e.get(k) == v for k, v in match.items())]

    def pause(self) -> None:
        """SIGSTOP, and wait until the kernel has it stopped (state T): from then on it reads
        nothing, and whatever the kernel sends it stays queued (or is dropped)."""
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while read_stat_field(self.proc.pid, 3) != b"T":
            if time.monotonic() > deadline:
                pytest.fail("the monitor did not stop")
            time.sleep(0.005)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout)
        self._out.join(5)
        self._err.join(5)
        return rc


def start_ticks(pid: int) -> int:
    """<pid>/stat field 22 (a zombie's too, until it is reaped)."""
    from userspace.parsers import parse_stat  # noqa: PLC0415
    with open(f"/proc/{pid}/stat", "rb") as f:
        return parse_stat(f.read()).starttime


def read_stat_field(pid: int, field: int) -> bytes:
    """proc(5) stat field number `field` (3 or more: after the comm) of pid, raw."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rfind(b")") + 1:].split()[field - 3]
