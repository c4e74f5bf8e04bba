"""`--sensor auto`: BPF here, the connector when BPF cannot load, polling when neither works;
the choice and its cost said on stderr, in every event's `source`, and by `procsentry doctor`."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.watch import REPO

pytestmark = pytest.mark.root

SLEEP = os.path.realpath("/bin/sleep")
NO_BPF = {"PROCSENTRY_DISABLE_BPF": "1"}
NO_CONNECTOR = {"PROCSENTRY_DISABLE_CONNECTOR": "1"}
BPF_REASON = "BPF unavailable: the BPF sensor is disabled by PROCSENTRY_DISABLE_BPF=1"
CONNECTOR_REASON = "connector unavailable: the connector is disabled by PROCSENTRY_DISABLE_CONNECTOR=1"


def run_one(m) -> dict:
    """A known process under the monitor, alive until its exec is reported: that exec event."""
    p = subprocess.Popen([SLEEP, "30"])
    try:
        (ex,) = m.until(lambda evs: [e for e in evs if e["event"] == "exec" and e["pid"] == p.pid])
    finally:
        p.kill()
        p.wait(60)
    m.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == p.pid])
    assert m.stop() == 0
    assert ex["argv"] == [SLEEP, "30"] and ex["ppid"] == os.getpid()
    return ex


@pytest.mark.bpf
def test_auto_chooses_bpf(watch):
    m = watch()  # --sensor auto is the default
    assert m.sensor_line().startswith("procsentry: sensor bpf (auto: complete")
    m.wait_ready()
    assert run_one(m)["source"] == "bpf"
    assert {e["source"] for e in m.snapshot()} == {"bpf", "sweep"}


def test_auto_falls_back_to_the_connector(watch):
    m = watch("--sensor", "auto", env=NO_BPF)
    line = m.sensor_line()
    assert line.startswith(f"procsentry: sensor connector (auto; {BPF_REASON}; real-time")
    m.wait_ready()
    assert run_one(m)["source"] == "connector"
    assert {e["source"] for e in m.snapshot()} == {"connector", "sweep"}


def test_auto_falls_back_to_polling(watch):
    m = watch("--poll-interval", "0.05", env={**NO_BPF, **NO_CONNECTOR})
    line = m.sensor_line()
    assert line.startswith(f"procsentry: sensor poll (auto; {BPF_REASON}; {CONNECTOR_REASON}; "
                           "procfs sweeps every 0.05 s")
    m.wait_ready()
    ex = run_one(m)
    assert ex["source"] == "poll"
    (stats,) = m.find(event="stats")
    assert stats["source"] == "poll" and stats["kernel"]["sweeps"] > 0
    assert {e["source"] for e in m.snapshot()} == {"poll", "sweep"}


def test_a_forced_sensor_does_not_fall_back():
    p = subprocess.run([sys.executable, "-m", "monitor", "watch", "--sensor", "connector",
                        "--duration", "1"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, **NO_CONNECTOR}, timeout=60)
    assert p.returncode == 1
    assert p.stderr == "procsentry: the connector is disabled by PROCSENTRY_DISABLE_CONNECTOR=1\n"
    assert p.stdout == ""


def doctor_line(env: dict) -> str:
    p = subprocess.run([sys.executable, "-m", "monitor", "doctor", "--no-load"], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    (line,) = [x for x in p.stdout.splitlines() if "auto would choose" in x]
    status, name, detail = line.split(None, 2)
    assert name == "auto_sensor" and status == ("PASS" if detail == "auto would choose bpf" else "WARN")
    return detail


@pytest.mark.bpf
def test_doctor_says_auto_would_choose_bpf():
    assert doctor_line({}) == "auto would choose bpf"


def test_doctor_says_auto_would_choose_a_fallback():
    assert doctor_line(NO_BPF).startswith(f"auto would choose connector (auto; {BPF_REASON}; real-time")
    assert doctor_line({**NO_BPF, **NO_CONNECTOR}).startswith("auto would choose poll (auto; ")
