"""Each sensor forced in turn sees the same known process tree, with exact PIDs.

What differs is only `source` and what the sensor can fill: the exit status (BPF and the
connector know it, polling does not) and fork events (polling sees none).
"""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.procstat import start_ticks

BASH = os.path.realpath("/bin/bash")
SCRIPT = "sleep 2; exit 4"

SENSORS = [pytest.param("bpf", marks=pytest.mark.bpf), "connector", "poll"]


@pytest.mark.root
@pytest.mark.parametrize("sensor", SENSORS)
def test_process_tree(watch, sensor):
    m = watch("--sensor", sensor)
    assert m.sensor_line().startswith(f"procsentry: sensor {sensor} ({sensor}")
    m.wait_ready()
    # --- trigger: bash forks sleep (not its last command, so not exec'd in place), exits 4 ---
    p = subprocess.Popen([BASH, "-c", SCRIPT])
    bash_ticks = start_ticks(p.pid)
    assert p.wait(60) == 4
    bash_exit = m.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == p.pid])
    (sleep_exec,) = m.until(lambda evs: [e for e in evs if e["event"] == "exec" and e["ppid"] == p.pid])
    sleep_exit = m.until(lambda evs: [e for e in evs if e["event"] == "exit"
                                      and e["pid"] == sleep_exec["pid"]])
    assert m.stop() == 0
    # --- assertions ---------------------------------------------------------------------------
    mine = [e for e in m.snapshot() if e.get("pid") in (p.pid, sleep_exec["pid"])
            and e["event"] in ("fork", "exec", "exit")]
    assert {e["source"] for e in mine} == {sensor}
    (bash_exec,) = m.find(event="exec", pid=p.pid)
    assert bash_exec["ppid"] == os.getpid()
    assert bash_exec["argv"] == [BASH, "-c", SCRIPT]
    assert bash_exec["comm"] == "bash"
    assert bash_exec["start_time"] == bash_ticks
    assert bash_exec["enrichment"] != "gone" or sensor == "bpf"  # bpf: argv is the kernel's
    assert sleep_exec["argv"] == ["sleep", "2"]
    assert sleep_exec["parent_exec_id"] == bash_exec["exec_id"]
    assert sleep_exec["ancestry"][0]["exec_id"] == bash_exec["exec_id"]
    (bash_exit,) = bash_exit
    (sleep_exit,) = sleep_exit
    assert bash_exit["exec_id"] == bash_exec["exec_id"]
    assert sleep_exit["exec_id"] == sleep_exec["exec_id"]
    assert not bash_exit["inferred"] and not sleep_exit["inferred"]
    if sensor == "poll":
        assert (bash_exit["exit_code"], sleep_exit["exit_code"]) == (None, None)
        assert not m.find(event="fork", pid=p.pid)
    else:
        assert (bash_exit["exit_code"], bash_exit["signal"]) == (4, None)
        assert (sleep_exit["exit_code"], sleep_exit["signal"]) == (0, None)
        assert 1.9e9 < sleep_exit["duration_ns"] < 10e9
        (bash_fork,) = m.find(event="fork", pid=p.pid)
        assert bash_fork["ppid"] == os.getpid() and bash_fork["exec_id"] == bash_exec["exec_id"]
        (sleep_fork,) = m.find(event="fork", pid=sleep_exec["pid"])
        assert sleep_fork["ppid"] == p.pid and sleep_fork["exec_id"] == sleep_exec["exec_id"]
    (stats,) = m.find(event="stats")
    assert stats["source"] == sensor
