"""The kernel sensor on the real kernel: spawn known processes, assert exact values."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from monitor.sensors.bpf import limits, wire
from userspace.types import NSEC_PER_TICK

from tests.support.collector import Collector
from tests.support.procstat import proc_stat
from tests.support.wait import reap, reap_pid, run

pytestmark = pytest.mark.bpf

TRUE = os.path.realpath("/bin/true")
SLEEP = os.path.realpath("/bin/sleep")


def ns_inode(pid: int, name: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{name}").st_ino


# --- exec --------------------------------------------------------------------------------------

def test_exec_fields_match_the_process(collector, tmp_path):
    # trigger: a process that lives long enough for /proc to be the oracle
    p = subprocess.Popen([SLEEP, "0.5"], cwd=tmp_path)
    try:
        collector.until(lambda rs: collector.execs(p.pid))
        st = proc_stat(p.pid)
        ns = {n: ns_inode(p.pid, n) for n in ("pid", "mnt", "net", "user", "uts", "ipc", "cgroup")}
        cgroup_rel = Path(f"/proc/{p.pid}/cgroup").read_text().split("::", 1)[1].strip()
        loginuid = int(Path(f"/proc/{p.pid}/loginuid").read_text())
    finally:
        reap(p, 60)
    # assertions
    (ex,) = collector.execs(p.pid)
    assert ex.tid == p.pid and ex.old_tid == p.pid
    assert ex.ppid == os.getpid()
    assert ex.argv == (SLEEP.encode(), b"0.5")
    assert ex.argc == 2
    assert ex.argv_size == len(SLEEP) + 1 + len("0.5") + 1
    assert ex.filename == SLEEP.encode()
    assert ex.exe == SLEEP.encode()
    assert ex.cwd == str(tmp_path.resolve()).encode()
    assert ex.comm == b"sleep"
    assert (ex.uid, ex.gid, ex.euid, ex.egid) == (os.getuid(), os.getgid(), os.geteuid(), os.getegid())
    assert ex.start_boottime // NSEC_PER_TICK == st.starttime
    assert dict(zip(wire.NS_NAMES, ex.ns)) == ns
    assert ex.loginuid == loginuid
    assert ex.cgroup_id == os.stat(f"/sys/fs/cgroup{cgroup_rel}").st_ino
    assert ex.flags == 0
    me = proc_stat(os.getpid())
    assert ex.parent_start_boottime // NSEC_PER_TICK == me.starttime


def test_exit_code(collector):
    p = run(["/bin/sh", "-c", "exit 3"])
    assert p.returncode == 3
    # the shell may exec nothing; its pid is the child of ours
    ex = collector.wait_exit(collector.until(
        lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec) and r.ppid == os.getpid()
                         and r.argv[:2] == (b"/bin/sh", b"-c")), None)))
    assert ex.exit_code == 3 << 8
    from monitor.events import split_wait_status  # noqa: PLC0415
    assert split_wait_status(ex.exit_code) == (3, None, False)


def test_signal_exit(collector):
    p = subprocess.Popen([SLEEP, "30"])
    collector.until(lambda rs: collector.execs(p.pid))
    p.kill()
    reap(p, 60)
    ex = collector.wait_exit(p.pid)
    assert ex.exit_code & 0x7F == signal.SIGKILL
    assert ex.comm == b"sleep"
    assert ex.start_time > 0 and ex.ts_ns > ex.start_time


def test_one_millisecond_process_is_complete(collector, tmp_path):
    # /bin/true lives well under 1 ms: gone from /proc long before anyone could read it
    p = run([TRUE, "short", "lived"], cwd=tmp_path)
    assert p.returncode == 0
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv == (TRUE.encode(), b"short", b"lived")), None))
    (ex,) = collector.execs(pid)
    assert ex.exe == TRUE.encode()
    assert ex.cwd == str(tmp_path.resolve()).encode()
    assert ex.ppid == os.getpid()
    exit_ = collector.wait_exit(pid)
    assert exit_.exit_code == 0
    assert exit_.start_boottime == ex.start_boottime


def test_exec_from_a_thread(collector, progs):
    p = run([str(progs / "threads_then_exec"), TRUE, "after-thread-exec"], timeout=10)
    assert p.returncode == 0
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv == (TRUE.encode(), b"after-thread-exec")), None))
    # records of different CPUs arrive in any order: pick the exec by what it ran
    (ex,) = [r for r in collector.execs(pid) if r.argv == (TRUE.encode(), b"after-thread-exec")]
    assert ex.tid == pid  # de_thread made the execing thread the leader
    assert ex.old_tid != pid  # ... but it was another thread that called execve
    assert collector.wait_exit(pid).exit_code == 0


# --- fork and threads ---------------------------------------------------------------------------

def test_threads_are_not_process_forks(collector, sensor):
    before = sensor.counters()["thread_create"]
    code = textwrap.dedent("""
        import threading, time
        ts = [threading.Thread(target=time.sleep, args=(0.05,)) for _ in range(5)]
        [t.start() for t in ts]; [t.join() for t in ts]
    """)
    p = run([sys.executable, "-c", code])
    assert p.returncode == 0
    pid = collector.until(
        lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec) and r.ppid == os.getpid()
                         and r.argv[-1] == code.encode()), None))
    collector.wait_exit(pid)
    collector.barrier()  # a fork record from another CPU would be in by now
    forks_from_child = [r for r in collector.records
                        if isinstance(r, wire.RawFork) and r.parent_tgid == pid]
    assert forks_from_child == []
    assert len(collector.exits(pid)) == 1
    assert sensor.counters()["thread_create"] - before >= 5


def test_fork_without_exec(collector):
    pid = os.fork()
    if pid == 0:
        os._exit(5)
    status = reap_pid(pid, 60)
    assert os.WEXITSTATUS(status) == 5
    collector.until(lambda rs: collector.exits(pid))
    (fk,) = collector.of(pid, wire.RawFork)
    assert fk.parent_tgid == os.getpid()
    assert fk.parent_tid == threading.get_native_id()
    assert fk.start_boottime // NSEC_PER_TICK > 0
    assert collector.execs(pid) == []
    assert collector.exits(pid)[0].exit_code == 5 << 8


def test_exit_leader_reports_one_exit_with_the_group_status(collector, progs):
    p = run([str(progs / "exit_leader")], timeout=10)
    assert p.returncode == 7
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.exe and r.exe.endswith(b"/exit_leader")
                                           and r.ppid == os.getpid()), None))
    ex = collector.wait_exit(pid)
    collector.barrier()  # a second exit record, from another thread on another CPU, would be in
    assert len(collector.exits(pid)) == 1
    assert ex.exit_code == 7 << 8
    assert ex.tid != pid  # the last thread out was not the leader


# --- argv ---------------------------------------------------------------------------------------

def test_argv_of_5000_arguments_is_truncated_and_flagged(collector):
    args = [TRUE] + [f"arg{i:05d}" for i in range(5000)]
    run(args)
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv[1:2] == (b"arg00000",)), None))
    (ex,) = collector.execs(pid)
    full = b"\0".join(a.encode() for a in args) + b"\0"
    assert ex.argc == 5001
    assert ex.argv_size == len(full)
    assert ex.flags & wire.ARGV_TRUNCATED
    captured = full[:limits.ARGV_MAX_BYTES]
    assert b"\0".join(ex.argv) == captured.rstrip(b"\0") or b"\0".join(ex.argv) + b"\0" == captured
    assert len(b"\0".join(ex.argv)) + 1 >= limits.ARGV_MAX_BYTES


def test_hostile_argv_round_trips(collector):
    hostile = [b"\xff\xfe not utf-8", b"line1\nline2", b"\x1b[31mred\x1b[0m", b"", b"tab\there", b"\x07bell"]
    run([TRUE.encode()] + hostile)
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv[1:2] == (hostile[0],)), None))
    (ex,) = collector.execs(pid)
    assert ex.argv == (TRUE.encode(), *hostile)
    assert ex.flags & wire.ARGV_TRUNCATED == 0


def test_empty_and_4096_byte_arguments(collector):
    big = b"x" * 4096
    run([TRUE.encode(), b"", big, b""])
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and len(r.argv) == 4 and r.argv[2] == big), None))
    assert collector.execs(pid)[0].argv == (TRUE.encode(), b"", big, b"")


# --- paths --------------------------------------------------------------------------------------

def test_memfd_exec_is_marked_fileless(collector):
    code = textwrap.dedent(f"""
        import os
        fd = os.memfd_create("procsentry-payload", 0)
        with open({TRUE!r}, "rb") as f:
            os.write(fd, f.read())
        os.execve(f"/proc/self/fd/{{fd}}", ["payload", "from-memfd"], {{}})
    """)
    p = run([sys.executable, "-c", code])
    assert p.returncode == 0
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv == (b"payload", b"from-memfd")), None))
    (ex,) = [r for r in collector.execs(pid) if r.argv == (b"payload", b"from-memfd")]
    assert ex.exe == b"/memfd:procsentry-payload"
    assert ex.flags & wire.EXE_UNLINKED
    assert ex.flags & wire.EXE_DETACHED
    assert ex.filename.startswith(b"/proc/self/fd/")


def test_deleted_executable_is_flagged(collector, tmp_path):
    exe = tmp_path / "vanishing"
    shutil.copy(TRUE, exe)
    # unlinked after open, executed through the held fd (fexecve): the inode has no links
    code = textwrap.dedent(f"""
        import os
        fd = os.open({str(exe)!r}, os.O_RDONLY)
        os.unlink({str(exe)!r})
        os.execve(fd, ["vanishing", "gone"], {{}})
    """)
    p = run([sys.executable, "-c", code])
    assert p.returncode == 0
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv == (b"vanishing", b"gone")), None))
    (ex,) = [r for r in collector.execs(pid) if r.argv == (b"vanishing", b"gone")]
    assert ex.flags & wire.EXE_UNLINKED
    assert not ex.flags & wire.EXE_DETACHED
    assert ex.exe == str(exe.resolve()).encode()


def test_deep_cwd_is_complete(collector, tmp_path):
    deep = tmp_path
    for i in range(12):
        deep = deep / (f"level{i:02d}-" + "d" * 30)
    deep.mkdir(parents=True)
    assert len(str(deep)) > 300
    run([TRUE, "deep-cwd"], cwd=deep)
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv == (TRUE.encode(), b"deep-cwd")), None))
    ex = collector.execs(pid)[0]
    assert ex.cwd == str(deep.resolve()).encode()
    assert not ex.flags & wire.CWD_TRUNCATED


def test_a_path_deeper_than_the_walk_is_not_reported_as_an_absolute_one(collector, tmp_path):
    """Any user can nest directories past the walk's PATH_MAX_DEPTH components. The walk keeps
    the leaf end and flags the rest as lost; the record then said "/" + that tail, an absolute
    path that does not exist (a payload 70 levels under /tmp was reported as /d/d/.../payload,
    out of the reach of every rule and --exe filter about /tmp). The tail now starts with
    "...", which no absolute path does."""
    from monitor.sensors.bpf.source import exec_record

    deep = tmp_path
    for _ in range(limits.PATH_MAX_DEPTH + 6):
        deep = deep / "d"
    deep.mkdir(parents=True)
    shutil.copy(TRUE, deep / "payload")
    run(["./payload", "too-deep"], cwd=deep)
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv == (b"./payload", b"too-deep")), None))
    raw = collector.execs(pid)[0]
    assert raw.flags & wire.EXE_TRUNCATED and raw.flags & wire.CWD_TRUNCATED
    rec = exec_record(raw)
    real_exe, real_cwd = str((deep / "payload").resolve()).encode(), str(deep.resolve()).encode()
    assert rec.exe.startswith(b".../") and real_exe.endswith(rec.exe[3:])
    assert rec.cwd.startswith(b".../") and real_cwd.endswith(rec.cwd[3:])
    assert rec.exe.count(b"/") == rec.cwd.count(b"/") == limits.PATH_MAX_DEPTH  # the leaf end
    assert {"exe_truncated", "cwd_truncated"} <= set(rec.capture)


def test_relative_exec_resolves_to_an_absolute_path(collector, tmp_path):
    shutil.copy(TRUE, tmp_path / "rel-true")
    run(["./rel-true", "relative"], cwd=tmp_path)
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv == (b"./rel-true", b"relative")), None))
    ex = collector.execs(pid)[0]
    assert ex.filename == b"./rel-true"
    assert ex.exe == str((tmp_path / "rel-true").resolve()).encode()


# --- wire and load --------------------------------------------------------------------------------

def test_wire_sizes(collector):
    run([TRUE, "size-check"])
    collector.until(lambda rs: any(isinstance(r, wire.RawExec) and r.argv == (TRUE.encode(), b"size-check")
                                   for r in rs))
    assert collector.sizes
    for got, declared in collector.sizes:
        # perf pads each raw sample to 8 bytes after its 4-byte size word
        assert declared <= got < declared + 8
    fixed = {wire.RawFork: wire.FORK.size, wire.RawExit: wire.EXIT.size}
    for r, (got, declared) in zip(collector.records, collector.sizes):
        if type(r) in fixed:
            assert declared == fixed[type(r)]
        else:
            assert declared >= wire.EXEC.size


def test_ten_thousand_execs_none_lost(collector, sensor, progs, tmp_path):
    """10,000 fork+exec of /bin/true in a tight loop, at the default buffer size (300 in the
    emulated kernel matrix, PROCSENTRY_VM=1, where each exec is ~50x slower and 1,000 took
    120 s of a guest's budget on 5.10)."""
    lost_before = sensor.stats.lost
    n = 300 if os.environ.get("PROCSENTRY_VM") == "1" else 10_000
    # its PIDs go to a file: 10,000 lines can be more than a pipe holds, and nobody reads it yet
    with open(tmp_path / "pids", "wb") as pids_out:
        storm = subprocess.Popen([str(progs / "fork_storm"), str(n), TRUE], stdout=pids_out)
    # read while it runs (the buffers are sized for a reader that keeps up), until it ends
    try:
        collector.until(lambda rs: storm.poll() is not None, 600, f"fork_storm's {n} execs to end")
    finally:
        if storm.poll() is None:  # the wait failed: end it, within a bound too
            storm.kill()
            reap(storm, 10)
    out = (tmp_path / "pids").read_bytes().split()
    pids = [int(x) for x in out]
    assert len(pids) == n and storm.returncode == 0
    collector.barrier(60)  # every record of the storm is read
    # PIDs can wrap within 10,000 forks (pid_max is 32768 on small machines): match in order
    execs = sorted((r for r in collector.records if isinstance(r, wire.RawExec) and r.ppid == storm.pid),
                   key=lambda r: r.ts_ns)
    got = [(r.tgid, r.argv) for r in execs]
    want = [(pid, (TRUE.encode(), f"tok-{i}".encode())) for i, pid in enumerate(pids)]
    missing = len(set(want) - set(got))
    assert missing == 0, f"{missing} of {n} execs not captured"
    assert got == want
    exits = {(r.tgid, r.start_boottime) for r in collector.records if isinstance(r, wire.RawExit)}
    assert all((r.tgid, r.start_boottime) in exits for r in execs)
    assert sensor.stats.lost == lost_before


def test_controlling_tty(collector):
    import fcntl  # noqa: PLC0415
    import termios  # noqa: PLC0415
    master, slave = os.openpty()
    name = os.ttyname(slave)  # /dev/pts/N

    def take_tty():  # in the child: new session, then make the pty its controlling terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        p = run([TRUE, "with-tty"], stdin=slave, start_new_session=True,
                           preexec_fn=take_tty)
        assert p.returncode == 0
    finally:
        os.close(slave)
        os.close(master)
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv == (TRUE.encode(), b"with-tty")), None))
    assert collector.execs(pid)[0].tty == ("pts" + name.rsplit("/", 1)[1]).encode()
    # and a process without one
    run([TRUE, "no-tty"], start_new_session=True, stdin=subprocess.DEVNULL)
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv == (TRUE.encode(), b"no-tty")), None))
    assert collector.execs(pid)[0].tty is None


def test_bcc_reader_path_gives_the_same_records(monkeypatch):
    """The in-process bcc reader (other architectures) decodes to the same records."""
    from monitor.sensors.bpf.loader import BccSensor, Sensor  # noqa: PLC0415
    monkeypatch.setenv("PROCSENTRY_BCC_READER", "1")
    s = Sensor(perf_pages=64)
    s.start()
    try:
        assert type(s) is BccSensor
        run([TRUE, "via-bcc-reader"])
        c = Collector(s)
        pid = c.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                       and r.argv == (TRUE.encode(), b"via-bcc-reader")), None))
        assert c.execs(pid)[0].exe == TRUE.encode()
        assert c.wait_exit(pid).exit_code == 0
        assert s.counters()["exec"] >= 1
    finally:
        s.close()


# --- identity: the pid inside a pid namespace, and one identity per exec image ------------------
# Issue 11 defects 6 and 5. Each test reads the live process through procfs (read_process, the
# sweep's reader) while the image the sensor announced is still running, and asserts that both
# sides give the same numbers.

def _procfs():
    from userspace.procfs import ProcFS  # noqa: PLC0415
    return ProcFS("/proc")


def _sensor_key(fs, r) -> "ProcKey":
    from userspace.types import ProcKey, start_ticks_from_ns  # noqa: PLC0415
    return ProcKey(fs.boot_id(), r.tgid, start_ticks_from_ns(r.start_boottime))


def test_pid_namespace_processes_report_their_in_namespace_pid(collector):
    from userspace.process import read_process  # noqa: PLC0415
    from userspace.types import Depth  # noqa: PLC0415
    fs = _procfs()
    # trigger: a shell that is pid 1 of a new pid namespace forks a sleep (pid 2 there: nothing
    # else runs in the namespace). --kill-child: when unshare dies, its child (the namespace's
    # init) is killed, and with it every process of the namespace (zap_pid_ns_processes).
    script = f"{SLEEP} 30 & wait"
    p = subprocess.Popen(["unshare", "--pid", "--mount-proc", "--kill-child", "/bin/sh", "-c", script])
    try:
        init_fork = collector.until(lambda rs: next(
            (r for r in rs if isinstance(r, wire.RawFork) and r.parent_tgid == p.pid), None))
        init = init_fork.tgid
        sleep_exec = collector.until(lambda rs: next(
            (r for r in rs if isinstance(r, wire.RawExec) and r.ppid == init and r.argv == (SLEEP.encode(), b"30")),
            None))
        child = sleep_exec.tgid
        # procfs, while both live: the sweep's view of the same two processes
        snap_init = read_process(fs, init, Depth.CHEAP)
        snap_child = read_process(fs, child, Depth.CHEAP)
    finally:
        p.kill()  # unshare ignores SIGTERM while it waits for its child
        reap(p, 10)
    collector.until(lambda rs: collector.exits(init) and collector.exits(child))

    assert init != 1 and child not in (1, 2)  # host pids
    (init_exec,) = collector.execs(init)
    assert init_exec.argv == (b"/bin/sh", b"-c", script.encode())
    (child_fork,) = collector.of(child, wire.RawFork)
    assert child_fork.parent_tgid == init
    for r in (init_fork, init_exec, collector.exits(init)[0]):
        assert (r.tgid, r.vpid, r.pid_level) == (init, 1, 1)
    for r in (child_fork, sleep_exec, collector.exits(child)[0]):
        assert (r.tgid, r.vpid, r.pid_level) == (child, 2, 1)
    assert (snap_init.vpid, snap_init.pid_level, snap_init.ns_pids) == (1, 1, (init, 1))
    assert (snap_child.vpid, snap_child.pid_level, snap_child.ns_pids) == (2, 1, (child, 2))
    # and a process of the host's own namespace: vpid is its pid
    assert (init_fork.parent_tgid, collector.execs(p.pid)[0].vpid, collector.execs(p.pid)[0].pid_level) == (
        p.pid, p.pid, 0)


def test_vpid_when_the_leader_exited_before_the_last_thread(collector, progs):
    # The exit is reported by a non-leader thread; its vpid is read through the group leader,
    # a zombie kept attached until the group is empty (release_task): pid 1 of the namespace.
    exe = str(progs / "exit_leader")
    p = run(["unshare", "--pid", "--fork", "--kill-child", exe], timeout=10)
    assert p.returncode == 7
    pid = collector.until(lambda rs: next((r.tgid for r in rs if isinstance(r, wire.RawExec)
                                           and r.argv == (exe.encode(),)), None))
    ex = collector.wait_exit(pid)
    assert ex.tid != pid and ex.exit_code == 7 << 8  # the last thread out was not the leader
    assert (ex.vpid, ex.pid_level) == (1, 1)
    assert (collector.execs(pid)[0].vpid, collector.execs(pid)[0].pid_level) == (1, 1)


def _gated_exec_chain(collector, argv, images, env=None):
    """Run argv, whose images each block reading a line from stdin before exec-ing the next;
    for each of `images` (expected argv tuples, in order) wait for its exec record, read the
    live process through procfs while that image runs, then let it go on. Returns
    [(exec record, Stat, ProcessSnapshot)] and the forks the process made."""
    from userspace.process import read_process  # noqa: PLC0415
    from userspace.types import Depth  # noqa: PLC0415
    fs = _procfs()
    r, w = os.pipe()
    p = subprocess.Popen(argv, stdin=r, env=env)
    os.close(r)
    seen = []
    try:
        for i, want in enumerate(images):
            ex = collector.until(lambda rs: next(
                (x for x in collector.execs(p.pid) if x.argv == want and x not in [s[0] for s in seen]), None))
            seen.append((ex, proc_stat(p.pid), read_process(fs, p.pid, Depth.CHEAP)))
            if i < len(images) - 1:
                os.write(w, b"again\n" if i < len(images) - 2 else b"last\n")
    finally:
        os.close(w)
        p.kill()
        reap(p, 10)
    collector.until(lambda rs: collector.exits(p.pid))
    forks = [x for x in collector.records if isinstance(x, wire.RawFork) and x.parent_tgid == p.pid]
    return seen, forks


def _assert_sensor_and_procfs_agree(seen):
    fs = _procfs()
    for ex, st, snap in seen:
        # the four mm members, as the sensor read them at exec and stat prints them now
        assert (ex.start_code, ex.end_code, ex.start_stack, ex.arg_start) == (
            st.start_code, st.end_code, st.start_stack, st.arg_start)
        assert ex.argv_size == st.arg_end - st.arg_start  # field 49 too
        key = _sensor_key(fs, ex)
        assert key == snap.key
        assert snap.image_id is not None and snap.image_id == key.image_id(ex.arg_start, ex.end_code)


def test_each_exec_image_has_its_own_identity_and_procfs_derives_the_same(collector):
    # sh -c '... exec sh -c "... exec sleep"': one process, three images; each waits for a line
    # on stdin so the test can read stat field 48 of that very image. The second image also
    # forks a child (/bin/true), which must name the second image as its parent image.
    inner = f"read b; {TRUE} forked-by-image-2; exec {SLEEP} 30"
    outer = f'read a; exec /bin/sh -c "{inner}"'
    images = [(b"/bin/sh", b"-c", outer.encode()), (b"/bin/sh", b"-c", inner.encode()), (SLEEP.encode(), b"30")]
    seen, forks = _gated_exec_chain(collector, ["/bin/sh", "-c", outer], images)

    _assert_sensor_and_procfs_agree(seen)
    execs = [ex for ex, _st, _snap in seen]
    assert len({ex.start_boottime for ex in execs}) == 1  # one process: one exec_id ...
    assert len({ex.arg_start for ex in execs}) == 3  # ... three images
    assert len({snap.image_id for _ex, _st, snap in seen}) == 3
    assert execs[0].ts_ns < execs[1].ts_ns < execs[2].ts_ns
    # the child forked by the second image carries that image's layout
    (fork,) = forks
    assert (fork.arg_start, fork.end_code) == (execs[1].arg_start, execs[1].end_code)
    fs = _procfs()
    assert _sensor_key(fs, execs[1]).image_id(fork.arg_start, fork.end_code) == seen[1][2].image_id
    (child_exec,) = collector.execs(fork.tgid)
    assert child_exec.argv == (TRUE.encode(), b"forked-by-image-2")


def _aslr_on() -> bool:
    return Path("/proc/sys/kernel/randomize_va_space").read_text().strip() != "0"


@pytest.mark.parametrize("aslr", [True, False], ids=["aslr", "setarch-R"])
def test_reexec_of_the_same_program_with_the_same_strings(collector, aslr):
    """The documented residual case: without ASLR (setarch -R: ADDR_NO_RANDOMIZE, which exec
    keeps), arg_start depends only on the lengths of filename, environment and argv, so a
    program re-executed with the same strings keeps arg_start and end_code, and its two images
    share one image_id. With ASLR every exec draws a new stack top (randomize_stack_top)."""
    script = f'read a; [ "$a" = last ] && exec {SLEEP} 30; exec /bin/sh -c "$S"'
    env = {"S": script, "PATH": "/usr/bin:/bin"}
    same = (b"/bin/sh", b"-c", script.encode())
    prefix = [] if aslr else ["setarch", "-R"]
    # Three shell images: the first got its environment from us, the next two from dash, which
    # adds PWD; the last two are the identical pair. setarch's own image execs at once: not gated.
    images = [same, same, same, (SLEEP.encode(), b"30")]
    seen, _forks = _gated_exec_chain(collector, prefix + ["/bin/sh", "-c", script], images, env=env)
    _assert_sensor_and_procfs_agree(seen)
    sh1, sh2, sleep = (ex for ex, _st, _snap in seen[-3:])
    assert sh1.ts_ns < sh2.ts_ns and sh1.start_boottime == sh2.start_boottime
    if aslr and _aslr_on():
        assert sh1.arg_start != sh2.arg_start and sh1.start_code != sh2.start_code
        assert seen[-3][2].image_id != seen[-2][2].image_id
    else:  # the collision, pinned so that a change of kernel behaviour is noticed
        assert (sh1.arg_start, sh1.end_code, sh1.start_stack) == (sh2.arg_start, sh2.end_code, sh2.start_stack)
        assert seen[-3][2].image_id == seen[-2][2].image_id
        # a different program is still told apart, by end_code and by its strings' length
        assert (sleep.arg_start, sleep.end_code) != (sh1.arg_start, sh1.end_code)
        assert sleep.end_code != sh1.end_code


# --- capabilities and fds 0-2 at exec ----------------------------------------------------------

def _status_caps(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":\t" in line)
    return int(fields["CapEff"], 16), int(fields["CapPrm"], 16)


def test_stdio_pipe_file_and_tcp_socket(collector, tmp_path):
    # trigger: stdin the read end of a pipe, stdout a regular file, stderr a TCP connection
    # to a 127.0.0.1 listener; it lives long enough for /proc/<pid>/fd to be the oracle
    import socket  # noqa: PLC0415
    from monitor.sensors.bpf.source import stdio_kind  # noqa: PLC0415

    listener = socket.create_server(("127.0.0.1", 0))
    conn = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    out = tmp_path / "stdout"
    r_end, w_end = os.pipe()
    try:
        with open(out, "wb") as f:
            p = subprocess.Popen([SLEEP, "0.5"], stdin=r_end, stdout=f, stderr=conn.fileno())
        try:
            collector.until(lambda rs: collector.execs(p.pid))
            links = [os.readlink(f"/proc/{p.pid}/fd/{i}") for i in range(3)]
            inodes = [os.stat(f"/proc/{p.pid}/fd/{i}").st_ino for i in range(3)]
        finally:
            reap(p, 60)
    finally:
        for fd in (r_end, w_end):
            os.close(fd)
        for s in (conn, peer, listener):
            s.close()
    (ex,) = collector.execs(p.pid)
    assert links[0].startswith("pipe:[") and links[2].startswith("socket:[")
    assert links[1] == str(out.resolve())
    assert [s.state for s in ex.stdio] == [wire.STDIO_OPEN] * 3
    # the inode numbers procfs shows: pipe:[N], the file's st_ino, socket:[N]
    assert [s.ino for s in ex.stdio] == inodes
    assert ex.stdio[0].ino == int(links[0][6:-1]) and ex.stdio[2].ino == int(links[2][8:-1])
    assert ex.stdio[1].ino == os.stat(out).st_ino
    kinds = [stdio_kind(i, s) for i, s in enumerate(ex.stdio)]
    assert [(k.kind, k.family, k.type, k.protocol) for k in kinds] == [
        ("pipe", None, None, None), ("file", None, None, None), ("socket", "inet", "stream", "tcp")]
    assert ex.flags == 0


def test_stdio_closed_and_dev_null(collector):
    # trigger: stdin closed (the shell's <&-), stdout /dev/null, stderr a UNIX socket
    import socket  # noqa: PLC0415
    from monitor.sensors.bpf.source import stdio_kind  # noqa: PLC0415

    a, b = socket.socketpair()
    try:
        run(["/bin/sh", "-c", f"exec {TRUE} stdio-closed <&-"], stdout=subprocess.DEVNULL,
                       stderr=a.fileno(), check=True, timeout=30)
        pid = collector.exec_of((TRUE.encode(), b"stdio-closed"))
        a_ino = os.fstat(a.fileno()).st_ino
    finally:
        a.close()
        b.close()
    (ex,) = [e for e in collector.execs(pid) if e.argv == (TRUE.encode(), b"stdio-closed")]
    kinds = [stdio_kind(i, s) for i, s in enumerate(ex.stdio)]
    null = os.stat("/dev/null")
    assert kinds[0].kind == "closed" and ex.stdio[0].state == wire.STDIO_CLOSED
    assert (kinds[1].kind, kinds[1].inode, kinds[1].dev) == (
        "chr", null.st_ino, f"{os.major(null.st_rdev)}:{os.minor(null.st_rdev)}")
    assert (kinds[2].kind, kinds[2].inode, kinds[2].family, kinds[2].type, kinds[2].protocol) == (
        "socket", a_ino, "unix", "stream", None)


def test_capabilities_of_root_and_of_a_setpriv_process(collector):
    # trigger: the same program as root (this test), as nobody with no capabilities, and as
    # root with a bounding set of CAP_NET_BIND_SERVICE (10) only
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is needed for this test")
    runs = {
        "root": [SLEEP, "0.31"],
        "nobody": [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                   SLEEP, "0.32"],
        "bind": [setpriv, "--bounding-set=-all,+net_bind_service", SLEEP, "0.33"],
    }
    status = {}
    pids = {}
    for name, argv in runs.items():
        p = subprocess.Popen(argv)
        try:
            pid = collector.exec_of((SLEEP.encode(), argv[-1].encode()))
            status[name] = _status_caps(pid)
            pids[name] = pid
        finally:
            reap(p, 60)
    got = {}
    for name, pid in pids.items():
        (ex,) = [e for e in collector.execs(pid) if e.argv[0] == SLEEP.encode()]
        got[name] = ex
        assert (ex.cap_effective, ex.cap_permitted) == status[name], name
    assert (got["root"].cap_effective, got["root"].cap_permitted) == _status_caps(os.getpid())
    assert (got["nobody"].cap_effective, got["nobody"].cap_permitted) == (0, 0)
    assert (got["nobody"].uid, got["nobody"].euid, got["nobody"].suid, got["nobody"].fsuid) == (65534,) * 4
    assert (got["bind"].cap_effective, got["bind"].cap_permitted) == (1 << 10, 1 << 10)
    assert (got["root"].suid, got["root"].fsuid) == (0, 0)
