"""The detection tests use the one `watch` harness (tests/support/watch.py): one
`procsentry watch` with the built-in pack, started once for the module, whose alerts and exec
events the tests wait for."""
from __future__ import annotations

import pytest

from tests.support.watch import Watch


@pytest.fixture(scope="module")
def detecting(shared_sensor):
    """A monitor with the built-in rules, emitting alerts, execs and the start-up sweep."""
    del shared_sensor  # only for its skip/fail gate: the monitor below loads its own programs
    w = Watch("--sensor", "bpf", "--events", "alert,exec,existing,stats", "--sweep-interval", "0",
              "--stats-interval", "3600", "--duration", "3600")
    try:
        w.wait_ready()
        yield w
    finally:
        if w.proc.poll() is None:
            assert w.stop() == 0
        invalid = w.invalid()
        assert not invalid, f"{len(invalid)} events violate the schema, first: {invalid[0]}"
        assert "Traceback" not in w.stderr, w.stderr
    # The final stats event carries the detection counters; every alert the stream carried is
    # counted under its rule, and no rule failed while the attacks ran.
    stats = [e for e in w.snapshot() if e["event"] == "stats"][-1]["detection"]
    assert stats["rules_loaded"] == 21 and stats["rules_skipped"] == 0
    assert stats["evaluation_errors"] == 0
    seen: dict[str, int] = {}
    for e in w.snapshot():
        if e["event"] == "alert":
            seen[e["rule"]["id"]] = seen.get(e["rule"]["id"], 0) + 1
    assert stats["alerts_per_rule"] == seen
    assert stats["alerts"] == sum(seen.values())

