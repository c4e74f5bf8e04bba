"""One sensor for the whole session (a bcc compile is costly, and far more so under emulation)."""
from __future__ import annotations

import pytest

from tests.support.collector import Collector


@pytest.fixture(scope="session")
def sensor(shared_sensor):
    """The sensor tests/conftest.py loaded to check BPF works: one compile per session."""
    return shared_sensor


@pytest.fixture
def collector(sensor):
    sensor.poll(0)
    sensor.queue.clear()
    sensor.account_losses(force=True)  # losses from before this test are not this test's
    c = Collector(sensor)
    yield c
    sensor.queue.clear()
