"""Run `procsentry watch` as a subprocess and read its JSON lines as they arrive."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from monitor.schema import SCHEMA_PATH

REPO = Path(__file__).resolve().parents[2]
_VALIDATOR = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


class Watch:
    """A running monitor. Every line it prints is parsed and validated against the schema."""

    def __init__(self, *args: str, env: dict | None = None, stdout_path: Path | None = None) -> None:
        cmd = [sys.executable, "-m", "monitor", "watch", *args]
        if "--format" not in args:
            cmd += ["--format", "json"]
        full_env = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=REPO, env=full_env)
        self.lines: list[bytes] = []
        self.events: list[dict] = []
        self.invalid: list[tuple[dict, str]] = []
        self.stderr = b""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()
        self.text = "--format" in args and args[args.index("--format") + 1] == "text"

    def _read(self) -> None:
        for line in self.proc.stdout:
            if not line.endswith(b"\n"):
                break  # the monitor was killed mid-write (teardown of a failed test)
            with self._lock:
                self.lines.append(line)
            if self.text:
                continue
            ev = json.loads(line)
            err = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(ev))
            with self._lock:
                self.events.append(ev)
                if err is not None:
                    self.invalid.append((ev, err.message))

    def _read_err(self) -> None:
        self.stderr = self.proc.stderr.read()

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.events)

    def until(self, predicate, timeout: float = 30.0, on_timeout=None):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self.snapshot())
            if value:
                return value
            if self.proc.poll() is not None and not self._reader.is_alive():
                value = predicate(self.snapshot())
                if value:
                    return value
                pytest.fail(f"monitor exited {self.proc.returncode}: {self.stderr.decode(errors='replace')}")
            if time.monotonic() > deadline:
                context = on_timeout() if on_timeout else ""
                pytest.fail(f"timed out after {timeout}s; {context}; stderr: {self.stderr.decode(errors='replace')}")
            time.sleep(0.05)

    def wait_ready(self) -> None:
        """The start-up sweep is flushed in one write: once our own process is listed, all are."""
        me = os.getpid()
        self.until(lambda evs: any(e["event"] == "existing" and e["pid"] == me for e in evs), 30)

    def find(self, **match) -> list[dict]:
        return [e for e in self.snapshot() if all(e.get(k) == v for k, v in match.items())]

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        self._err_reader.join(5)
        return rc


@pytest.fixture
def watch():
    started: list[Watch] = []

    def start(*args: str, **kw) -> Watch:
        w = Watch(*args, **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
        # every line every test saw validates against the published schema
        assert not w.invalid, f"{len(w.invalid)} events violate the schema, first: {w.invalid[0]}"
