"""Suite-wide gating of the kernel tests.

`@pytest.mark.bpf` tests need root, bcc and a kernel that loads the sensor. Where that is not
available they skip with the reason, except when PROCSENTRY_REQUIRE_BPF=1 (set by `make test`,
and so by CI, which runs as root with BPF): there a skip would be a check that cannot fail, so
the missing prerequisite fails the test instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.proctree import FIXTURES, materialise
from tests.support.wait import run

pytest_plugins = ("tests.support.watch",)  # the `watch` fixture: procsentry watch as a subprocess

REPO = Path(__file__).resolve().parent.parent
REQUIRE_BPF = os.environ.get("PROCSENTRY_REQUIRE_BPF") == "1"

_bpf_reason: list[str | None] = []
_shared_sensor: list = []  # the sensor the check loaded, kept for the bpf tests (one compile)


def bpf_unavailable_reason() -> str | None:
    """Why the BPF tests cannot run here (None when they can). Computed once: the sensor it
    loads to find out is kept and reused by the `sensor` fixture, so a session compiles the
    programs once (a compile is costly, and far more so in the emulated kernel matrix)."""
    if _bpf_reason:
        return _bpf_reason[0]
    reason = None
    if os.geteuid() != 0:
        reason = "not root"
    else:
        try:
            import bcc  # noqa: F401, PLC0415
        except ImportError:
            reason = "bcc is not importable (python3-bpfcc missing or venv without system site packages)"
    if reason is None and not Path("/sys/kernel/btf/vmlinux").exists():
        reason = "no BTF at /sys/kernel/btf/vmlinux"
    if reason is None:
        from monitor.sensors.bpf.loader import Sensor, SensorUnavailable  # noqa: PLC0415
        s = Sensor()  # the default perf buffer size: the completeness test relies on it
        try:
            s.start()
            _shared_sensor.append(s)
        except SensorUnavailable as e:
            reason = f"the sensor does not load: {e}"
            s.close()
    _bpf_reason.append(reason)
    return reason


@pytest.fixture(scope="session")
def shared_sensor():
    """The session's loaded sensor (skips or fails like any bpf test when there is none)."""
    reason = bpf_unavailable_reason()
    if reason is not None:
        if REQUIRE_BPF:
            pytest.fail(f"BPF is required (PROCSENTRY_REQUIRE_BPF=1) but unavailable: {reason}")
        pytest.skip(f"BPF unavailable: {reason}")
    return _shared_sensor[0]


def pytest_sessionfinish(session, exitstatus):
    for s in _shared_sensor:
        s.close()
    _shared_sensor.clear()


def pytest_runtest_setup(item):
    if item.get_closest_marker("bpf") is not None:
        reason = bpf_unavailable_reason()
        if reason is not None:
            if REQUIRE_BPF:
                pytest.fail(f"BPF is required (PROCSENTRY_REQUIRE_BPF=1) but unavailable: {reason}",
                            pytrace=False)
            pytest.skip(f"BPF unavailable: {reason}")
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        if REQUIRE_BPF:
            pytest.fail("root is required (PROCSENTRY_REQUIRE_BPF=1) but this is not root", pytrace=False)
        pytest.skip("needs root")


@pytest.fixture
def proc_tree(tmp_path: Path):
    """proc_tree(name) materialises tests/fixtures/proc/<name>.ttar under tmp_path and returns
    the root to hand to ProcFS."""
    def make(name: str = "host") -> str:
        return str(materialise(FIXTURES / f"{name}.ttar", tmp_path / name))

    return make


@pytest.fixture(scope="session")
def progs(tmp_path_factory) -> Path:
    """tests/progs/*.c compiled once per session."""
    out = tmp_path_factory.mktemp("progs")
    for src in (REPO / "tests" / "progs").glob("*.c"):
        exe = out / src.stem
        run(["cc", "-O1", "-pthread", "-o", str(exe), str(src)], 120, check=True)
    return out


@pytest.fixture(autouse=True, scope="session")
def _session_state_dir(tmp_path_factory):
    """The same for monitors that module- and session-scoped fixtures start (they run before
    any per-test fixture): a procsentry already running on the host holds /var/lib/procsentry."""
    old = os.environ.get("PROCSENTRY_STATE_DIR")
    os.environ["PROCSENTRY_STATE_DIR"] = str(tmp_path_factory.mktemp("session-state"))
    yield
    if old is None:
        os.environ.pop("PROCSENTRY_STATE_DIR", None)
    else:
        os.environ["PROCSENTRY_STATE_DIR"] = old


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path_factory, monkeypatch):
    """Every test's `procsentry watch` keeps its seq and spools in a directory of its own
    ($PROCSENTRY_STATE_DIR, the default of --state-dir): never the host's /var/lib/procsentry,
    and never one another test or another checkout holds (a state directory is locked by the
    procsentry using it)."""
    monkeypatch.setenv("PROCSENTRY_STATE_DIR", str(tmp_path_factory.mktemp("state")))
