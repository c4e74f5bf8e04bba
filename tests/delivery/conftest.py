"""Fixtures for the delivery tests: collectors die with their test. The `watch` harness is the
one in tests/support (a pytest plugin of tests/conftest.py)."""
from __future__ import annotations

import pytest




@pytest.fixture(autouse=True)
def _no_server_outlives_its_test():
    """Collectors started by a test are killed after it, whatever its outcome."""
    from tests.delivery import servers  # noqa: PLC0415
    yield
    while servers.RUNNING:
        servers.RUNNING.pop().kill()
