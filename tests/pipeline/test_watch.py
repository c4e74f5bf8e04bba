"""`procsentry watch` end to end, as root with the BPF sensor."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procstat import start_ticks

pytestmark = pytest.mark.bpf

SLEEP = os.path.realpath("/bin/sleep")
TRUE = os.path.realpath("/bin/true")
BASH = os.path.realpath("/bin/bash")


def test_process_tree_has_ancestry_links_and_exit_codes(watch):
    w = watch("--stats-interval", "600")
    w.wait_ready()
    # trigger: bash -> python -> sleep, each exiting with its own status
    child = ("import subprocess, sys; "
             f"sys.exit(subprocess.run([{SLEEP!r}, '0.2']).returncode + 5)")
    p = subprocess.Popen([BASH, "-c", f"{sys.executable} -c \"{child}\"; exit 4"])
    assert p.wait(60) == 4
    exits = w.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == p.pid])
    assert exits[0]["exit_code"] == 4 and exits[0]["signal"] is None
    # assertions: the three execs and how they link
    (bash,) = w.find(event="exec", pid=p.pid)
    assert bash["ppid"] == os.getpid()
    assert bash["argv"][:2] == [BASH, "-c"]
    (py,) = [e for e in w.find(event="exec") if e["ppid"] == p.pid and e["argv"][-1] == child]
    sleep = w.until(lambda evs: [e for e in evs if e["event"] == "exec" and e["ppid"] == py["pid"]])[0]
    assert sleep["argv"] == [SLEEP, "0.2"]
    assert sleep["exe"] == SLEEP
    assert py["parent_exec_id"] == bash["exec_id"]
    assert sleep["parent_exec_id"] == py["exec_id"]
    assert [a["exec_id"] for a in sleep["ancestry"][:2]] == [py["exec_id"], bash["exec_id"]]
    assert sleep["ancestry"][0]["argv"][-1] == child
    assert sleep["ancestry"][1]["exe"] == BASH
    assert sleep["ancestry"][2]["pid"] == os.getpid()
    assert bash["start_time"] == int(bash["exec_id"].split(":")[1])
    py_exit = w.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == py["pid"]])[0]
    assert py_exit["exit_code"] == 5 and py_exit["exec_id"] == py["exec_id"]
    sleep_exit = w.until(lambda evs: [e for e in evs if e["event"] == "exit" and e["pid"] == sleep["pid"]])[0]
    assert sleep_exit["exit_code"] == 0 and 0.15e9 < sleep_exit["duration_ns"] < 5e9
    assert w.stop() == 0


def test_processes_started_before_the_monitor_are_existing(watch, tmp_path):
    before = subprocess.Popen([SLEEP, "30"], cwd=tmp_path)
    try:
        w = watch()
        w.wait_ready()
        (ev,) = w.find(event="existing", pid=before.pid)
        assert ev["source"] == "sweep"
        assert ev["argv"] == [SLEEP, "30"]
        assert ev["exe"] == SLEEP
        assert ev["cwd"] == str(tmp_path.resolve())
        assert ev["ppid"] == os.getpid()
        assert ev["start_time"] == start_ticks(before.pid)
        me = w.find(event="existing", pid=os.getpid())[0]
        assert ev["parent_exec_id"] == me["exec_id"]
        assert w.stop() == 0
    finally:
        before.kill()
        before.wait(60)


def test_signal_exit_and_sigterm_prints_final_stats(watch):
    w = watch("--stats-interval", "600")
    w.wait_ready()
    p = subprocess.Popen([SLEEP, "30"])
    w.until(lambda evs: w.find(event="exec", pid=p.pid))
    p.send_signal(signal.SIGKILL)
    p.wait(60)
    (ex,) = w.until(lambda evs: w.find(event="exit", pid=p.pid))
    assert ex["signal"] == signal.SIGKILL and ex["exit_code"] is None
    assert w.stop(signal.SIGTERM) == 0
    last = w.snapshot()[-1]
    assert last["event"] == "stats"
    assert last["events"]["exec"] >= 1 and last["events"]["exit"] >= 1
    assert last["lost"] == 0


def test_sigint_exits_zero(watch):
    w = watch()
    w.wait_ready()
    assert w.stop(signal.SIGINT) == 0
    assert w.snapshot()[-1]["event"] == "stats"


def test_closed_pipe_ends_quietly_with_status_zero():
    cmd = f"set -o pipefail; {sys.executable} -m monitor watch --format json --stats-interval 0.5 | head -3"
    p = subprocess.run([BASH, "-c", cmd], capture_output=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 3
    assert b"Traceback" not in p.stderr and b"BrokenPipe" not in p.stderr


def test_pid_reuse_never_merges_two_processes(watch):
    w = watch("--stats-interval", "600")
    w.wait_ready()
    first = subprocess.Popen([SLEEP, "0.2"])
    pid = first.pid
    first.wait(60)
    second = None
    for _ in range(50):
        # CRIU's trick: the next PID the kernel hands out is ns_last_pid + 1
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        candidate = subprocess.Popen([SLEEP, "0.21"])
        if candidate.pid == pid:
            second = candidate
            break
        candidate.wait(60)
    assert second is not None, "could not get the PID reused"
    second.wait(60)
    ours = ([SLEEP, "0.2"], [SLEEP, "0.21"])  # on a busy host others may get the PID too
    execs = w.until(lambda evs: (lambda xs: xs if len(xs) == 2 else None)(
        [e for e in evs if e["event"] == "exec" and e["pid"] == pid and e["argv"] in ours]))
    exits = w.until(lambda evs: (lambda xs: xs if len(xs) == 2 else None)(
        [e for e in evs if e["event"] == "exit" and e["pid"] == pid and e["argv"] in ours]))
    assert execs[0]["argv"] == [SLEEP, "0.2"] and execs[1]["argv"] == [SLEEP, "0.21"]
    assert execs[0]["exec_id"] != execs[1]["exec_id"]
    assert execs[0]["start_time"] < execs[1]["start_time"]
    assert [x["exec_id"] for x in exits] == [e["exec_id"] for e in execs]
    assert [x["argv"] for x in exits] == [e["argv"] for e in execs]


def test_lost_samples_are_reported_and_the_sweep_finds_the_survivors(watch, progs):
    w = watch("--perf-pages", "1", "--sweep-interval", "600", "--stats-interval", "600")
    w.wait_ready()
    # Stall the reader while processes start: the 4 KiB per-CPU buffers overflow for sure.
    os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        storm = subprocess.run([str(progs / "fork_storm"), "400", TRUE], capture_output=True, check=True,
                               timeout=120)
        survivors = [subprocess.Popen([SLEEP, "20.5"]) for _ in range(30)]
    finally:
        os.kill(w.proc.pid, signal.SIGCONT)
    try:
        lost = w.until(lambda evs: [e for e in evs if e["event"] == "lost"])
        assert sum(e["count"] for e in lost) > 0
        pids = {p.pid for p in survivors}

        def accounted(evs):
            seen = {e["pid"] for e in evs if e["event"] in ("exec", "missed") and e["pid"] in pids
                    and e["argv"] == [SLEEP, "20.5"]}
            return seen == pids

        w.until(accounted, 60)
        missed = [e for e in w.snapshot() if e["event"] == "missed" and e["pid"] in pids]
        assert missed, "the buffer overflowed but no survivor had to be recovered by the sweep"
        assert all(e["source"] == "sweep" for e in missed)
        assert all(e["ppid"] == os.getpid() for e in missed)
        assert len(storm.stdout.split()) == 400
    finally:
        for p in survivors:
            p.kill()
            p.wait(60)
    assert w.stop() == 0
    stats = w.snapshot()[-1]
    assert stats["event"] == "stats"
    assert stats["lost"] == sum(e["count"] for e in w.snapshot() if e["event"] == "lost")
    assert stats["missed"] >= len(missed)


def test_exits_missed_by_the_sensor_are_inferred(watch):
    w = watch("--perf-pages", "1", "--sweep-interval", "600", "--stats-interval", "600")
    w.wait_ready()
    victims = [subprocess.Popen([SLEEP, "30.5"]) for _ in range(5)]
    for v in victims:
        w.until(lambda evs, v=v: w.find(event="exec", pid=v.pid))
    os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        for v in victims:
            v.kill()
            v.wait(60)
        subprocess.run([sys.executable, "-c", "import os\nfor i in range(600):\n    pid = os.fork()\n    if pid == 0: os._exit(0)\n    os.waitpid(pid, 0)"],
                       check=True, timeout=120)
    finally:
        os.kill(w.proc.pid, signal.SIGCONT)
    ids = {v.pid for v in victims}
    exits = w.until(lambda evs: (lambda xs: xs if {e["pid"] for e in xs} == ids else None)(
        [e for e in evs if e["event"] == "exit" and e["pid"] in ids]), 60,
        what=f"exits (reported or inferred) of all of {sorted(ids)}")
    for e in exits:
        if e["inferred"]:
            assert e["source"] == "sweep" and e["exit_code"] is None and e["signal"] is None
        else:
            assert e["signal"] == signal.SIGKILL
        assert e["argv"] == [SLEEP, "30.5"]
    assert w.stop() == 0


def test_filters_and_text_output_escape_control_characters(watch):
    w = watch("--format", "text", "--events", "exec", "--comm", "true", "--stats-interval", "600")
    w.sensor_line()  # attached: from here on every exec is seen
    hostile = b"\x1b[2J\x1b[31mred\nnext"
    subprocess.run([SLEEP, "0.01"], check=True)  # filtered out by --comm
    subprocess.run([TRUE.encode(), hostile], check=True)
    subprocess.run([TRUE, "last-of-the-test"], check=True)  # and filtered out: its exit
    w.until_lines(lambda lines: any(b"last-of-the-test" in line for line in lines), 30,
                  "the exec of true last-of-the-test")
    assert w.stop() == 0
    out = b"".join(w.lines)
    assert b"\x1b" not in out and b"\\x1b[2J\\x1b[31mred\\nnext" in out
    body = [line for line in w.lines if b" exec " in line]
    assert len([line for line in body if f"[{TRUE} ".encode() in line]) >= 2
    assert all(b" exec " in line for line in w.lines
               if b" stats " not in line and b" lost " not in line)  # --events exec
    assert all(b"true" in line for line in body)
    assert not any(b"sleep" in line for line in body)


def test_output_file_is_private_and_appended(watch, tmp_path):
    out = tmp_path / "events.jsonl"
    out.write_bytes(b"previous line\n")
    os.chmod(out, 0o600)
    new = tmp_path / "new.jsonl"
    w = watch("--output", str(new), "--duration", "2")
    assert w.wait(30) == 0
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o600
    assert new.read_bytes().count(b"\n") > 1
    w2 = watch("--output", str(out), "--duration", "1")
    assert w2.wait(30) == 0
    assert out.read_bytes().startswith(b"previous line\n{")


@pytest.mark.root
def test_full_disk_is_counted_not_fatal(watch, tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        w = watch("--output", str(mnt / "events.jsonl"), "--stats-interval", "600")
        # the start-up sweep alone is larger than 16 KiB: its write fails, and says so
        w.until_stderr("procsentry: cannot write events (No space left on device)")
        for _ in range(5):
            subprocess.run([TRUE], check=True)
        assert w.proc.poll() is None, "the monitor died on a full disk"
        assert w.stop() == 0  # still running, and ends as usual
        dropped = w.until_stderr("events dropped: the output could not be written")
        assert int(dropped.split()[1]) > 0, dropped
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_monitor_never_reports_itself(watch):
    w = watch("--sweep-interval", "1", "--stats-interval", "1")
    w.wait_ready()
    # three stats events, a second apart: two periodic sweeps (which list every process) ran
    w.until(lambda evs: len([e for e in evs if e["event"] == "stats"]) >= 3, 30, "three stats events")
    assert w.stop() == 0
    mine = [e for e in w.snapshot() if e.get("pid") == w.proc.pid]
    assert mine == []


def test_uid_filter_takes_a_user_name(watch):
    w = watch("--uid", "nobody", "--events", "exec")
    w.sensor_line()
    theirs = subprocess.Popen([SLEEP, "0.31"], user=65534, group=65534)
    ours = subprocess.Popen([SLEEP, "0.32"])
    assert theirs.wait(30) == 0 and ours.wait(30) == 0
    (ev,) = w.until(lambda evs: [e for e in evs if e["pid"] == theirs.pid], 30,
                    f"the exec of pid {theirs.pid}, run as nobody")
    assert (ev["event"], ev["argv"], ev["uid"], ev["euid"], ev["user"]) == (
        "exec", [SLEEP, "0.31"], 65534, 65534, "nobody")
    # a barrier: once an exec after ours is reported, ours would have been too
    after = subprocess.Popen([SLEEP, "0.33"], user=65534, group=65534)
    assert after.wait(30) == 0
    w.until(lambda evs: [e for e in evs if e["pid"] == after.pid], 30, f"the exec of pid {after.pid}")
    assert w.stop() == 0
    assert w.find(pid=ours.pid) == []
    execs = [e for e in w.snapshot() if e["event"] == "exec"]
    assert [e for e in execs if 65534 not in (e["uid"], e["euid"])] == []
