"""Layer 4: the live host, no BPF. read_process on every real PID against psutil (psutil's
test_process_all: only ProcessGone/AccessDenied may escape), zombies, vanished processes,
deleted and memfd executables, and the socket map against the net/ files and `ss`."""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Iterator

import psutil
import pytest

from userspace.process import read_process, read_stat
from userspace.procfs import AccessDenied, ProcessGone, ProcFS, Unavailable
from userspace.sockets import DumpBudget, SocketTables, read_diag_table, read_proc_net_table
from userspace.sweep import IncrementalScanner, SweepStats, scan
from userspace.types import Depth, Missing

from tests.support.wait import until

FS = ProcFS()  # the real one: default root


def wait_for_state(pid: int, states: str, timeout: float = 5.0) -> None:
    until(lambda: read_stat(FS, pid).state in states, timeout, f"pid {pid} in state {states}",
          lambda: f"state {read_stat(FS, pid).state}")


def wait_exec(proc: subprocess.Popen, comm: bytes, timeout: float = 5.0) -> None:
    """Until the child has exec'd and its argv is in place: comm changes in begin_new_exec,
    before load_elf_binary's create_elf_tables sets mm->arg_start, so for a moment a fresh
    process shows its new comm with an empty cmdline."""
    def cheap():
        return read_process(FS, proc.pid, Depth.CHEAP)
    until(lambda: (lambda s: s.comm == comm and s.argv)(cheap()), timeout,
          f"pid {proc.pid} to exec {comm!r}", lambda: (cheap().comm, cheap().argv))


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    p = subprocess.Popen(["sleep", "60"])
    wait_exec(p, b"sleep")
    yield p
    p.kill()
    p.wait(60)


# --- every PID against psutil ------------------------------------------------------------------

def _psutil_cmdline_matches(ours: tuple[bytes, ...], theirs: list[str]) -> bool:
    theirs_b = [os.fsencode(a) for a in theirs]
    if list(ours) == theirs_b:
        return True
    # psutil splits a single space-separated setproctitle string and drops a trailing empty
    # argument; we keep the kernel's bytes (parse_cmdline docstring).
    joined = b" ".join(ours)
    return joined.split() == theirs_b or joined.split(b" ") == theirs_b or list(ours[:-1]) == theirs_b


def _compare(pid: int) -> list[str]:
    """Differences between our FULL snapshot and psutil for one pid; [] when equal or gone."""
    try:
        ours = read_process(FS, pid, Depth.FULL)
    except (ProcessGone, AccessDenied):
        return []
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            ppid = p.ppid()
            uids = tuple(p.uids())
            threads = p.num_threads()
            rss = p.memory_info().rss
            cpu = p.cpu_times()
            try:
                num_fds = p.num_fds()
            except psutil.AccessDenied:
                num_fds = None
            try:
                exe = p.exe()
            except (psutil.AccessDenied, psutil.ZombieProcess):
                exe = None
            try:
                cmdline = p.cmdline()
            except (psutil.AccessDenied, psutil.ZombieProcess):
                cmdline = None
    except psutil.NoSuchProcess:
        return []
    diffs = []
    self_slack = 3 if pid == os.getpid() else 0  # our own reads open fds and allocate
    if ours.ppid != ppid:
        diffs.append(f"ppid {ours.ppid} != {ppid}")
    if ours.uids is None or ours.uids[:3] != uids:
        diffs.append(f"uids {ours.uids} != {uids}")
    if ours.threads != threads:
        diffs.append(f"threads {ours.threads} != {threads}")
    if ours.exe is not None and exe is not None and ours.exe != os.fsencode(exe):
        diffs.append(f"exe {ours.exe!r} != {exe!r}")
    if ours.exe is None:
        reason = ours.missing.get("exe")
        # psutil answers a denied exe with a guess from cmdline[0] (psutil Process.exe guess_it)
        ok = {Missing.KERNEL_THREAD.value: exe in ("", None), Missing.DENIED.value: True,
              Missing.ZOMBIE.value: not exe}
        if not ok.get(reason, False):
            diffs.append(f"exe missing as {reason!r} but psutil says {exe!r}")
    if ours.argv is not None and cmdline is not None and not _psutil_cmdline_matches(ours.argv, cmdline):
        diffs.append(f"cmdline {ours.argv!r} != {cmdline!r}")
    if ours.fd_count is not None and num_fds is not None and abs(ours.fd_count - num_fds) > self_slack:
        diffs.append(f"fds {ours.fd_count} != {num_fds}")
    if ours.missing.get("fd_count") == Missing.DENIED.value and num_fds is not None:
        diffs.append("fd/ listing denied to us but not to psutil")
    if ours.rss_bytes is None or abs(ours.rss_bytes - rss) > max(rss // 20, 1 << 20 if self_slack else 0):
        diffs.append(f"rss {ours.rss_bytes} != {rss}")
    tick = FS.clock_ticks
    for name, ticks, secs in (("utime", ours.utime_ticks, cpu.user), ("stime", ours.stime_ticks, cpu.system)):
        if ticks is None or abs(ticks / tick - secs) > 0.25:
            diffs.append(f"{name} {ticks} ticks != {secs}s")
    return diffs


def test_every_pid_against_psutil() -> None:
    pids = FS.pids()
    assert len(pids) > 5
    compared = 0
    failures = {}
    for pid in pids:
        diffs = _compare(pid)
        for _retry in range(2):  # processes change between two reads; a busy one, often
            if diffs:
                diffs = _compare(pid)
        if diffs:
            failures[pid] = diffs
        compared += 1
    assert not failures, failures
    assert compared == len(pids)


def test_every_pid_only_allowed_exceptions() -> None:
    """Every depth and option on every PID: only ProcessGone/AccessDenied may escape."""
    for pid in FS.pids():
        for depth in Depth:
            try:
                s = read_process(FS, pid, depth, environ=True)
            except (ProcessGone, AccessDenied):
                continue
            assert s.pid == pid and s.key.pid == pid and s.key.start_ticks == s.start_ticks
            assert s.key.boot_id == FS.boot_id()
            for field_name, reason in s.missing.items():
                assert reason in {m.value for m in Missing}, (pid, field_name, reason)


def test_boot_id_matches_kernel() -> None:
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert FS.boot_id() == f.read().strip()


# --- states: zombie, gone, kernel thread, odd executables --------------------------------------

def test_zombie() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    try:
        wait_for_state(pid, "Z")
        s = read_process(FS, pid, Depth.FULL, environ=True)
        assert s.zombie and s.state == "Z" and not s.kernel_thread
        assert s.ppid == os.getpid() and s.uids is not None
        assert s.argv is None and s.missing["argv"] == Missing.ZOMBIE.value
        assert s.exe is None and s.missing["exe"] == Missing.ZOMBIE.value
        assert s.environ is None and s.missing["environ"] == Missing.ZOMBIE.value
        assert s.fds == () or s.missing.get("fds") == Missing.ZOMBIE.value
    finally:
        os.waitpid(pid, 0)
    with pytest.raises(ProcessGone):
        read_process(FS, pid)


def test_process_gone(sleeper: subprocess.Popen) -> None:
    s = read_process(FS, sleeper.pid, Depth.FULL)
    assert s.argv == (b"sleep", b"60") and s.comm == b"sleep"
    sleeper.kill()
    sleeper.wait(60)
    with pytest.raises(ProcessGone):
        read_process(FS, sleeper.pid)
    with pytest.raises(ProcessGone):
        read_stat(FS, sleeper.pid)


def test_kernel_thread() -> None:
    kthreads = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "kthreadd"]
    if not kthreads:
        pytest.skip("no kthreadd visible (running in a pid namespace?)")
    s = read_process(FS, kthreads[0], Depth.FULL, environ=True)
    assert s.kernel_thread and s.argv is None and s.exe is None
    assert s.missing["argv"] == s.missing["exe"] == s.missing["environ"] == Missing.KERNEL_THREAD.value


def test_deleted_exe(tmp_path) -> None:
    exe = tmp_path / "sleepy"
    shutil.copy("/bin/sleep", exe)
    p = subprocess.Popen([str(exe), "60"])
    try:
        wait_exec(p, b"sleepy")
        exe.unlink()
        s = read_process(FS, p.pid, Depth.CHEAP)
        assert (s.exe, s.exe_deleted, s.exe_memfd) == (os.fsencode(exe), True, False)
    finally:
        p.kill()
        p.wait(60)


def test_memfd_exe() -> None:
    fd = os.memfd_create("payload", 0)
    try:
        with open("/bin/sleep", "rb") as f:
            os.write(fd, f.read())
        p = subprocess.Popen(["sleep", "60"], executable=f"/proc/self/fd/{fd}", pass_fds=(fd,))
    finally:
        os.close(fd)
    try:
        wait_for_state(p.pid, "S")
        s = until(lambda: (lambda s: s if s.exe_memfd else None)(read_process(FS, p.pid, Depth.CHEAP)),
                  5, "the memfd exe to show", lambda: read_process(FS, p.pid, Depth.CHEAP).exe)
        assert (s.exe, s.exe_deleted, s.exe_memfd) == (b"/memfd:payload", True, True)
    finally:
        p.kill()
        p.wait(60)


def test_argv_bytes_survive() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)", b"\xff\xfe\nnot utf-8", b"", b"sp ace"]
    p = subprocess.Popen(argv)
    try:
        want = tuple(os.fsencode(a) for a in argv)
        until(lambda: read_process(FS, p.pid, Depth.CHEAP).argv == want, 5, f"argv {want}",
              lambda: read_process(FS, p.pid, Depth.CHEAP).argv)
    finally:
        p.kill()
        p.wait(60)


def test_threads_listed() -> None:
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="probe")
    t.start()
    try:
        s = read_process(FS, os.getpid(), Depth.FULL)
        assert s.thread_list is not None and threading.get_native_id() in {x.tid for x in s.thread_list}
        assert t.native_id in {x.tid for x in s.thread_list}
        assert s.threads == len(s.thread_list)
    finally:
        stop.set()
        t.join()


def test_sweep_and_incremental_live(sleeper: subprocess.Popen) -> None:
    stats = SweepStats()
    snaps = {s.pid: s for s in scan(FS, Depth.CHEAP, stats=stats)}
    assert os.getpid() in snaps and sleeper.pid in snaps
    inc = IncrementalScanner(FS)
    inc.diff()
    p = subprocess.Popen(["sleep", "60"])
    wait_exec(p, b"sleep")
    sleeper.kill()
    sleeper.wait(60)
    appeared, vanished = inc.diff()
    p.kill()
    p.wait(60)
    assert p.pid in {s.pid for s in appeared}
    assert sleeper.pid in {k.pid for k in vanished}


# --- sockets -----------------------------------------------------------------------------------

@pytest.fixture
def my_sockets() -> Iterator[dict[str, socket.socket]]:
    socks = {}
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    socks["tcp"] = tcp
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    socks["udp"] = udp
    try:
        tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        tcp6.bind(("::1", 0))
        tcp6.listen()
        socks["tcp6"] = tcp6
    except OSError:
        pass  # no IPv6 on this host
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(f"\0procsentry-test-{os.getpid()}")
    unix.listen()
    socks["unix"] = unix
    yield socks
    for s in socks.values():
        s.close()


def _own_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def test_own_sockets_in_table_and_joined(my_sockets: dict[str, socket.socket]) -> None:
    tables = SocketTables(FS)
    assert tables.own_netns() == _own_netns()
    table = tables.for_pid(os.getpid(), _own_netns())
    expect = {
        "tcp": ("inet", "tcp", "LISTEN"), "udp": ("inet", "udp", "UNCONN"), "tcp6": ("inet6", "tcp", "LISTEN"),
        "unix": ("unix", "unix", "LISTEN"),
    }
    for name, sock in my_sockets.items():
        ino = os.fstat(sock.fileno()).st_ino
        info = table[ino]
        assert (info.family, info.protocol, info.state) == expect[name]
        if name == "unix":
            assert info.local_address == f"@procsentry-test-{os.getpid()}" and info.sock_type == "stream"
        else:
            assert info.local_port == sock.getsockname()[1] and info.uid == os.geteuid()
            assert info.local_address == sock.getsockname()[0]
    snap = read_process(FS, os.getpid(), Depth.FULL, sockets=tables)
    by_fd = {f.fd: f for f in snap.fds or ()}
    joined = {s.inode: s for s in snap.sockets or ()}
    for sock in my_sockets.values():
        ino = os.fstat(sock.fileno()).st_ino
        assert by_fd[sock.fileno()].kind == "socket" and by_fd[sock.fileno()].inode == ino
        assert joined[ino] == table[ino]


def test_sockets_opened_after_the_table_are_reported_missing(my_sockets: dict[str, socket.socket]) -> None:
    """A table read before a socket was opened lacks it: the snapshot keeps what the table has
    and says the rest is missing (not_in_table), counting each such socket once; a netlink
    socket, which no table lists, is not counted."""
    tables = SocketTables(FS)
    netns = _own_netns()
    first = read_process(FS, os.getpid(), Depth.EXEC, sockets=tables)
    assert "sockets" not in first.missing and tables.counts["dumps"] == 1
    late = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    late.bind(("127.0.0.1", 0))
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    dup = os.dup(late.fileno())  # one socket on two fds: counted once
    try:
        snap = read_process(FS, os.getpid(), Depth.EXEC, sockets=tables)
        listed = {s.inode for s in snap.sockets or ()}
        assert os.fstat(late.fileno()).st_ino not in listed
        assert {os.fstat(x.fileno()).st_ino for x in my_sockets.values()} <= listed
        assert snap.missing["sockets"] == Missing.NOT_IN_TABLE.value
        assert (tables.counts["dumps"], tables.counts["not_in_table"]) == (1, 1)
        fresh = read_process(FS, os.getpid(), Depth.EXEC, sockets=SocketTables(FS))
        assert "sockets" not in fresh.missing
        assert os.fstat(late.fileno()).st_ino in {s.inode for s in fresh.sockets or ()}
        assert netns == fresh.ns.net
    finally:
        os.close(dup)
        late.close()
        nl.close()


def test_a_unix_socket_name_that_is_not_utf8_is_read_like_net_unix(tmp_path) -> None:
    """Any user can bind a unix socket to a name that is not UTF-8 (abstract or a path): the
    dump still succeeds (pyroute2 hands such a name back as bytes) and names it as the net/unix
    table does."""
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(b"\0procsentry-\xff\xfe-%d" % os.getpid())
    abstract.listen()
    named = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    named.bind(os.fsencode(tmp_path) + b"/s-\xff")
    try:
        netns = _own_netns()
        diag = read_diag_table(netns)
        files = read_proc_net_table(FS, os.getpid(), netns)
        a, n = os.fstat(abstract.fileno()).st_ino, os.fstat(named.fileno()).st_ino
        assert diag[a].local_address == files[a].local_address == f"@procsentry-\\xff\\xfe-{os.getpid()}"
        assert diag[n].local_address == files[n].local_address == os.fsdecode(tmp_path) + "/s-\\xff"
    finally:
        abstract.close()
        named.close()


def test_diag_agrees_with_net_files(my_sockets: dict[str, socket.socket]) -> None:
    """pyroute2's test_diag test_basic: sock_diag against the text tables, churn tolerated."""
    netns = _own_netns()
    for _ in range(3):
        diag = read_diag_table(netns)
        files = read_proc_net_table(FS, os.getpid(), netns)
        differ = set(diag) ^ set(files)
        if len(differ) <= 3:
            break
    assert len(differ) <= 3, differ
    for ino in set(diag) & set(files):
        a, b = diag[ino], files[ino]
        assert (a.family, a.protocol, a.local_address, a.local_port, a.remote_address, a.remote_port) == (
            b.family, b.protocol, b.local_address, b.local_port, b.remote_address, b.remote_port
        ), (a, b)
        if a.protocol != "unix":
            assert a.uid == b.uid and a.state == b.state, (a, b)
    for sock in my_sockets.values():
        ino = os.fstat(sock.fileno()).st_ino
        assert ino in diag and ino in files


def test_diag_dump_leaves_out_time_wait_but_not_a_held_connection() -> None:
    """TIME_WAIT sockets belong to no process: the dump asks the kernel not to send them (a
    busy server keeps tens of thousands), and still has every socket a process holds."""
    from pyroute2 import DiagSocket

    from userspace.sockets import OWNED_STATES, TCP_TIME_WAIT
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    for _ in range(20):  # the client closes first: its side stays in TIME_WAIT
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = srv.accept()
        c.close()
        a.close()
    held = socket.create_connection(("127.0.0.1", port))
    peer, _ = srv.accept()
    try:
        with DiagSocket() as ds:
            ds.bind()
            all_states = [m["idiag_state"] for m in ds.get_sock_stats(family=socket.AF_INET)]
            owned = [m["idiag_state"] for m in ds.get_sock_stats(family=socket.AF_INET, states=OWNED_STATES)]
        assert all_states.count(TCP_TIME_WAIT) >= 20 and TCP_TIME_WAIT not in owned
        table = read_diag_table(_own_netns())
        for sock in (held, peer, srv):
            info = table[os.fstat(sock.fileno()).st_ino]
            assert info.local_port == sock.getsockname()[1]
        assert table[os.fstat(held.fileno()).st_ino].state == "ESTABLISHED"
    finally:
        held.close()
        peer.close()
        srv.close()


_SS_LINE = re.compile(r"^(?P<netid>\S+)\s+(?P<state>\S+)\s+\d+\s+\d+\s+(?P<local>\S+)\s+(?P<peer>\S+)\s*(?P<rest>.*)$")


def _ss() -> list[dict[str, object]]:
    out = subprocess.run(["ss", "-tuanpeH"], check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = _SS_LINE.match(line.strip())
        if not m:
            continue
        ino = re.search(r"\bino:(\d+)", m["rest"])
        users = re.findall(r"pid=(\d+),fd=(\d+)", m["rest"])
        rows.append({
            "netid": m["netid"], "port": int(m["local"].rsplit(":", 1)[1]), "ino": int(ino.group(1)) if ino else 0,
            "users": [(int(p), int(f)) for p, f in users],
        })
    return rows


@pytest.mark.root
def test_socket_map_against_ss(my_sockets: dict[str, socket.socket]) -> None:
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) not installed")
    table = SocketTables(FS).for_pid(os.getpid(), _own_netns())
    rows = [r for r in _ss() if r["ino"]]  # ino 0: TIME_WAIT, owned by no file
    missing = [r for r in rows if r["ino"] not in table]
    assert len(missing) <= 3, missing  # sockets opened between the two dumps
    for r in rows:
        info = table.get(r["ino"])
        if info is not None:
            assert info.local_port == r["port"] and info.protocol == r["netid"], (r, info)
    # ss's pid/fd attribution agrees with our fd join, for our own sockets
    me = os.getpid()
    snap = read_process(FS, me, Depth.FULL)
    fd_inodes = {f.fd: f.inode for f in snap.fds or ()}
    ours = [r for r in rows if any(p == me for p, _ in r["users"])]
    assert {r["port"] for r in ours} >= {my_sockets["tcp"].getsockname()[1], my_sockets["udp"].getsockname()[1]}
    for r in ours:
        for p, fd in r["users"]:
            if p == me:
                assert fd_inodes[fd] == r["ino"]


@contextlib.contextmanager
def _child_in_own_netns(setup: Callable[[], tuple]) -> Iterator[tuple[int, bytes]]:
    """A forked child in a new network namespace: it runs setup() there, which opens its
    sockets and returns (what to report, the sockets), and waits to be killed with them open.
    Yields (pid, report)."""
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWNET = 0x40000000
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if libc.unshare(CLONE_NEWNET) != 0:
                os.write(w, b"E")
                os._exit(1)
            keep = setup()  # its sockets stay open while the child waits
            os.write(w, keep[0])
            os.close(w)
            signal.pause()
        finally:
            os._exit(0)
    os.close(w)
    try:
        msg = os.read(r, 64)
        if msg == b"E":
            pytest.skip("unshare(CLONE_NEWNET) refused")
        yield pid, msg
    finally:
        os.close(r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.root
def test_socket_in_another_netns() -> None:
    """A process in its own network namespace: its sockets are invisible to our sock_diag,
    so they come from its net/ files, and it is reported as not sharing PID 1's netns."""
    def listener():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("0.0.0.0", 0))
        s.listen()
        return str(s.getsockname()[1]).encode(), s

    with _child_in_own_netns(listener) as (pid, msg):
        port = int(msg)
        snap = read_process(FS, pid, Depth.FULL)
        assert snap.ns is not None and snap.ns.net != _own_netns()
        assert snap.sockets is not None and len(snap.sockets) == 1
        info = snap.sockets[0]
        assert (info.protocol, info.state, info.local_port, info.netns) == ("tcp", "LISTEN", port, snap.ns.net)
        if snap.ns_differs_from_init is not None:
            assert "net" in snap.ns_differs_from_init
        else:  # PID 1 unreadable (a hardened init): the reason is given instead
            assert snap.missing["ns_differs_from_init"] in (Missing.DENIED.value, Missing.UNAVAILABLE.value)


@pytest.mark.root
def test_unix_names_holding_newlines_in_another_netns() -> None:
    """Another netns's sockets come from its net/unix text, where a socket's name is printed
    byte for byte: any user there can bind a name holding "\\n" and lines that look like
    records. Neither may cost that netns its table (every socket of every process in it
    unreported: a container's), nor turn its TCP socket into a made-up unix one."""
    def sockets():
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        tcp_ino = os.fstat(tcp.fileno()).st_ino
        named = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        named.bind(b"\0one\ntwo")
        forger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        forger.bind(b"\0x\n0000000000000000: 00000002 00000000 00010000 0001 01 %d /fake" % tcp_ino)
        return (b"%d %d %d" % (tcp_ino, os.fstat(named.fileno()).st_ino, os.fstat(forger.fileno()).st_ino),
                tcp, named, forger)

    with _child_in_own_netns(sockets) as (pid, msg):
        tcp_ino, named_ino, forger_ino = map(int, msg.split())
        netns = read_process(FS, pid, Depth.EXEC).ns.net
        table = read_proc_net_table(FS, pid, netns)
        assert (table[tcp_ino].protocol, table[tcp_ino].state) == ("tcp", "LISTEN")
        assert table[named_ino].local_address == "@one\ntwo"
        assert table[forger_ino].local_address == "@x"
        snap = read_process(FS, pid, Depth.EXEC)
        assert "sockets" not in snap.missing
        assert {s.inode: s.protocol for s in snap.sockets} == {
            tcp_ino: "tcp", named_ino: "unix", forger_ino: "unix"}


@pytest.mark.root
def test_a_dump_budget_spans_network_namespaces() -> None:
    """With unprivileged user namespaces any user can make network namespaces, each its own
    table: a budget shared by the tables one reader makes refuses any dump before
    IDLE_FACTOR times the last dump's time has passed, whichever netns it is for."""
    def slow(netns, unix=True):
        time.sleep(0.05)
        return read_diag_table(netns, unix=unix)

    def listener():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen()
        return b"%d" % os.fstat(s.fileno()).st_ino, s

    budget = DumpBudget()
    tables = SocketTables(FS, diag_reader=slow, budget=budget)
    me = os.getpid()
    t0 = time.monotonic()
    tables.for_pid(me, _own_netns())  # 50 ms or more: no other dump for 9 times as long
    assert budget.next_at - t0 >= DumpBudget.IDLE_FACTOR * 0.05
    with _child_in_own_netns(listener) as (pid, msg):
        netns = read_process(FS, pid, Depth.EXEC).ns.net
        with pytest.raises(Unavailable, match="throttled"):
            SocketTables(FS, budget=budget).for_pid(pid, netns)
        snap = read_process(FS, pid, Depth.EXEC, sockets=SocketTables(FS, budget=budget))
        assert (snap.sockets, snap.missing["sockets"]) == (None, Missing.UNAVAILABLE.value)
        assert tables.for_pid(me, _own_netns()) is tables.for_pid(me, _own_netns())  # cached
        time.sleep(budget.next_at - time.monotonic() + 0.01)
        table = SocketTables(FS, budget=budget).for_pid(pid, netns)
        assert table[int(msg)].protocol == "tcp"
