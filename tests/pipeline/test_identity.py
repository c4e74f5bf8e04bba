"""Process and image identity, and the in-namespace PID, end to end (`procsentry watch`).

exec_id names the process (exec keeps pid and start time); image_id names each program image
(it changes on every exec), and the sweep derives the same values as the sensor. vpid is the
PID as the process's own PID namespace numbers it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.bpf

SH = os.path.realpath("/bin/sh")
SLEEP = os.path.realpath("/bin/sleep")
UNSHARE = os.path.realpath("/usr/bin/unshare")


def snapshot_of(pid: int) -> dict:
    """The `existing` event a sweep builds for pid (`procsentry snapshot --pid`)."""
    out = subprocess.run([sys.executable, "-m", "monitor", "snapshot", "--format", "json",
                          "--pid", str(pid)], capture_output=True, check=True, timeout=60)
    (ev,) = [json.loads(line) for line in out.stdout.splitlines()]
    return ev


def test_each_exec_gets_a_new_image_and_a_child_names_the_image_that_forked_it(watch):
    w = watch()
    w.wait_ready()
    tag = f"chain-{uuid.uuid4().hex[:8]}"
    # trigger: three images in one process; the second forks a child (sleep 0.2) first
    inner = f"{SLEEP} 0.2 & wait; exec {SLEEP} 3"
    p = subprocess.Popen([SH, "-c", f"exec {SH} -c '{inner}' {tag}", tag])
    try:
        execs = w.until(lambda evs: (lambda xs: xs if len(xs) == 3 else None)(
            [e for e in evs if e["event"] == "exec" and e["pid"] == p.pid]), 30,
            what="the three execs of the chain")
        child = w.until(lambda evs: [e for e in evs if e["event"] == "exec" and e["ppid"] == p.pid
                                     and e["argv"] == [SLEEP, "0.2"]], 30, what="the child's exec")[0]
        (fork,) = w.find(event="fork", pid=child["pid"])
        swept = snapshot_of(p.pid)  # while the third image (sleep 3) runs
    finally:
        p.kill()
        p.wait(30)
    first, second, third = execs
    assert [e["argv"][0] for e in execs] == [SH, SH, SLEEP]
    assert len({e["exec_id"] for e in execs}) == 1
    ids = [e["image_id"] for e in execs]
    assert None not in ids and len(set(ids)) == 3
    assert all(i.startswith(first["exec_id"] + ":") for i in ids)
    # the child was forked by the second image, and says so on its fork and its exec
    assert fork["parent_image_id"] == second["image_id"]
    assert child["parent_image_id"] == second["image_id"]
    assert child["parent_exec_id"] == second["exec_id"]
    # a sweep derives the same identity for the image that runs now
    assert (swept["exec_id"], swept["image_id"]) == (third["exec_id"], third["image_id"])


def test_a_process_in_a_pid_namespace_reports_its_own_pid_too(watch):
    w = watch()
    w.wait_ready()
    tag = f"pidns-{uuid.uuid4().hex[:8]}"
    # trigger: a shell that is PID 1 of a new PID namespace; it forks a sleep (PID 2 there)
    p = subprocess.Popen([UNSHARE, "--pid", "--fork", "--mount-proc", "--kill-child",
                          SH, "-c", f"{SLEEP} 3 & echo $$; wait", tag], stdout=subprocess.PIPE)
    try:
        inner_pid = int(p.stdout.readline())
        shell = w.until(lambda evs: [e for e in evs if e["event"] == "exec" and e["argv"]
                                     and e["argv"][0] == SH and e["argv"][-1] == tag], 30,
                        what="the namespaced shell")[0]
        sleep = w.until(lambda evs: [e for e in evs if e["event"] == "exec"
                                     and e["ppid"] == shell["pid"]], 30, what="its sleep")[0]
        swept = snapshot_of(sleep["pid"])
    finally:
        p.kill()
        p.wait(30)
    assert inner_pid == 1
    assert shell["vpid"] == 1 and shell["pid"] != 1
    assert sleep["vpid"] == 2 and sleep["argv"] == [SLEEP, "3"]
    assert swept["vpid"] == 2 and swept["pid"] == sleep["pid"]
    exits = w.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == shell["pid"]],
                    30, what="the namespaced shell's exit")
    assert exits[0]["vpid"] == 1


def test_a_process_that_renames_itself_is_not_a_missed_exec(watch, progs):
    # comm and argv change without an exec (prctl + argv rewritten in place): the sweep sees a
    # new comm, but the image is the same (image_id), so nothing was missed.
    w = watch("--sweep-interval", "1")
    w.wait_ready()
    p = subprocess.Popen([str(progs / "rename_self"), "4", "x" * 40], stdout=subprocess.PIPE)
    try:
        pid = int(p.stdout.readline())
        (ex,) = w.until(lambda evs: [e for e in evs if e["event"] == "exec" and e["pid"] == pid],
                        30, what="the exec of rename_self")
        assert ex["argv"] == [str(progs / "rename_self"), "4", "x" * 40]
        assert p.wait(30) == 0  # four seconds: three or more sweeps saw it renamed
        xt = w.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == pid],
                     30, what="its exit")[0]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert xt["exit_code"] == 0 and xt["inferred"] is False
    assert [e for e in w.snapshot() if e["event"] == "missed" and e["pid"] == pid] == []
