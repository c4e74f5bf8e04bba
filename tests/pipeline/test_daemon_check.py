"""The daemon check: one `procsentry watch` with the BPF sensor, a few seconds, every stage.

This is what the kernel matrix (scripts/test-kernels.sh) runs in each guest besides tests/bpf,
and what `make test` runs here: one compile of the sensor (~20 s under emulation) and then the
whole pipeline on the kernel under test: the start-up sweep (`existing`), exec/fork/exit of a
known tree with exact argv, exit codes and ancestry, containers (issue 18: each runtime's
naming of a container's first and only process, named from the kernel's cgroup id, and a
namespaced one; tests/pipeline/test_containers.py adds the --container filter, a compile per
runtime), then a forced loss (the reader stopped while one CPU's perf ring is
filled past its 1 MiB) and the recovery (a `lost` event, and the sweep reporting the processes
whose execs were lost as `missed`). The connector sensor's share is
tests/sensors/test_each_sensor.py::test_process_tree[connector], which the guests select too.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from monitor.sensors.bpf import limits
from tests.support.cgroups import cgroup_tree, check_each_runtime_naming, check_namespaced_container  # noqa: F401
from tests.support.procstat import start_ticks
from tests.support.wait import reap, run, task_states, until

pytestmark = pytest.mark.bpf

SLEEP = os.path.realpath("/bin/sleep")
TRUE = os.path.realpath("/bin/true")
BASH = os.path.realpath("/bin/bash")
# Python forks a child that exits 6 without exec, runs sleep 0.2, and exits 5; bash exits 4.
CHILD = ("import os, subprocess, sys\n"
         "pid = os.fork()\n"
         "if pid == 0:\n"
         "    os._exit(6)\n"
         "os.waitpid(pid, 0)\n"
         f"sys.exit(subprocess.run([{SLEEP!r}, '0.2']).returncode + 5)\n")
# Execs that fill one CPU's perf ring while the reader is stopped: each record carries
# ARGV_MAX_BYTES of argv, so this many overflow PERF_PAGES pages by half again. Once one of them
# is lost, the room left is smaller than such a record; the survivors' execs are records at
# least as large (sleep sums its arguments: "0" pads its argv past ARGV_MAX_BYTES), so they are
# lost too, whatever smaller records still fit.
FILL_EXECS = (limits.PERF_PAGES * 4096 * 3 // 2) // limits.ARGV_MAX_BYTES
SURVIVOR_ARGV = [SLEEP, "600.9"] + ["0"] * (limits.ARGV_MAX_BYTES // 2)
SURVIVORS = 3


def in_user_sleep(pid: int) -> bool:
    """Back in user space and asleep in nanosleep: its exec is complete, sched_process_exec has
    fired. (A vfork parent is released inside execve, before that tracepoint: Popen returning
    is not enough; the kernel stack says where the task is.)"""
    with open(f"/proc/{pid}/stack") as f:
        return "nanosleep" in f.read()


def short(e: dict) -> tuple:
    """An event as a failure message shows it: argv cut to its first three words."""
    return (e["event"], e["pid"], (e.get("argv") or [])[:3])


def one(events: list[dict], what: str) -> dict:
    assert len(events) == 1, f"expected one {what}, got {events}"
    return events[0]


def test_daemon_end_to_end(watch, tmp_path, cgroup_tree):  # noqa: F811
    # Lives past the monitor's start-up (a sensor compile takes ~50 s under emulation: a shorter
    # sleep would be a zombie by the sweep); killed at the end.
    resident = subprocess.Popen([SLEEP, "600.7"], cwd=tmp_path)
    survivors: list[subprocess.Popen] = []
    try:
        w = watch("--sweep-interval", "600", "--stats-interval", "600")
        w.wait_ready()

        # -- existing: started before the monitor, found by the start-up sweep ----------------
        ev = one(w.find(event="existing", pid=resident.pid), "existing event of the resident")
        me = one(w.find(event="existing", pid=os.getpid()), "existing event of the test")
        assert (ev["source"], ev["argv"], ev["exe"], ev["cwd"], ev["ppid"], ev["start_time"],
                ev["parent_exec_id"]) == ("sweep", [SLEEP, "600.7"], SLEEP, str(tmp_path.resolve()),
                                          os.getpid(), start_ticks(resident.pid), me["exec_id"]), ev

        # -- a known tree: bash -> python (-> fork, exit 6) -> sleep ----------------------------
        p = subprocess.Popen([BASH, "-c", f"{sys.executable} -c \"$0\"; exit 4", CHILD])
        assert reap(p, 60) == 4
        bash_exit = w.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == p.pid],
                            60, f"the exit of bash (pid {p.pid})")
        bash = one(w.find(event="exec", pid=p.pid), "exec of bash")
        py = one([e for e in w.find(event="exec") if e["ppid"] == p.pid], "exec of python")
        sleep = w.until(lambda evs: [e for e in evs if e["event"] == "exec" and e["ppid"] == py["pid"]],
                        30, "the exec of sleep")
        forked = w.until(lambda evs: [e for e in evs if e["event"] == "fork" and e["ppid"] == py["pid"]
                                      and e["pid"] != sleep[0]["pid"]], 30, "python's fork without exec")
        sleep, forked = one(sleep, "exec of sleep"), one(forked, "fork of python")
        exits = {x: w.until(lambda evs, x=x: [e for e in evs if e["event"] == "exit" and e["pid"] == x],
                            30, f"the exit of pid {x}")
                 for x in (py["pid"], sleep["pid"], forked["pid"])}

        assert (bash["source"], bash["ppid"], bash["argv"]) == (
            "bpf", os.getpid(), [BASH, "-c", f"{sys.executable} -c \"$0\"; exit 4", CHILD])
        assert bash["parent_exec_id"] == me["exec_id"]
        assert (py["argv"], py["parent_exec_id"]) == ([sys.executable, "-c", CHILD], bash["exec_id"])
        assert (sleep["argv"], sleep["exe"], sleep["parent_exec_id"]) == (
            [SLEEP, "0.2"], SLEEP, py["exec_id"])
        assert [a["exec_id"] for a in sleep["ancestry"][:3]] == [py["exec_id"], bash["exec_id"],
                                                                  me["exec_id"]]
        # a fork without exec runs its parent's image: the parent's argv, its own pid
        assert (forked["argv"], forked["ppid"]) == ([sys.executable, "-c", CHILD], py["pid"])
        codes = {x: (one(e, f"exit of {x}")["exit_code"], e[0]["signal"]) for x, e in exits.items()}
        assert codes == {py["pid"]: (5, None), sleep["pid"]: (0, None), forked["pid"]: (6, None)}
        assert (one(bash_exit, "exit of bash")["exit_code"], bash_exit[0]["exec_id"]) == (4, bash["exec_id"])

        # -- containers: each runtime's naming, named from the cgroup id the kernel gave, and a
        # namespaced one (host and namespace PID, namespace inodes, id on one event) -------------
        check_each_runtime_naming(w, cgroup_tree)
        check_namespaced_container(w, cgroup_tree, tmp_path)
        assert not [e for e in w.snapshot() if e["event"] == "lost"], "lost samples before the forced loss"

        # -- forced loss, then recovery --------------------------------------------------------
        # Everything below runs on one CPU, so that it all lands in the ring that is full.
        cpu = min(os.sched_getaffinity(0))
        mask = os.sched_getaffinity(0)
        w.pause()
        os.sched_setaffinity(0, {cpu})
        try:
            fill = b"x" * limits.ARGV_MAX_BYTES
            for i in range(FILL_EXECS):
                run([TRUE, fill, b"fill-%d" % i], 60, check=True)
            survivors = [subprocess.Popen(SURVIVOR_ARGV) for _ in range(SURVIVORS)]
            for s in survivors:  # their execs are in the kernel's past before the reader resumes
                until(lambda s=s: in_user_sleep(s.pid), 60, f"survivor {s.pid} to sleep",
                      lambda s=s: task_states(s.pid))
        finally:
            os.sched_setaffinity(0, mask)
            w.resume()
        lost = w.until(lambda evs: [e for e in evs if e["event"] == "lost"], 60,
                       f"a lost event after {FILL_EXECS} execs of {limits.ARGV_MAX_BYTES} bytes of argv")
        assert {e["cpu"] for e in lost} == {cpu} and sum(e["count"] for e in lost) > 0
        pids = {s.pid for s in survivors}
        missed = w.until(lambda evs: (lambda xs: xs if {e["pid"] for e in xs} == pids else None)(
            [e for e in evs if e["event"] == "missed" and e["pid"] in pids]), 60,
            f"missed events for the survivors {sorted(pids)}, whose execs were lost; theirs: "
            f"{[short(e) for e in w.snapshot() if e.get('pid') in pids]}, lost: {lost}")
        assert [(e["source"], e["argv"] == SURVIVOR_ARGV, e["ppid"]) for e in missed] == [
            ("sweep", True, os.getpid())] * SURVIVORS, [short(e) for e in missed]
        assert not [e for e in w.snapshot() if e["event"] == "exec" and e["pid"] in pids]

        # -- orderly stop: the final stats add up -----------------------------------------------
        assert w.stop(signal.SIGINT) == 0
        stats = w.snapshot()[-1]
        assert stats["event"] == "stats"
        assert stats["lost"] == sum(e["count"] for e in lost)
        assert stats["missed"] >= SURVIVORS
    finally:
        for s in [resident, *survivors]:
            s.kill()
            reap(s, 30)
