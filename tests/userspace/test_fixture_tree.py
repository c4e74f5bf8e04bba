"""Layer 2: read_process, sockets and sweeps on the fixture tree tests/fixtures/proc/host.ttar."""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from userspace.process import IMAGE_FIELDS, NS_NAMES, cpu_percent, read_namespaces, read_process
from userspace.procfs import AccessDenied, ParseError, ProcessGone, ProcFS, Unavailable
from userspace.sockets import SocketTables, join_sockets, read_proc_net_table
from userspace.sweep import IncrementalScanner, SweepStats, scan, sort_parents_first
from userspace.types import Depth, FdInfo, Missing, Namespaces, ProcKey, SocketInfo, ThreadInfo

from tests.support.proctree import FaultyProcFS

BOOT = "4b7c1a7e-1111-2222-3333-444455556666"
HOSTNET = 4026531840
GONE, DENIED, ZOMBIE, KTHREAD, UNAVAIL, NOTREQ = (
    Missing.GONE.value, Missing.DENIED.value, Missing.ZOMBIE.value, Missing.KERNEL_THREAD.value,
    Missing.UNAVAILABLE.value, Missing.NOT_REQUESTED.value,
)
HOST_NS = Namespaces(pid=4026531836, mnt=4026531841, net=HOSTNET, user=4026531837, uts=4026531838,
                     ipc=4026531839, cgroup=4026531835, time=4026531834)


@pytest.fixture
def root(proc_tree) -> str:
    return proc_tree("host")


@pytest.fixture
def fs(root: str) -> ProcFS:
    return ProcFS(root)


# --- ProcFS ----------------------------------------------------------------------------------

class TestProcFS:
    def test_pids_and_boot_id(self, fs: ProcFS) -> None:
        assert sorted(fs.pids()) == [1, 2, 100, 200, 300, 301, 302, 303, 304, 400, 401, 402, 403, 404, 500]
        assert fs.boot_id() == BOOT

    def test_error_map(self, fs: ProcFS, root: str) -> None:
        with pytest.raises(ProcessGone):
            fs.read_bytes(999, "stat")  # no such pid directory
        with pytest.raises(Unavailable):
            fs.read_bytes(500, "cmdline")  # pid lives, file absent
        with pytest.raises(Unavailable):
            fs.readlink(100, "fd/99")
        os.chmod(os.path.join(root, "100", "environ"), 0)
        if os.geteuid() != 0:  # root ignores mode bits; FaultyProcFS covers that case
            with pytest.raises(AccessDenied):
                fs.read_bytes(100, "environ")

    def test_read_cap(self, fs: ProcFS, root: str) -> None:
        Path(root, "100", "big").write_bytes(b"x" * (3 << 20))
        assert len(fs.read_bytes(100, "big")) == 1 << 20
        assert len(fs.read_bytes(100, "big", limit=10)) == 10

    def test_parse_error_carries_path_and_excerpt(self, fs: ProcFS, root: str) -> None:
        Path(root, "100", "stat").write_bytes(b"garbage " * 40)
        with pytest.raises(ParseError) as ei:
            read_process(fs, 100)
        assert ei.value.path == os.fsencode(root) + b"/100/stat"
        assert ei.value.excerpt == (b"garbage " * 8)[:64]


# --- read_process ----------------------------------------------------------------------------

class TestReadProcess:
    def test_full_daemon(self, fs: ProcFS) -> None:
        s = read_process(fs, 100, Depth.FULL, environ=True)
        assert s.key == ProcKey(BOOT, 100, 5000)
        assert (s.pid, s.ppid, s.comm, s.state, s.start_ticks) == (100, 1, b"agentd", "S", 5000)
        assert s.argv == (b"/usr/sbin/agentd", b"--listen", b"0.0.0.0:22")
        assert (s.exe, s.exe_deleted, s.exe_memfd) == (b"/usr/sbin/agentd", False, False)
        assert (s.cwd, s.root) == (b"/var/lib/agentd", b"/")
        assert s.uids == (1000,) * 4 and s.gids == (1000,) * 4
        assert (s.cap_eff, s.cap_prm, s.cap_inh) == (0x400, 0x400, 0)
        assert (s.threads, s.utime_ticks, s.stime_ticks) == (2, 250, 120)
        assert (s.rss_bytes, s.vsz_bytes) == (3600 * 1024, 10000 * 1024)
        assert (s.loginuid, s.sessionid, s.tty_nr, s.ns_pids) == (1000, 3, 34816, (100,))
        assert (s.vpid, s.pid_level) == (100, 0)
        # stat fields 26, 27, 28 and 48 of the fixture line
        assert (s.start_code, s.end_code, s.start_stack, s.arg_start) == (
            94378685104128, 94378685180857, 140726281166848, 140726281170944)
        assert s.image_id == s.key.image_id(140726281170944, 94378685180857)
        assert s.image_id.startswith(s.key.exec_id + ":")
        assert not s.kernel_thread and not s.zombie
        assert s.thread_list == (ThreadInfo(100, b"agentd"), ThreadInfo(101, b"agentd-worker"))
        assert s.fds == (
            FdInfo(0, "file", b"/dev/null"),
            FdInfo(1, "pipe", b"pipe:[20001]", 20001),
            FdInfo(2, "file", b"/var/log/agentd.log", None, True),
            FdInfo(3, "socket", b"socket:[30001]", 30001),
            FdInfo(4, "socket", b"socket:[30002]", 30002),
            FdInfo(5, "socket", b"socket:[30003]", 30003),
            FdInfo(6, "socket", b"socket:[30004]", 30004),
            FdInfo(7, "socket", b"socket:[39999]", 39999),
            FdInfo(8, "anon_inode", b"anon_inode:[eventfd]"),
            FdInfo(9, "memfd", b"/memfd:jit", None, True),
            FdInfo(10, "other", b"net:[4026531840]"),
        )
        assert s.fd_count == 11
        assert s.sockets == (
            SocketInfo(30001, "inet", "tcp", "LISTEN", "0.0.0.0", 22, "0.0.0.0", 0, 0, HOSTNET),
            SocketInfo(30002, "inet", "tcp", "ESTABLISHED", "10.0.0.5", 22, "10.0.0.9", 51202, 0, HOSTNET),
            SocketInfo(30003, "inet6", "udp", "UNCONN", "::", 5353, "::", 0, 1000, HOSTNET),
            SocketInfo(30004, "unix", "unix", "LISTEN", "/run/agentd.sock", None, "", None, None, HOSTNET, "stream"),
        )  # 39999 (a netlink socket, say) is in no table and is left out
        assert s.ns == HOST_NS and s.ns_differs_from_init == ()
        assert (s.cgroup, s.container_id) == (b"/system.slice/agentd.service", None)
        assert s.libraries == (
            b"/usr/sbin/agentd", b"/usr/lib/x86_64-linux-gnu/libc.so.6", b"/memfd:jit (deleted)",
            b"/opt/agent/lib/libplug in.so (deleted)",
        )
        assert s.environ == (
            (b"HOME", b"/var/lib/agentd"), (b"PATH", b"/usr/bin:/bin"), (b"DB_PASSWORD", b"<redacted>"),
            (b"AWS_SECRET_ACCESS_KEY", b"<redacted>"), (b"GITHUB_TOKEN", b"<redacted>"),
            (b"DATABASE_URL", b"<redacted>"), (b"HTTP_PROXY", b"http://proxy:3128"), (b"EMPTY", b""),
            (b"NOEQUALS", b""),
        )
        assert s.mounts == (b"/proc proc", b"/ ext4", b"/mnt/my\\040disk tmpfs")
        assert s.missing == {}

    def test_cheap_marks_full_fields_not_requested(self, fs: ProcFS) -> None:
        s = read_process(fs, 100, Depth.CHEAP)
        assert s.argv == (b"/usr/sbin/agentd", b"--listen", b"0.0.0.0:22") and s.exe == b"/usr/sbin/agentd"
        assert s.fds is None and s.ns is None and s.environ is None
        assert s.missing == {
            f: NOTREQ for f in ("thread_list", "fds", "fd_count", "sockets", "ns", "ns_differs_from_init", "cgroup",
                                "container_id", "libraries", "mounts", "environ")
        }

    def test_exec_depth(self, fs: ProcFS) -> None:
        full = read_process(fs, 400, Depth.FULL)
        s = read_process(fs, 400, Depth.EXEC)
        assert (s.fds, s.fd_count, s.sockets, s.ns, s.cgroup, s.container_id) == (
            full.fds, full.fd_count, full.sockets, full.ns, full.cgroup, full.container_id)
        assert s.sockets and s.container_id == "0123456789abcdef" * 4
        assert (s.thread_list, s.ns_differs_from_init, s.libraries, s.mounts) == (None,) * 4
        for f in ("thread_list", "ns_differs_from_init", "libraries", "mounts", "environ"):
            assert s.missing[f] == NOTREQ

    def test_kernel_thread(self, fs: ProcFS) -> None:
        s = read_process(fs, 2, environ=True)
        assert s.kernel_thread and not s.zombie
        assert (s.comm, s.argv, s.exe, s.rss_bytes, s.vsz_bytes) == (b"kthreadd", None, None, 0, 0)
        assert s.thread_list == (ThreadInfo(2, b"kthreadd"),) and s.fds == () and s.sockets == ()
        assert s.ns == HOST_NS and s.cgroup == b"/"
        assert s.missing == {"argv": KTHREAD, "exe": KTHREAD, "libraries": KTHREAD, "mounts": KTHREAD, "environ": KTHREAD,
                             **{f: KTHREAD for f in IMAGE_FIELDS}}
        assert s.arg_start is None and s.image_id is None  # no mm: stat prints 0
        assert (s.vpid, s.pid_level) == (2, 0)

    def test_kernel_thread_by_falco_rule(self, fs: ProcFS, root: str) -> None:
        # No PF_KTHREAD in flags (say, an old fixture), but no cmdline and no exe: kernel thread.
        stat = Path(root, "2", "stat")
        stat.write_bytes(stat.read_bytes().replace(b" 2129984 ", b" 0 "))
        s = read_process(fs, 2, Depth.CHEAP)
        assert s.kernel_thread and s.missing["exe"] == KTHREAD and s.missing["argv"] == KTHREAD

    def test_exiting_user_process_is_gone_not_a_kernel_thread(self, fs: ProcFS, root: str) -> None:
        # A user process inside do_exit after exit_mm: no cmdline, no exe, PF_EXITING, not Z yet.
        stat = Path(root, "2", "stat")
        stat.write_bytes(stat.read_bytes().replace(b" 2129984 ", b" 4 "))
        s = read_process(fs, 2, Depth.CHEAP)
        assert not s.kernel_thread and s.argv is None
        assert s.missing["exe"] == "gone" and s.missing["argv"] == "gone"

    def test_zombie(self, fs: ProcFS) -> None:
        s = read_process(fs, 200, environ=True)
        assert s.zombie and s.state == "Z" and not s.kernel_thread
        assert (s.ppid, s.uids, s.utime_ticks, s.stime_ticks) == (100, (1000,) * 4, 1, 2)
        assert (s.argv, s.exe, s.cwd, s.root, s.ns, s.cgroup) == (None,) * 6
        assert s.fds == () and s.fd_count == 0
        assert s.missing == {
            f: ZOMBIE for f in ("argv", "exe", "cwd", "root", "thread_list", "ns", "ns_differs_from_init",
                                "cgroup", "libraries", "mounts", "environ", *IMAGE_FIELDS)
        }
        assert s.image_id is None

    def test_deleted_exe(self, fs: ProcFS) -> None:
        s = read_process(fs, 300, Depth.CHEAP)
        assert (s.exe, s.exe_deleted, s.exe_memfd) == (b"/tmp/evil", True, False)

    def test_memfd_exe(self, fs: ProcFS) -> None:
        s = read_process(fs, 301, Depth.CHEAP)
        assert (s.exe, s.exe_deleted, s.exe_memfd) == (b"/memfd:payload", True, True)
        assert (s.comm, s.argv) == (b"3", (b"[kworker/0:1]",))  # masquerading as a kworker

    def test_hostile_comm_and_argv(self, fs: ProcFS) -> None:
        s = read_process(fs, 302, Depth.CHEAP)
        assert s.comm == b"(zsh( )foo)" and s.state == "R" and s.start_ticks == 7200
        assert s.argv == (b"perl", b"-e", b'print "a\nb"', b"", b"\xff\xfecaf\xc3\xa9")
        assert s.cwd == b"/home/u/dir\nwith newline"

    def test_empty_cmdline_with_exe_is_a_user_process(self, fs: ProcFS) -> None:
        s = read_process(fs, 303, Depth.CHEAP)
        assert s.argv == () and not s.kernel_thread and "argv" not in s.missing

    def test_setproctitle_not_split(self, fs: ProcFS) -> None:
        assert read_process(fs, 304, Depth.CHEAP).argv == (b"nginx: worker process",)

    @pytest.mark.parametrize(
        "pid,cid",
        [
            (400, "0123456789abcdef" * 4),
            (401, "1" * 64),
            (402, "2" * 64),
            (403, "3" * 64),
            (404, "4" * 64),
        ],
    )
    def test_containers(self, fs: ProcFS, pid: int, cid: str) -> None:
        s = read_process(fs, pid)
        assert s.container_id == cid
        assert s.ns_pids == (pid, 1)
        assert (s.vpid, s.pid_level) == (1, 1)  # NStgid's last value: getpid() in the container

    def test_image_layout_hidden_from_a_reader_without_ptrace_access(self, fs: ProcFS, root: str) -> None:
        # do_task_stat prints start_code/end_code as 1 and the rest as 0 to such a reader
        stat = Path(root, "100", "stat")
        line = stat.read_bytes()
        head, _, rest = line.rpartition(b") ")
        tok = rest.split(b" ")
        for n, value in ((26, b"1"), (27, b"1"), (28, b"0"), *((n, b"0") for n in range(45, 52))):
            tok[n - 3] = value
        stat.write_bytes(head + b") " + b" ".join(tok))
        s = read_process(fs, 100, Depth.CHEAP)
        assert (s.start_code, s.end_code, s.start_stack, s.arg_start, s.image_id) == (None,) * 5
        assert {f: s.missing[f] for f in IMAGE_FIELDS} == {f: DENIED for f in IMAGE_FIELDS}

    def test_image_layout_absent_from_an_old_kernels_short_stat(self, fs: ProcFS, root: str) -> None:
        # before Linux 3.5 stat ended at field 44 (no start_data ... arg_start)
        stat = Path(root, "100", "stat")
        head, _, rest = stat.read_bytes().rpartition(b") ")
        stat.write_bytes(head + b") " + b" ".join(rest.split(b" ")[: 44 - 2]) + b"\n")
        s = read_process(fs, 100, Depth.CHEAP)
        assert s.arg_start is None and s.image_id is None and s.missing["arg_start"] == UNAVAIL

    def test_image_id_changes_with_the_image_and_only_with_it(self, fs: ProcFS, root: str) -> None:
        before = read_process(fs, 100, Depth.CHEAP)
        assert read_process(fs, 100, Depth.CHEAP).image_id == before.image_id
        # the same process (pid, start time) after an exec: a new stack, so a new arg_start
        stat = Path(root, "100", "stat")
        stat.write_bytes(stat.read_bytes().replace(b" 140726281170944 ", b" 140726281179136 "))
        after = read_process(fs, 100, Depth.CHEAP)
        assert after.key.exec_id == before.key.exec_id
        assert after.image_id != before.image_id and after.image_id.startswith(before.key.exec_id + ":")

    def test_status_without_nstgid(self, fs: ProcFS, root: str) -> None:
        # kernels before 4.1 have no NStgid/NSpid lines
        status = Path(root, "100", "status")
        status.write_bytes(b"".join(line for line in status.read_bytes().splitlines(keepends=True)
                                    if not line.startswith((b"NStgid:", b"NSpid:"))))
        s = read_process(fs, 100, Depth.CHEAP)
        assert (s.vpid, s.pid_level) == (None, None)
        assert (s.missing["vpid"], s.missing["pid_level"]) == (UNAVAIL, UNAVAIL)
        assert s.uids == (1000,) * 4  # the rest of status still counts

    def test_container_namespaces_and_own_socket_table(self, fs: ProcFS) -> None:
        s = read_process(fs, 400)
        assert s.ns_differs_from_init == ("pid", "mnt", "net", "uts", "ipc")
        assert s.sockets == (SocketInfo(40001, "inet", "tcp", "LISTEN", "0.0.0.0", 8080, "0.0.0.0", 0, 0, 4026532500),)
        assert s.cgroup == b"/system.slice/docker-" + b"0123456789abcdef" * 4 + b".scope"

    def test_missing_files(self, fs: ProcFS) -> None:
        s = read_process(fs, 500, environ=True)
        assert (s.comm, s.uids, s.threads) == (b"sparse", (1000,) * 4, 1)
        assert s.argv is None and s.exe is None and not s.kernel_thread
        assert set(s.missing.values()) == {UNAVAIL}
        assert set(s.missing) == {
            "argv", "exe", "cwd", "root", "loginuid", "sessionid", "thread_list", "fds", "fd_count", "sockets", "ns",
            "ns_differs_from_init", "cgroup", "container_id", "libraries", "mounts", "environ",
        }

    def test_gone_before_stat(self, fs: ProcFS, root: str) -> None:
        shutil.rmtree(os.path.join(root, "300"))
        with pytest.raises(ProcessGone):
            read_process(fs, 300)

    def test_garbage_stat_is_parse_error(self, fs: ProcFS, root: str) -> None:
        Path(root, "300", "stat").write_bytes(b"300 (evil")
        with pytest.raises(ParseError):
            read_process(fs, 300)

    def test_garbage_file_is_a_missing_reason(self, fs: ProcFS, root: str) -> None:
        Path(root, "100", "cgroup").write_bytes(b"not a cgroup line\n")
        s = read_process(fs, 100)
        assert s.missing == {"cgroup": Missing.PARSE.value, "container_id": Missing.PARSE.value, "environ": NOTREQ}
        assert s.fds is not None  # the rest is intact


# --- injected faults ---------------------------------------------------------------------------

class TestFaults:
    def test_gone_mid_read(self, root: str) -> None:
        fs = FaultyProcFS(root, gone_after={100: 3})  # stat, status, cmdline succeed
        s = read_process(fs, 100, Depth.FULL, environ=True)
        assert s.uids == (1000,) * 4 and s.argv == (b"/usr/sbin/agentd", b"--listen", b"0.0.0.0:22")
        assert s.exe is None and s.fds is None and s.ns is None
        assert set(s.missing.values()) == {GONE}
        assert {"exe", "cwd", "fds", "ns", "sockets", "environ", "mounts"} <= set(s.missing)
        # once gone, nothing more is attempted for this pid
        assert fs.log.count(b"100/exe") == 1 and b"100/maps" not in fs.log

    def test_gone_before_anything(self, root: str) -> None:
        with pytest.raises(ProcessGone):
            read_process(FaultyProcFS(root, gone_after={100: 0}), 100)

    def test_denied(self, root: str) -> None:
        fs = FaultyProcFS(root, denied={"100/fd", "100/environ", "100/exe"})
        s = read_process(fs, 100, environ=True)
        assert s.fds is None and s.sockets is None and s.exe is None and s.environ is None
        assert s.missing == {"fds": DENIED, "fd_count": DENIED, "sockets": DENIED, "environ": DENIED, "exe": DENIED}
        assert s.ns == HOST_NS and s.thread_list is not None

    def test_fd_links_denied_but_listing_allowed(self, root: str) -> None:
        # what a hardened PID 1 looks like to root: fd/ lists, fd/N readlink is EACCES
        fs = FaultyProcFS(root, denied={f"100/fd/{n}" for n in range(11)})
        s = read_process(fs, 100)
        assert s.fds is None and s.sockets is None and s.fd_count == 11
        assert s.missing == {"fds": DENIED, "sockets": DENIED, "environ": NOTREQ}

    def test_init_ns_unreadable_is_read_once_per_sweep(self, root: str) -> None:
        fs = FaultyProcFS(root, denied={f"1/ns/{n}" for n in NS_NAMES})
        snaps = {s.pid: s for s in scan(fs, Depth.FULL)}
        assert snaps[100].ns == HOST_NS and snaps[100].missing["ns_differs_from_init"] == DENIED
        assert snaps[1].missing["ns"] == DENIED
        assert fs.log.count(b"1/ns/net") == 2  # the sweep's one read + PID 1's own snapshot

    def test_denied_stat(self, root: str) -> None:
        with pytest.raises(AccessDenied):
            read_process(FaultyProcFS(root, denied={"100/stat"}), 100)

    def test_fd_vanishing_mid_listing_is_skipped(self, root: str) -> None:
        fs = FaultyProcFS(root, vanish={"100/fd/4", "100/task/101/comm"})
        s = read_process(fs, 100)
        assert s.fds is not None and [f.fd for f in s.fds] == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]
        assert s.fd_count == 10 and 30002 not in {x.inode for x in s.sockets or ()}
        assert s.thread_list == (ThreadInfo(100, b"agentd"),)
        assert "fds" not in s.missing and "thread_list" not in s.missing
        assert fs.log.count(b"100/stat") == 3  # identity re-checked once per collection

    def test_fd_vanishing_then_process_gone(self, root: str) -> None:
        fs = FaultyProcFS(root, vanish={"100/fd/4"})
        # The liveness check after the listing finds a different process (PID reused)
        real_read = fs.read_bytes
        calls = {"n": 0}

        def read_bytes(pid, name, limit=1 << 20):
            data = real_read(pid, name, limit)
            if (pid, name) == (100, "stat"):
                calls["n"] += 1
                if calls["n"] > 1:
                    data = data.replace(b" 5000 ", b" 5001 ")
            return data

        fs.read_bytes = read_bytes  # type: ignore[method-assign]
        s = read_process(fs, 100)
        assert s.fds is None and s.missing["fds"] == GONE and s.missing["sockets"] == GONE


# --- sockets -----------------------------------------------------------------------------------

class TestSocketTables:
    def test_fixture_uses_net_files(self, fs: ProcFS) -> None:
        calls = []
        tables = SocketTables(fs, diag_reader=lambda ns: calls.append(ns) or {})
        assert tables.own_netns() is None  # no thread-self in a fixture tree
        t = tables.for_pid(100, HOSTNET)
        assert set(t) == {30001, 30002, 30010, 30011, 30003, 30004, 30005, 30006} and not calls
        assert tables.for_pid(1, HOSTNET) is t  # cached per netns, not per pid
        assert t[30010].local_address == "::1" and t[30010].local_port == 631
        assert t[30011].local_address == "127.0.0.53" and t[30011].state == "UNCONN" and t[30011].uid == 101
        assert t[30005].local_address == "@/tmp/.X11-unix/X0"

    def test_own_netns_uses_diag(self, fs: ProcFS, root: str) -> None:
        os.makedirs(os.path.join(root, "thread-self", "ns"))
        os.symlink(f"net:[{HOSTNET}]", os.path.join(root, "thread-self", "ns", "net"))
        fake = {1: SocketInfo(1, "inet", "tcp", "LISTEN", "0.0.0.0", 1, "0.0.0.0", 0)}
        tables = SocketTables(fs, diag_reader=lambda ns: fake)
        assert tables.for_pid(100, HOSTNET) is fake
        assert 40001 in tables.for_pid(400, 4026532500)  # another netns: its net/ files

    def test_diag_failure_falls_back(self, fs: ProcFS, root: str, caplog) -> None:
        os.makedirs(os.path.join(root, "thread-self", "ns"))
        os.symlink(f"net:[{HOSTNET}]", os.path.join(root, "thread-self", "ns", "net"))

        def broken(ns):
            raise OSError(93, "Protocol not supported")

        with caplog.at_level(logging.WARNING):
            t = SocketTables(fs, diag_reader=broken).for_pid(100, HOSTNET)
        assert 30001 in t and "sockets.diag_failed" in caplog.text

    def test_join(self, fs: ProcFS) -> None:
        table = read_proc_net_table(fs, 100, HOSTNET)
        fds = [FdInfo(3, "socket", b"socket:[30001]", 30001), FdInfo(4, "socket", b"socket:[30001]", 30001),
               FdInfo(5, "pipe", b"pipe:[30002]", 30002), FdInfo(6, "socket", b"socket:[1]", 1)]
        assert join_sockets(fds, table) == (table[30001],)


# --- sweeps ------------------------------------------------------------------------------------

class TestSweep:
    def test_scan_all(self, fs: ProcFS) -> None:
        stats = SweepStats()
        snaps = list(scan(fs, Depth.FULL, stats=stats))
        assert [s.pid for s in snaps] == sorted(fs.pids())
        assert (stats.scanned, stats.gone, stats.denied, stats.parse_errors) == (15, 0, 0, 0)
        assert all(s.key.boot_id == BOOT for s in snaps)

    def test_one_bad_pid_never_aborts(self, root: str, caplog) -> None:
        Path(root, "302", "stat").write_bytes(b"garbage")
        fs = FaultyProcFS(root, gone_after={300: 0}, denied={"301/stat", "303/stat"}, extra_pids=[999, 998])
        stats = SweepStats()
        with caplog.at_level(logging.WARNING, logger="userspace.sweep"):
            pids = [s.pid for s in scan(fs, Depth.CHEAP, stats=stats)]
        assert pids == [1, 2, 100, 200, 304, 400, 401, 402, 403, 404, 500]
        assert (stats.gone, stats.denied, stats.parse_errors, stats.scanned) == (3, 2, 1, 11)
        # warned once per kind, not once per pid; "gone" is normal churn and not a warning
        assert caplog.text.count("kind=denied") == 1 and caplog.text.count("kind=parse_error") == 1
        assert "kind=gone" not in caplog.text

    def test_incremental(self, root: str) -> None:
        fs = ProcFS(root)
        inc = IncrementalScanner(fs)
        appeared, vanished = inc.diff()
        assert len(appeared) == 15 and vanished == []
        assert inc.diff() == ([], [])

        old300 = ProcKey(BOOT, 300, 7000)
        old301 = ProcKey(BOOT, 301, 7100)
        shutil.rmtree(os.path.join(root, "300"))  # exited
        stat = Path(root, "301", "stat")  # PID 301 reused by a new process
        stat.write_bytes(stat.read_bytes().replace(b" 7100 ", b" 9100 "))
        shutil.copytree(os.path.join(root, "500"), os.path.join(root, "600"), symlinks=True)  # new
        Path(root, "600", "stat").write_bytes(Path(root, "600", "stat").read_bytes().replace(b"500 (", b"600 (", 1))

        appeared, vanished = inc.diff()
        assert sorted(vanished, key=lambda k: k.pid) == [old300, old301]
        assert sorted((s.pid, s.start_ticks) for s in appeared) == [(301, 9100), (600, 9000)]
        assert inc.known[301] == ProcKey(BOOT, 301, 9100)
        assert 300 not in inc.known
        assert inc.diff() == ([], [])

    def test_incremental_reads_known_pids_cheaply(self, root: str) -> None:
        fs = FaultyProcFS(root)
        inc = IncrementalScanner(fs)
        inc.diff(Depth.FULL)
        fs.log.clear()
        inc.diff(Depth.FULL)
        # one stat per known pid, nothing else (not even PID 1's namespaces: nothing new to compare)
        assert sorted(fs.log) == sorted(b"%d/stat" % pid for pid in fs.pids())

    def test_sort_parents_first(self, fs: ProcFS) -> None:
        snaps = list(scan(fs, Depth.CHEAP))
        # make 100 the child of 404 and 404 the child of 200: children listed before parents
        snaps = [replace(s, ppid=404) if s.pid == 100 else replace(s, ppid=302) if s.pid == 404 else s for s in snaps]
        ordered = sort_parents_first(reversed(snaps))
        assert sorted(s.pid for s in ordered) == sorted(s.pid for s in snaps)
        pos = {s.pid: i for i, s in enumerate(ordered)}
        for s in ordered:
            if s.ppid in pos:
                assert pos[s.ppid] < pos[s.pid], (s.ppid, s.pid)
        assert ordered[0].pid in (1, 2)

    def test_sort_parents_first_survives_cycles(self, fs: ProcFS) -> None:
        a, b = (read_process(fs, p, Depth.CHEAP) for p in (300, 301))
        ordered = sort_parents_first([replace(a, ppid=301), replace(b, ppid=300)])
        assert sorted(s.pid for s in ordered) == [300, 301]


def test_read_namespaces_and_cpu_percent(fs: ProcFS) -> None:
    assert read_namespaces(fs, 1) == HOST_NS
    prev = read_process(fs, 100, Depth.CHEAP)
    cur = replace(prev, utime_ticks=prev.utime_ticks + 30, stime_ticks=prev.stime_ticks + 20)
    assert cpu_percent(prev, cur, 2.0, clock_ticks=100) == pytest.approx(25.0)
    assert cpu_percent(prev, replace(cur, key=replace(cur.key, start_ticks=1)), 2.0) is None
    assert cpu_percent(prev, cur, 0) is None
