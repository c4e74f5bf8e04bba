"""Layer 1: pure parsers on golden bytes and hostile cases (STYLE 2.3)."""
from __future__ import annotations

import socket

import pytest

from userspace import parsers as P
from userspace.procfs import ParseError
from userspace.sockets import parse_net_inet, parse_net_unix

# A real line from kernel 6.18 (cat's own stat), 52 fields.
STAT_CAT = (
    b"8013 (cat) R 8004 8004 2491 0 -1 4194304 99 0 0 0 3 4 0 0 20 0 1 0 74164 3133440 380 "
    b"18446744073709551615 94537992101888 94537992121769 140726454312896 0 0 0 0 0 0 0 0 0 17 0 0 0 "
    b"0 0 0 94537992137776 94537992139392 94538663452672 140726454315744 140726454315764 "
    b"140726454315764 140726454317035 0\n"
)


class TestStat:
    def test_golden(self) -> None:
        s = P.parse_stat(STAT_CAT)
        assert s == P.Stat(
            pid=8013, comm=b"cat", state="R", ppid=8004, pgrp=8004, session=2491, tty_nr=0,
            flags=4194304, utime=3, stime=4, num_threads=1, starttime=74164, vsize=3133440, rss=380,
            start_code=94537992101888, end_code=94537992121769, start_stack=140726454312896,
            arg_start=140726454315744, arg_end=140726454315764,
        )
        assert not s.kernel_thread and not s.layout_hidden

    def test_image_layout_fields_need_a_long_enough_line(self) -> None:
        tokens = STAT_CAT.rstrip(b"\n").split(b" ")  # "8013", "(cat)", then field 3 ...
        # before Linux 3.5 the line ended at field 44: start_code..start_stack, no arg_start
        s = P.parse_stat(b" ".join(tokens[:44]) + b"\n")
        assert (s.start_code, s.end_code, s.start_stack) == (94537992101888, 94537992121769, 140726454312896)
        assert (s.arg_start, s.arg_end) == (None, None) and s.layout_hidden
        # a line of exactly 48 fields has arg_start, not arg_end
        s = P.parse_stat(b" ".join(tokens[:48]))
        assert (s.arg_start, s.arg_end) == (140726454315744, None)
        # the shortest accepted line (up to field 24, rss) has none of them
        s = P.parse_stat(b" ".join(tokens[:24]))
        assert (s.rss, s.start_code, s.end_code, s.start_stack, s.arg_start) == (380, None, None, None, None)

    @pytest.mark.parametrize("hidden", [
        # do_task_stat to a reader without ptrace access: "1 1 0" and seven zeros
        (b"1", b"1", b"0", b"0"),
        # no mm (kernel thread, zombie, after exit_mm): all zeros
        (b"0", b"0", b"0", b"0"),
    ])
    def test_hidden_image_layout(self, hidden) -> None:
        tok = STAT_CAT.rstrip(b"\n").split(b" ")
        tok[25], tok[26], tok[27], tok[47] = hidden  # fields 26, 27, 28, 48
        s = P.parse_stat(b" ".join(tok))
        assert s.layout_hidden and s.arg_start == 0

    def test_garbage_in_an_image_layout_field(self) -> None:
        tok = STAT_CAT.rstrip(b"\n").split(b" ")
        tok[47] = b"0x7ffd"  # field 48
        with pytest.raises(ParseError):
            P.parse_stat(b" ".join(tok))

    def test_hostile_comm(self) -> None:
        # tetragon pkg/reader/proc TestGetProcStatStrings
        s = P.parse_stat(STAT_CAT.replace(b"(cat)", b"(zsh( )foo)"))
        assert s.comm == b"zsh( )foo"
        assert s.state == "R" and s.ppid == 8004 and s.starttime == 74164

    def test_comm_with_paren_space_digits(self) -> None:
        s = P.parse_stat(STAT_CAT.replace(b"(cat)", b"() S 1 2 3 )"))
        assert s.comm == b") S 1 2 3 " and s.ppid == 8004

    def test_kernel_thread_flag(self) -> None:
        line = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 24 0 0 18446744073709551615" + b" 0" * 28
        s = P.parse_stat(line)
        assert s.kernel_thread and s.flags & P.PF_KTHREAD

    @pytest.mark.parametrize(
        "data",
        [b"", b"8013 cat R 1", b"8013 (cat) R 1 2 3", STAT_CAT.replace(b" R ", b" RR "),
         STAT_CAT.replace(b"74164", b"74x64"), b"x (cat)" + STAT_CAT.split(b")", 1)[1], b"8013 )cat( R"],
    )
    def test_garbage(self, data: bytes) -> None:
        with pytest.raises(ParseError):
            P.parse_stat(data)


STATUS = (
    b"Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t8006\nNgid:\t0\nPid:\t8006\nPPid:\t8004\n"
    b"TracerPid:\t0\nUid:\t1000\t1001\t1002\t1003\nGid:\t100\t101\t102\t103\nFDSize:\t256\nGroups:\t \n"
    b"NStgid:\t8006\t12\nNSpid:\t8006\t12\nNSpgid:\t8004\nNSsid:\t2491\nKthread:\t0\n"
    b"VmPeak:\t    3060 kB\nVmSize:\t    3060 kB\nVmHWM:\t    1732 kB\nVmRSS:\t    1732 kB\n"
    b"Threads:\t3\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n"
    b"CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n"
    b"Cpus_allowed_list:\t0-1\n"
)


class TestStatus:
    def test_golden(self) -> None:
        s = P.parse_status(STATUS)
        assert s.name == b"cat" and s.state == "R"
        assert (s.tgid, s.pid, s.ppid, s.tracer_pid) == (8006, 8006, 8004, 0)
        assert s.uids == (1000, 1001, 1002, 1003)
        assert s.gids == (100, 101, 102, 103)
        assert s.groups == ()
        assert s.ns_pid == (8006, 12) and s.ns_tgid == (8006, 12)
        assert s.vm_size == 3060 * 1024 and s.vm_rss == 1732 * 1024
        assert s.threads == 3
        assert s.cap_eff == 0x1FFFEFFFFFF and s.cap_prm == 0x1FFFEFFFFFF and s.cap_inh == 0
        assert s.cap_bnd == 0x1FFFFFFFFFF and s.cap_amb == 0
        assert s.no_new_privs == 1 and s.seccomp == 2

    def test_kernel_thread_has_no_vm_lines(self) -> None:
        s = P.parse_status(b"Name:\tkthreadd\nState:\tS (sleeping)\nThreads:\t1\n")
        assert s.vm_rss is None and s.vm_size is None and s.threads == 1

    def test_truncated_at_line_boundary(self) -> None:
        s = P.parse_status(STATUS[: STATUS.index(b"Gid:")])
        assert s.uids == (1000, 1001, 1002, 1003) and s.gids is None and s.threads is None

    def test_truncated_mid_line(self) -> None:
        with pytest.raises(ParseError):
            P.parse_status(STATUS[: STATUS.index(b"\t1002")])

    def test_vpid_is_the_last_nstgid_value(self) -> None:
        s = P.parse_status(STATUS)
        assert (s.vpid, s.pid_level) == (12, 1)
        host = P.parse_status(STATUS.replace(b"NStgid:\t8006\t12\n", b"NStgid:\t8006\n")
                              .replace(b"NSpid:\t8006\t12\n", b"NSpid:\t8006\n"))
        assert (host.vpid, host.pid_level) == (8006, 0)
        nested = P.parse_status(b"NStgid:\t31000\t4200\t77\t1\nNSpid:\t31000\t4200\t77\t1\n")
        assert (nested.vpid, nested.pid_level) == (1, 3)

    def test_vpid_absent_on_kernels_without_ns_lines(self) -> None:
        # NStgid/NSpid arrived in Linux 4.1
        s = P.parse_status(b"Name:\tcat\nTgid:\t8006\nPid:\t8006\nPPid:\t8004\n")
        assert (s.vpid, s.pid_level, s.ns_tgid, s.ns_pid) == (None, None, None, None)

    def test_vpid_falls_back_to_nspid(self) -> None:
        # for <tgid>/status NSpid is the leader's list, the same as NStgid
        s = P.parse_status(b"Name:\tcat\nNSpid:\t8006\t12\n")
        assert (s.vpid, s.pid_level) == (12, 1)

    @pytest.mark.parametrize("cut_after", [b"NStgid:\t8006\t", b"NStgid:\t8006\t1", b"NStgid:\t8006"])
    def test_truncated_nstgid_line_is_dropped_not_misread(self, cut_after: bytes) -> None:
        # a short read inside the list would otherwise parse as a shorter list (vpid 8006, or 1)
        s = P.parse_status(STATUS[: STATUS.index(cut_after) + len(cut_after)])
        assert s.ns_tgid is None and s.vpid is None and s.pid_level is None
        assert s.uids == (1000, 1001, 1002, 1003)  # the complete lines before it still count

    def test_truncated_after_nstgid_uses_it(self) -> None:
        s = P.parse_status(STATUS[: STATUS.index(b"NSpid:\t8006\t12") + len(b"NSpid:\t80")])
        assert s.ns_tgid == (8006, 12) and s.ns_pid is None and s.vpid == 12

    @pytest.mark.parametrize("bad", [b"NStgid:\t8006\tx\n", b"NStgid:\t-\n", b"NSpid:\t1\t\xff\n"])
    def test_hostile_ns_lines(self, bad: bytes) -> None:
        with pytest.raises(ParseError):
            P.parse_status(b"Name:\tcat\n" + bad)

    def test_name_keeps_leading_space(self) -> None:
        assert P.parse_status(b"Name:\t x\n").name == b" x"

    @pytest.mark.parametrize("data", [b"garbage\n", b"Uid:\t1\t2\t3\n", b"VmRSS:\t12 MB\n", b"CapEff:\tzz\n", b"State:\t?\n"])
    def test_garbage(self, data: bytes) -> None:
        with pytest.raises(ParseError):
            P.parse_status(data)


class TestCmdline:
    @pytest.mark.parametrize(
        "data,argv",
        [
            (b"/bin/sh\0-c\0echo hi\0", (b"/bin/sh", b"-c", b"echo hi")),
            (b"", ()),  # kernel thread / zombie
            (b"\0", (b"",)),  # argv == [""]
            (b"a\0\0b\0", (b"a", b"", b"b")),  # empty argument in the middle
            (b"/bin/sh\0-c\0no-trailing-nul", (b"/bin/sh", b"-c", b"no-trailing-nul")),
            # setproctitle: one space-separated element, deliberately not split (psutil#1179)
            (b"nginx: worker process", (b"nginx: worker process",)),
            (b"perl\0print \"a\nb\"\0\xff\xfe\0", (b"perl", b'print "a\nb"', b"\xff\xfe")),
        ],
    )
    def test_cases(self, data: bytes, argv: tuple[bytes, ...]) -> None:
        assert P.parse_cmdline(data) == argv


class TestEnviron:
    def test_redaction(self) -> None:
        data = (
            b"HOME=/root\0DB_PASSWORD=hunter2\0aws_secret_access_key=x\0GITHUB_TOKEN=t\0API_KEY=k\0"
            b"MY_CREDENTIALS=c\0HTTP_AUTHORIZATION=a\0DATABASE_URL=postgres://u:pw@h/db\0"
            b"HTTP_PROXY=http://proxy:3128\0SSL_CERT_FILE=/etc/ssl/ca.pem\0EMPTY_PASSWORD=\0NOEQ\0"
        )
        env = dict(P.parse_environ(data))
        assert env[b"HOME"] == b"/root"
        for k in (b"DB_PASSWORD", b"aws_secret_access_key", b"GITHUB_TOKEN", b"API_KEY", b"MY_CREDENTIALS",
                  b"HTTP_AUTHORIZATION", b"DATABASE_URL"):
            assert env[k] == P.REDACTED, k
        assert env[b"HTTP_PROXY"] == b"http://proxy:3128"
        assert env[b"SSL_CERT_FILE"] == b"/etc/ssl/ca.pem"
        assert env[b"EMPTY_PASSWORD"] == b""  # nothing to hide
        assert env[b"NOEQ"] == b""

    def test_no_redaction_when_asked(self) -> None:
        assert P.parse_environ(b"TOKEN=x\0", redact=False) == ((b"TOKEN", b"x"),)

    def test_empty(self) -> None:
        assert P.parse_environ(b"") == ()


class TestLinks:
    def test_ns_link(self) -> None:
        assert P.parse_ns_link(b"net:[4026531993]") == 4026531993
        assert P.parse_ns_link(b"pid_for_children:[4026531836]") == 4026531836

    @pytest.mark.parametrize("bad", [b"", b"net:[]", b"net:[12", b"net:[12]x", b"/proc/1/ns/net", b"net:[-1]"])
    def test_ns_link_garbage(self, bad: bytes) -> None:
        with pytest.raises(ParseError):
            P.parse_ns_link(bad)

    @pytest.mark.parametrize(
        "target,expected",
        [
            (b"socket:[123]", P.FdTarget("socket", b"socket:[123]", 123)),
            (b"pipe:[20001]", P.FdTarget("pipe", b"pipe:[20001]", 20001)),
            (b"anon_inode:[eventfd]", P.FdTarget("anon_inode", b"anon_inode:[eventfd]")),
            (b"anon_inode:bpf-map", P.FdTarget("anon_inode", b"anon_inode:bpf-map")),
            (b"/memfd:foo (deleted)", P.FdTarget("memfd", b"/memfd:foo", None, True)),
            (b"/etc/passwd", P.FdTarget("file", b"/etc/passwd")),
            (b"/tmp/x (deleted)", P.FdTarget("file", b"/tmp/x", None, True)),
            (b"/tmp/\xff\n (deleted)", P.FdTarget("file", b"/tmp/\xff\n", None, True)),
            (b"net:[4026531993]", P.FdTarget("other", b"net:[4026531993]")),
            (b"[eventpoll]", P.FdTarget("other", b"[eventpoll]")),
        ],
    )
    def test_fd_target(self, target: bytes, expected: P.FdTarget) -> None:
        assert P.parse_fd_target(target) == expected

    @pytest.mark.parametrize("bad", [b"", b"socket:[x]", b"pipe:[]"])
    def test_fd_target_garbage(self, bad: bytes) -> None:
        with pytest.raises(ParseError):
            P.parse_fd_target(bad)


DOCKER_ID = "0123456789abcdef" * 4


class TestCgroup:
    def test_v1_and_v2(self) -> None:
        data = b"12:pids:/user.slice\n4:cpu,cpuacct:/x:y\n1:name=systemd:/user.slice/s.scope\n0::/user.slice/u.service\n"
        entries = P.parse_cgroup(data)
        assert entries[1] == P.CgroupEntry(4, (b"cpu", b"cpuacct"), b"/x:y")
        assert P.primary_cgroup_path(entries) == b"/user.slice/u.service"
        assert P.primary_cgroup_path(entries[:3]) == b"/user.slice/s.scope"
        assert P.primary_cgroup_path(()) is None

    @pytest.mark.parametrize(
        "path",
        [
            f"/docker/{DOCKER_ID}",
            f"/system.slice/docker-{DOCKER_ID}.scope",
            f"/kubepods/burstable/pod5f3a2c1e-8b7d-4e6f-9a0b-1c2d3e4f5a6b/{DOCKER_ID}",
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1_2.slice/cri-containerd-{DOCKER_ID}.scope",
            f"/kubepods.slice/kubepods-pod1.slice/crio-{DOCKER_ID}.scope",
            f"/machine.slice/libpod-{DOCKER_ID}.scope/container",
            f"/libpod_parent/libpod-{DOCKER_ID}",
            f"/default/{DOCKER_ID}",
            f"/docker/{'f' * 64}/docker/{DOCKER_ID}",  # nested: the innermost wins
        ],
    )
    def test_container_ids(self, path: str) -> None:
        assert P.container_id_from_cgroup([path.encode()]) == DOCKER_ID

    @pytest.mark.parametrize(
        "path",
        [b"/", b"/user.slice/user-1000.slice/session-3.scope", b"/system.slice/docker.service",
         b"/machine.slice/libpod-conmon-" + DOCKER_ID.encode() + b".scope", b"/docker/" + DOCKER_ID[:63].encode(),
         b"/docker/" + DOCKER_ID.upper().encode()],
    )
    def test_not_containers(self, path: bytes) -> None:
        assert P.container_id_from_cgroup([path]) is None

    @pytest.mark.parametrize("bad", [b"garbage\n", b"x::/\n", b"1:cpu\n"])
    def test_garbage(self, bad: bytes) -> None:
        with pytest.raises(ParseError):
            P.parse_cgroup(bad)


class TestMapsMountsLogin:
    def test_maps(self) -> None:
        data = (
            b"55656e3da000-55656e3dc000 r--p 00000000 fe:00 260131                     /usr/bin/cat\n"
            b"55656e3dc000-55656e3e1000 r-xp 00002000 fe:00 260131                     /usr/bin/cat\n"
            b"7f00-7f01 rw-p 00000000 00:00 0 \n"
            b"7f01-7f02 rw-p 00000000 00:00 0                          [heap]\n"
            b"7f02-7f03 r-xp 00000000 fe:00 9                          /lib/with space.so (deleted)\n"
            b"7f03-7f04 rw-s 00000000 00:01 2048                       /memfd:x (deleted)\n"
        )
        assert P.parse_maps(data) == (b"/usr/bin/cat", b"/lib/with space.so (deleted)", b"/memfd:x (deleted)")
        assert P.parse_maps(b"") == ()
        with pytest.raises(ParseError):
            P.parse_maps(b"not a maps line\n")

    def test_mountinfo(self) -> None:
        data = (
            b"36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n"
            b"22 27 0:21 / /proc rw,relatime - proc proc rw\n"
            b"30 27 0:25 / /mnt/my\\040disk rw - tmpfs tmpfs rw\n"
        )
        m = P.parse_mountinfo(data)
        assert [(x.mount_point, x.fstype) for x in m] == [
            (b"/mnt/parent", b"ext3"), (b"/proc", b"proc"), (b"/mnt/my\\040disk", b"tmpfs")
        ]
        assert m[2].render() == b"/mnt/my\\040disk tmpfs"
        for bad in (b"1 2 3 4 5 6 7\n", b"36 35 98:0 /mnt1 /mnt rw -\n"):
            with pytest.raises(ParseError):
                P.parse_mountinfo(bad)

    def test_loginuid(self) -> None:
        assert P.parse_loginuid(b"1000") == 1000
        assert P.parse_loginuid(b"0\n") == 0
        assert P.parse_loginuid(b"4294967295") is None
        for bad in (b"", b"-1", b"4294967296", b"x"):
            with pytest.raises(ParseError):
                P.parse_loginuid(bad)

    def test_comm(self) -> None:
        assert P.parse_comm(b"bash\n") == b"bash"
        assert P.parse_comm(b"a\nb\n") == b"a\nb"


class TestNetTables:
    def test_tcp4(self) -> None:
        data = (
            b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
            b"   0: 0100007F:1F90 0500000A:C802 01 00000000:00000000 00:00000000 00000000  1000        0 123 1 0 20 4 29 10 -1\n"
            b"   1: 0100007F:1F91 00000000:0000 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0\n"
        )
        t = parse_net_inet(data, socket.AF_INET, "tcp", netns=7)
        assert list(t) == [123]
        s = t[123]
        assert (s.local_address, s.local_port, s.remote_address, s.remote_port) == ("127.0.0.1", 8080, "10.0.0.5", 51202)
        assert (s.state, s.uid, s.netns, s.family, s.protocol) == ("ESTABLISHED", 1000, 7, "inet", "tcp")

    def test_tcp6_and_udp_unconn(self) -> None:
        data = (
            b"  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
            b"   0: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5 2 0 0\n"
        )
        s = parse_net_inet(data, socket.AF_INET6, "udp")[5]
        assert (s.local_address, s.local_port, s.state, s.family) == ("::1", 631, "UNCONN", "inet6")

    def test_unix(self) -> None:
        data = (
            b"Num       RefCount Protocol Flags    Type St Inode Path\n"
            b"0000000000000000: 00000002 00000000 00010000 0001 01 30004 /run/a b.sock\n"
            b"0000000000000000: 00000002 00000000 00000000 0002 01 30005 @abstract\n"
            b"0000000000000000: 00000003 00000000 00000000 0005 03 30006\n"
        )
        t = parse_net_unix(data)
        assert (t[30004].state, t[30004].local_address, t[30004].sock_type) == ("LISTEN", "/run/a b.sock", "stream")
        assert (t[30005].state, t[30005].local_address, t[30005].sock_type) == ("UNCONN", "@abstract", "dgram")
        assert (t[30006].state, t[30006].local_address, t[30006].sock_type) == ("ESTABLISHED", "", "seqpacket")

    def test_unix_names_with_newlines(self) -> None:
        """Any user can bind a name holding "\\n" (the kernel prints it as it is): the rest of
        the name is on the next lines, and a line in a name that looks like a record makes up
        a socket or claims another's inode."""
        forged = b"0000000000000000: 00000002 00000000 00010000 0001 01 30005 /forged"
        data = (
            b"Num       RefCount Protocol Flags    Type St Inode Path\n"
            b"0000000000000000: 00000002 00000000 00010000 0001 01 30004 @one\ntwo\n\nthree\n"
            b"0000000000000000: 00000002 00000000 00000000 0002 01 30005 /run/real\n"
            b"0000000000000000: 00000002 00000000 00000000 0002 01 30006 @x\n" + forged + b"\nrest\n"
            b"0000000000000000: 00000003 00000000 00000000 0005 03 30007\n"
        )
        t = parse_net_unix(data)
        assert t[30004].local_address == "@one\ntwo\n\nthree"
        assert 30005 not in t  # claimed twice: the real record cannot be told from the made-up one
        assert t[30006].local_address == "@x"
        assert (t[30007].state, t[30007].local_address) == ("ESTABLISHED", "")
        assert set(t) == {30004, 30006, 30007}

    def test_a_table_cut_by_the_read_limit_loses_its_last_line_only(self) -> None:
        """procfs.MAX_READ cuts a large table inside a line: that line is not read as a record
        (cut inside its inode, it named another socket)."""
        tcp = (
            b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
            b"   0: 0100007F:1F90 0500000A:C802 01 00000000:00000000 00:00000000 00000000  1000        0 123 1 0 20 4 29 10 -1\n"
            b"   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4567"
        )
        assert list(parse_net_inet(tcp, socket.AF_INET, "tcp")) == [123]
        unix = (
            b"Num       RefCount Protocol Flags    Type St Inode Path\n"
            b"0000000000000000: 00000002 00000000 00010000 0001 01 30004 /run/a\n"
            b"0000000000000000: 00000002 00000000 00010000 0001 01 3000"
        )
        assert list(parse_net_unix(unix)) == [30004]

    @pytest.mark.parametrize(
        "line", [b"   0: 0100007F 00000000:0000 0A x\n", b"   0: 0100007G:0016 00000000:0000 0A 0:0 0:0 0 0 0 1\n",
                 b"   0: 0100007F:0016 00000000:0000 0A 0:0 0:0 0 0 0 x\n"]
    )
    def test_garbage(self, line: bytes) -> None:
        with pytest.raises(ParseError):
            parse_net_inet(b"header\n" + line, socket.AF_INET, "tcp")
