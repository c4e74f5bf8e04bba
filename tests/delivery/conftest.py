"""Fixtures for the delivery tests: the `watch` harness of tests/pipeline, reused, not copied."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

_spec = importlib.util.spec_from_file_location("pipeline_harness", HERE.parent / "pipeline" / "conftest.py")
_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_harness)
Watch = _harness.Watch
watch = _harness.watch  # the fixture: every monitor it starts is killed at teardown




@pytest.fixture(autouse=True)
def _no_server_outlives_its_test():
    """Collectors started by a test are killed after it, whatever its outcome."""
    import servers  # noqa: PLC0415
    yield
    while servers.RUNNING:
        servers.RUNNING.pop().kill()
