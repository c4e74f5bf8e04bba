"""The `monitor` fixture: start `procsentry watch` subprocesses, always cleaned up, and check
that every line they printed validates against the published schema."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sensorproc import Monitor  # noqa: E402


@pytest.fixture
def monitor():
    started: list[Monitor] = []

    def start(*args: str, **kw) -> Monitor:
        m = Monitor(*args, **kw)
        started.append(m)
        return m

    yield start
    for m in started:
        if m.proc.poll() is None:
            m.proc.send_signal(signal.SIGCONT)
            m.proc.kill()
            m.proc.wait()
        invalid = m.invalid()
        assert not invalid, f"{len(invalid)} events violate the schema, first: {invalid[0]}"
