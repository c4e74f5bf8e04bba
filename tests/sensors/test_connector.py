"""The process-events connector on the real kernel: gone processes, threads, overruns."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from sensorproc import start_ticks

pytestmark = pytest.mark.root

TRUE = os.path.realpath("/bin/true")
SLEEP = os.path.realpath("/bin/sleep")


def spawn_and_reap(argv: list[str]) -> tuple[int, int]:
    """Run argv to its end; (pid, start ticks), the ticks read from the zombie before reaping."""
    pid = os.posix_spawn(argv[0], argv, os.environ)
    # Wait for it to exit without reaping it (WNOWAIT): its stat is the ground truth.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    ticks = start_ticks(pid)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return pid, ticks


def test_a_process_gone_before_it_is_read_is_marked_gone(monitor):
    m = monitor("--sensor", "connector")
    m.sensor_line()
    m.wait_ready()
    # trigger: the monitor is stopped while /bin/true runs and is reaped, so when it reads the
    # queued connector messages, nothing of the process is left in /proc.
    m.proc.send_signal(signal.SIGSTOP)
    try:
        pid, ticks = spawn_and_reap([TRUE])
    finally:
        m.proc.send_signal(signal.SIGCONT)
    (ex,) = m.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == pid])
    assert m.stop() == 0
    # assertions
    (fork,) = m.find(event="fork", pid=pid)
    (exe,) = m.find(event="exec", pid=pid)
    assert exe["source"] == "connector"
    assert exe["enrichment"] == "gone"
    assert exe["argv"] is None and exe["exe"] is None and exe["cwd"] is None
    assert exe["comm"] is None and exe["missing"]["comm"] == "gone"  # not the parent's
    assert exe["ppid"] == os.getpid() and fork["ppid"] == os.getpid()
    # Identity from the fork timestamp (the stat was gone): at most one tick late.
    assert exe["start_time"] in (ticks, ticks + 1)
    assert fork["exec_id"] == exe["exec_id"] == ex["exec_id"]
    assert (ex["exit_code"], ex["signal"]) == (0, None)
    assert ex["duration_ns"] > 0


def test_a_process_alive_when_read_has_argv(monitor, tmp_path):
    m = monitor("--sensor", "connector")
    m.sensor_line()
    m.wait_ready()
    p = subprocess.Popen([SLEEP, "0.3"], cwd=tmp_path)
    ticks = start_ticks(p.pid)
    assert p.wait() == 0
    (ex,) = m.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == p.pid])
    assert m.stop() == 0
    (exe,) = m.find(event="exec", pid=p.pid)
    assert exe["enrichment"] == "full"
    assert exe["argv"] == [SLEEP, "0.3"]
    assert exe["exe"] == SLEEP
    assert exe["cwd"] == str(tmp_path.resolve())
    assert (exe["uid"], exe["euid"]) == (os.getuid(), os.geteuid())
    assert exe["start_time"] == ticks and ex["exec_id"] == exe["exec_id"]
    assert exe["ns"]["pid"] == os.stat(f"/proc/{os.getpid()}/ns/pid").st_ino


def test_threads_are_not_processes(monitor, progs):
    m = monitor("--sensor", "connector")
    m.sensor_line()
    m.wait_ready()
    # trigger: three threads, then a non-leader thread execs (de_thread kills the others and
    # the old leader, whose EXIT must not end the process)
    p = subprocess.Popen([str(progs / "threads_then_exec"), SLEEP, "0.3"])
    assert p.wait() == 0
    (ex,) = m.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == p.pid])
    assert m.stop() == 0
    assert len(m.find(event="fork", pid=p.pid)) == 1
    first, second = m.find(event="exec", pid=p.pid)
    # The first image lives 50 ms: read in time, or (on a loaded host) known to be replaced
    # by the second exec before it could be read, never described with the second's argv.
    if first["argv"] is None:
        assert (first["enrichment"], first["missing"]["argv"]) == ("gone", "gone")
    else:
        assert first["argv"] == [str(progs / "threads_then_exec"), SLEEP, "0.3"]
    assert second["argv"] == [SLEEP, "0.3"]
    assert first["exec_id"] == second["exec_id"] == ex["exec_id"]  # one process, two images
    assert len(m.find(event="exit", pid=p.pid)) == 1
    assert (ex["exit_code"], ex["comm"]) == (0, "sleep")
    # no thread shows up as a process of its own
    tids = {e["pid"] for e in m.snapshot() if e.get("ppid") == p.pid}
    assert not tids


def test_leader_exiting_first_is_not_the_process_exit(monitor, progs):
    m = monitor("--sensor", "connector")
    m.sensor_line()
    # trigger: main() calls pthread_exit, another thread ends the process with exit(7)
    p = subprocess.Popen([str(progs / "exit_leader")])
    assert p.wait() == 7
    (ex,) = m.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == p.pid])
    assert m.stop() == 0
    assert (ex["exit_code"], ex["signal"]) == (7, None)
    assert 0.09e9 < ex["duration_ns"] < 5e9  # the worker sleeps 100 ms before exit(7)
    assert len(m.find(event="exit", pid=p.pid)) == 1


def test_receive_buffer_overrun_is_counted_as_lost(monitor):
    # A tiny receive buffer (the kernel's minimum) and a storm while the monitor is stopped:
    # the kernel must drop messages, and every drop is counted.
    m = monitor("--sensor", "connector", env={"PROCSENTRY_CONNECTOR_RCVBUF": "4096"})
    m.sensor_line()
    m.wait_ready()
    m.proc.send_signal(signal.SIGSTOP)
    try:
        storm = subprocess.run(["/bin/sh", "-c", f"i=0; while [ $i -lt 3000 ]; do {TRUE}; i=$((i+1)); done"])
        # started while the buffer is full: its fork and exec messages are dropped too
        survivor = subprocess.Popen([SLEEP, "30"])
    finally:
        m.proc.send_signal(signal.SIGCONT)
    assert storm.returncode == 0
    try:
        lost = m.until(lambda evs: [e for e in evs if e["event"] == "lost"])
        # After lost samples the pipeline sweeps: what started in the gap and still runs is
        # found (`missed`); what ran wholly inside the gap is gone, counted only as lost.
        (missed,) = m.until(lambda evs: [e for e in evs if e["event"] == "missed"
                                         and e["pid"] == survivor.pid])
    finally:
        survivor.kill()
        survivor.wait()
    assert m.stop() == 0
    assert missed["argv"] == [SLEEP, "30"] and missed["source"] == "sweep"
    assert all(e["source"] == "connector" and e["cpu"] == -1 and e["count"] > 0 for e in lost)
    total = sum(e["count"] for e in m.find(event="lost"))
    # 3000 processes send ~12000 messages (fork, comm, exec, exit); a 4 KiB buffer holds a few.
    assert total > 3000
    (stats,) = m.find(event="stats")
    assert stats["lost"] == total
    assert stats["lost_per_cpu"] == {"-1": total}
    assert stats["events"]["lost"] == len(m.find(event="lost"))
    assert stats["kernel"]["overruns"] >= 1
