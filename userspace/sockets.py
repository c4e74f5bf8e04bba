"""Socket tables: {inode: SocketInfo} per network namespace, and the join with a process's fds;
and one process's sockets read through its own fds.

Two sources of tables, same output:

* sock_diag over netlink (pyroute2 ``DiagSocket``) for the namespace we run in. It is what
  ``ss`` uses, and the only source we use live in the reader's own netns.
* The text tables <pid>/net/{tcp,tcp6,udp,udp6,unix} for every other namespace: sock_diag
  answers only for the caller's netns (net/core/sock_diag.c uses sock_net(skb->sk)), and
  entering another one with setns(2) would move this whole thread. The per-pid files are
  rendered in *that pid's* netns (proc_net: get_proc_task_net), which is what falco's
  scap_fd_read_sockets does. They are also the test oracle for the netlink path.

Tables are cached per netns inode in one ``SocketTables`` object; make one per sweep
(or per batch of events) so that stale sockets do not survive.

A table answers for every socket of a namespace at once, which suits a sweep. For one process
just after its exec it is the wrong tool: a cached table misses every socket opened since it
was dumped, and a dump per process costs milliseconds on a busy host. ``FdSocketReader`` reads
that process's sockets alone, each through a duplicate of its fd (pidfd_getfd), as they are now.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import stat
import sys
from typing import Callable, Iterable

from .parsers import parse_ns_link
from .procfs import ParseError, ProcessGone, ProcFS, ProcFSError, Unavailable
from .types import FdInfo, SocketInfo

log = logging.getLogger(__name__)

# include/net/tcp_states.h, the values of sk_state for inet and unix sockets.
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
TCP_CLOSE = 7
# A datagram (or unix) socket in TCP_CLOSE is simply not connected: ss calls it UNCONN.
UNCONN = "UNCONN"
UNIX_TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram", socket.SOCK_SEQPACKET: "seqpacket"}
# net/unix/af_unix.c unix_seq_show: "Flags" has __SO_ACCEPTCON for listeners; "St" is the
# *socket* state (SS_UNCONNECTED=1, SS_CONNECTED=3), not a TCP state.
_SO_ACCEPTCON = 1 << 16
_SS_CONNECTED = 3

INET_TABLES = (
    ("tcp", socket.AF_INET, "inet", "tcp"),
    ("tcp6", socket.AF_INET6, "inet6", "tcp"),
    ("udp", socket.AF_INET, "inet", "udp"),
    ("udp6", socket.AF_INET6, "inet6", "udp"),
)

def state_name(protocol: str, state: int) -> str:
    if state == TCP_CLOSE and protocol != "tcp":
        return UNCONN
    return TCP_STATES.get(state, f"UNKNOWN({state})")


# --- the text tables (pure) ------------------------------------------------------------------

def _hex_addr(token: bytes, family: int, data: bytes) -> tuple[str, int]:
    """ "0100007F:1F90" -> ("127.0.0.1", 8080). tcp4_seq_show prints the __be32 address with
    %08X, i.e. as a host-order u32, so each 32-bit word comes out byte-swapped on little-endian
    machines; the port is already host order."""
    addr_hex, sep, port_hex = token.partition(b":")
    want = 8 if family == socket.AF_INET else 32
    if not sep or len(addr_hex) != want:
        raise ParseError("net table: bad address", data)
    try:
        raw = bytes.fromhex(addr_hex.decode("ascii"))
        port = int(port_hex, 16)
    except (ValueError, UnicodeDecodeError):
        raise ParseError("net table: bad address", data) from None
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, raw), port


def parse_net_inet(
    data: bytes, family: int, protocol: str, netns: int | None = None
) -> dict[int, SocketInfo]:
    """Parse <pid>/net/tcp|tcp6|udp|udp6 (proc_net_tcp.txt): header line, then
    "sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...". Inode 0 (a TIME_WAIT or
    request socket owned by no file) is dropped: nothing can join to it."""
    fam = "inet" if family == socket.AF_INET else "inet6"
    out: dict[int, SocketInfo] = {}
    lines = data.split(b"\n")
    for line in lines[1:]:
        if not line.strip():
            continue
        f = line.split()
        if len(f) < 10:
            raise ParseError("net table: short line", line)
        laddr, lport = _hex_addr(f[1], family, line)
        raddr, rport = _hex_addr(f[2], family, line)
        try:
            st = int(f[3], 16)
            uid = int(f[7])
            inode = int(f[9])
        except ValueError:
            raise ParseError("net table: bad number", line) from None
        if inode == 0:
            continue
        out[inode] = SocketInfo(
            inode=inode,
            family=fam,
            protocol=protocol,
            state=state_name(protocol, st),
            local_address=laddr,
            local_port=lport,
            remote_address=raddr,
            remote_port=rport,
            uid=uid,
            netns=netns,
        )
    return out


def parse_net_unix(data: bytes, netns: int | None = None) -> dict[int, SocketInfo]:
    """Parse <pid>/net/unix: "Num RefCount Protocol Flags Type St Inode [Path]". An abstract
    name is printed with "@" for its leading NUL, as ss does."""
    out: dict[int, SocketInfo] = {}
    lines = data.split(b"\n")
    for line in lines[1:]:
        if not line.strip():
            continue
        f = line.split(None, 7)
        if len(f) < 7:
            raise ParseError("net/unix: short line", line)
        try:
            flags = int(f[3], 16)
            stype = int(f[4], 16)
            st = int(f[5], 16)
            inode = int(f[6])
        except ValueError:
            raise ParseError("net/unix: bad number", line) from None
        if flags & _SO_ACCEPTCON:
            state = "LISTEN"
        elif st == _SS_CONNECTED:
            state = "ESTABLISHED"
        else:
            state = UNCONN
        path = f[7].decode("utf-8", "backslashreplace") if len(f) > 7 else ""
        out[inode] = SocketInfo(
            inode=inode,
            family="unix",
            protocol="unix",
            state=state,
            local_address=path,
            local_port=None,
            remote_address="",
            remote_port=None,
            netns=netns,
            sock_type=UNIX_TYPES.get(stype, str(stype)),
        )
    return out


def read_proc_net_table(fs: ProcFS, pid: int, netns: int | None = None) -> dict[int, SocketInfo]:
    """All TCP/UDP v4/v6 and unix sockets of the netns ``pid`` lives in, from its net/ files.
    A missing file (no IPv6 in that kernel) is skipped; ProcessGone/AccessDenied propagate."""
    table: dict[int, SocketInfo] = {}
    for name, family, _fam, proto in INET_TABLES:
        try:
            data = fs.read_bytes(pid, "net/" + name)
        except Unavailable:
            continue
        try:
            table.update(parse_net_inet(data, family, proto, netns))
        except ParseError as exc:
            exc.path = fs.path(pid, "net/" + name)
            raise
    try:
        data = fs.read_bytes(pid, "net/unix")
    except Unavailable:
        return table
    table.update(parse_net_unix(data, netns))
    return table


# --- sock_diag -------------------------------------------------------------------------------

def _diag_inet(msg: dict, family: int, protocol: str, netns: int | None) -> SocketInfo:
    return SocketInfo(
        inode=msg["idiag_inode"],
        family="inet" if family == socket.AF_INET else "inet6",
        protocol=protocol,
        state=state_name(protocol, msg["idiag_state"]),
        local_address=msg["idiag_src"],
        local_port=msg["idiag_sport"],
        remote_address=msg["idiag_dst"],
        remote_port=msg["idiag_dport"],
        uid=msg["idiag_uid"],
        netns=netns,
    )


def _diag_unix(msg, netns: int | None) -> SocketInfo:
    name = msg.get_attr("UNIX_DIAG_NAME")
    # pyroute2 decodes UNIX_DIAG_NAME as asciiz and so loses an abstract name's leading NUL.
    # Filesystem-bound sockets also carry UNIX_DIAG_VFS (unix_diag.c sk_diag_dump_vfs), so a
    # name without it is abstract: print it "@name" like ss and net/unix do.
    if name and msg.get_attr("UNIX_DIAG_VFS") is None:
        name = "@" + name
    peer = msg.get_attr("UNIX_DIAG_PEER")
    return SocketInfo(
        inode=msg["udiag_ino"],
        family="unix",
        protocol="unix",
        state=state_name("unix", msg["udiag_state"]),
        local_address=name or "",
        local_port=None,
        remote_address="",
        remote_port=None,
        netns=netns,
        sock_type=UNIX_TYPES.get(msg["udiag_type"], str(msg["udiag_type"])),
        peer_inode=peer or None,
    )


# TCP states (include/net/tcp_states.h) whose sockets no process holds (no inode, so never
# joined to an fd): the kernel is asked not to send them. A host that accepts many short
# connections keeps tens of thousands in TIME_WAIT: measured here, 8,000 of them made one
# dump cost 164 ms of CPU in pyroute2, 3.2 ms without them.
TCP_SYN_RECV, TCP_TIME_WAIT = 3, 6
OWNED_STATES = 0xFFF & ~((1 << TCP_SYN_RECV) | (1 << TCP_TIME_WAIT))


def read_diag_table(netns: int | None = None) -> dict[int, SocketInfo]:
    """All TCP/UDP v4/v6 and unix sockets of the *caller's* netns via sock_diag.
    Raises OSError (pyroute2's NetlinkError is one) when sock_diag is unavailable."""
    from pyroute2 import DiagSocket  # imported lazily: most callers never need netlink

    table: dict[int, SocketInfo] = {}
    with DiagSocket() as ds:
        ds.bind()
        for _name, family, _fam, proto in INET_TABLES:
            ipproto = socket.IPPROTO_TCP if proto == "tcp" else socket.IPPROTO_UDP
            for msg in ds.get_sock_stats(family=family, protocol=ipproto, states=OWNED_STATES):
                if msg["idiag_inode"]:
                    table[msg["idiag_inode"]] = _diag_inet(msg, family, proto, netns)
        for msg in ds.get_sock_stats(family=socket.AF_UNIX):
            table[msg["udiag_ino"]] = _diag_unix(msg, netns)
    return table


# --- one process's sockets, each through a duplicate of its fd -------------------------------

SYS_PIDFD_GETFD = 438  # one number on every architecture (the common syscall table, Linux 5.6)
# Past this many socket fds one table dump costs less than a read per socket (~15 us each).
FD_SOCKETS_MAX = 64
_SOCKADDR_MAX = 128  # sizeof(struct sockaddr_storage)
_LIBC = ctypes.CDLL(None, use_errno=True)
_syscall = _LIBC.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_uint)
_getsockopt = _LIBC.getsockopt
_getsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                        ctypes.POINTER(ctypes.c_uint))
_getsockname = _LIBC.getsockname
_getpeername = _LIBC.getpeername
for _f in (_getsockname, _getpeername):
    _f.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint))
_UNSPECIFIED = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


def _int_opt(fd: int, level: int, name: int) -> int:
    value = ctypes.c_int(0)
    size = ctypes.c_uint(ctypes.sizeof(value))
    if _getsockopt(fd, level, name, ctypes.byref(value), ctypes.byref(size)) != 0:
        raise OSError(ctypes.get_errno(), "getsockopt")
    return value.value


def _tcp_state(fd: int) -> int:
    """struct tcp_info's first byte, tcpi_state: the socket's sk_state as ss shows it."""
    value = ctypes.c_uint8(0)
    size = ctypes.c_uint(1)
    if _getsockopt(fd, socket.IPPROTO_TCP, socket.TCP_INFO, ctypes.byref(value), ctypes.byref(size)) != 0:
        raise OSError(ctypes.get_errno(), "getsockopt TCP_INFO")
    return value.value


def _name(call, fd: int) -> bytes | None:
    """getsockname/getpeername as the raw sockaddr; None when not connected (ENOTCONN)."""
    buf = ctypes.create_string_buffer(_SOCKADDR_MAX)
    size = ctypes.c_uint(_SOCKADDR_MAX)
    if call(fd, buf, ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOTCONN:
            return None
        raise OSError(err, "getsockname")
    return buf.raw[:min(size.value, _SOCKADDR_MAX)]


def _inet_endpoint(family: int, addr: bytes | None) -> tuple[str, int]:
    if addr is None or len(addr) < (8 if family == socket.AF_INET else 24):
        return _UNSPECIFIED[family], 0
    port = int.from_bytes(addr[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(family, addr[4:8]), port
    return socket.inet_ntop(family, addr[8:24]), port


def _unix_name(addr: bytes | None) -> str:
    """sockaddr_un's path as net/unix and ss print it: "@name" for an abstract name (a leading
    NUL), "" for an unnamed socket."""
    if addr is None or len(addr) <= 2:
        return ""
    path = addr[2:]
    if path[0] == 0:
        return "@" + path[1:].decode("utf-8", "backslashreplace")
    return path.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def socket_of_fd(fd: int, inode: int, netns: int | None = None) -> SocketInfo | None:
    """What the socket open as our fd is now, named as the tables name it; None when fd is
    not the socket `inode` (the process reused the number) or is not TCP, UDP or unix (the
    tables hold only those). Only reads: a socket object would set O_NONBLOCK on the shared
    file when a default timeout is set, so raw getsockopt/getsockname are used instead.
    Not read, as the tables do not give them either: a unix socket's owner uid; nor, unlike
    sock_diag, its peer's inode (peer_inode stays None)."""
    st = os.fstat(fd)
    if st.st_ino != inode or not stat.S_ISSOCK(st.st_mode):
        return None
    stype = _int_opt(fd, socket.SOL_SOCKET, socket.SO_TYPE)
    local = _name(_getsockname, fd)
    if local is None or len(local) < 2:
        return None
    family = int.from_bytes(local[:2], sys.byteorder)
    if family == socket.AF_UNIX:
        if _int_opt(fd, socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            state = "LISTEN"
        else:
            state = "ESTABLISHED" if _name(_getpeername, fd) is not None else UNCONN
        return SocketInfo(inode=inode, family="unix", protocol="unix", state=state,
                          local_address=_unix_name(local), local_port=None, remote_address="",
                          remote_port=None, netns=netns, sock_type=UNIX_TYPES.get(stype, str(stype)))
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    proto = _int_opt(fd, socket.SOL_SOCKET, socket.SO_PROTOCOL)
    if proto == socket.IPPROTO_TCP and stype == socket.SOCK_STREAM:
        protocol, code = "tcp", _tcp_state(fd)
    elif proto == socket.IPPROTO_UDP and stype == socket.SOCK_DGRAM:
        protocol, code = "udp", -1
    else:
        return None
    peer = _name(_getpeername, fd)
    if code == -1:  # UDP: connect() sets TCP_ESTABLISHED, else it is TCP_CLOSE (UNCONN)
        code = 1 if peer is not None else TCP_CLOSE
    laddr, lport = _inet_endpoint(family, local)
    raddr, rport = _inet_endpoint(family, peer)
    return SocketInfo(inode=inode, family="inet" if family == socket.AF_INET else "inet6",
                      protocol=protocol, state=state_name(protocol, code), local_address=laddr,
                      local_port=lport, remote_address=raddr, remote_port=rport, uid=st.st_uid,
                      netns=netns)


class FdSocketReader:
    """One process's sockets, each read through a duplicate of its fd: pidfd_open(2) and
    pidfd_getfd(2) (Linux 5.6), then getsockopt/getsockname/getpeername on the duplicate, which
    is closed at once (the process's own fd and its socket are untouched).

    Why: a socket table dumped before a process connected does not have its connection, and
    the enricher's table is cached for a second. Measured on the benchmark's realistic level
    (1,500 clients that connect to a loopback server just after exec): 1,482 exec events listed
    the socket fd without its socket. A dump per process instead costs milliseconds on a host
    with many sockets; this costs ~15 us per socket of that process.

    pidfd_getfd needs ptrace access to the process (PTRACE_MODE_ATTACH): root has it unless
    Yama's ptrace_scope is 3 or an LSM says no. `read` returns None whenever this way is not
    open (no such syscall, or refused): the caller uses the table and `fallbacks` counts it.
    """

    def __init__(self) -> None:
        self.available = hasattr(os, "pidfd_open")
        self.reads = 0  # processes whose sockets were read so
        self.fallbacks = 0  # reads handed to the table: refused, or no pidfd_getfd here

    def read(self, pid: int, fds: tuple[FdInfo, ...] | list[FdInfo],
             netns: int | None = None) -> tuple[SocketInfo, ...] | None:
        """The sockets behind pid's socket fds in fd order, one per socket (as join_sockets);
        None: use the table. Raises ProcessGone when pid has exited."""
        if not self.available:
            self.fallbacks += 1
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise ProcessGone(f"process {pid} gone") from None
        except OSError as exc:
            return self._fall_back(exc)
        try:
            out: list[SocketInfo] = []
            seen: set[int] = set()
            for f in fds:
                if f.kind != "socket" or f.inode is None or f.inode in seen:
                    continue
                dup = _syscall(SYS_PIDFD_GETFD, pidfd, f.fd, 0)
                if dup < 0:
                    err = ctypes.get_errno()
                    if err == errno.EBADF:
                        continue  # closed since the fd listing: it is not among its sockets now
                    if err == errno.ESRCH:
                        raise ProcessGone(f"process {pid} gone")
                    return self._fall_back(OSError(err, os.strerror(err)))
                try:
                    info = socket_of_fd(dup, f.inode, netns)
                except OSError:
                    info = None  # a family whose getsockname fails: not one the tables hold
                finally:
                    os.close(dup)
                if info is not None:
                    seen.add(f.inode)
                    out.append(info)
            self.reads += 1
            return tuple(out)
        finally:
            os.close(pidfd)

    def _fall_back(self, exc: OSError) -> None:
        if exc.errno in (errno.ENOSYS, errno.EINVAL):  # no pidfd_open/pidfd_getfd: older kernel
            if self.available:
                log.warning("sockets.pidfd_unavailable: %s; reading socket tables instead", exc)
            self.available = False
        self.fallbacks += 1
        return None


class SocketTables:
    """Socket tables cached per netns inode, for one sweep.

    ``for_pid(pid, netns)`` returns the table of the netns that pid lives in: from sock_diag
    when that is our own netns, else from the pid's net/ files. A failure is raised
    (ProcessGone, AccessDenied, ParseError) and not cached, so a later pid in the same netns
    may still succeed.
    """

    def __init__(
        self,
        fs: ProcFS,
        use_diag: bool = True,
        diag_reader: Callable[[int | None], dict[int, SocketInfo]] = read_diag_table,
        fd_reader: FdSocketReader | None = None,
    ) -> None:
        self.fs = fs
        self.fd_reader = fd_reader
        self._use_diag = use_diag
        self._diag_reader = diag_reader
        self._cache: dict[int | None, dict[int, SocketInfo]] = {}
        self._own_netns: int | None = None
        self._own_netns_read = False

    def own_netns(self) -> int | None:
        """Our netns inode as seen through this ProcFS; None for a fixture tree without one."""
        if not self._own_netns_read:
            self._own_netns_read = True
            try:
                self._own_netns = parse_ns_link(self.fs.readlink("thread-self", "ns/net"))
            except ProcFSError:
                self._own_netns = None
        return self._own_netns

    def for_pid(self, pid: int, netns: int | None) -> dict[int, SocketInfo]:
        if netns is not None and netns in self._cache:
            return self._cache[netns]
        table: dict[int, SocketInfo] | None = None
        if self._use_diag and netns is not None and netns == self.own_netns():
            try:
                table = self._diag_reader(netns)
            except OSError as exc:  # no NETLINK_SOCK_DIAG (seccomp, old kernel): use the files
                log.warning("sockets.diag_failed: %s; falling back to net/ tables", exc)
                self._use_diag = False
        if table is None:
            table = read_proc_net_table(self.fs, pid, netns)
        if netns is not None:
            self._cache[netns] = table
        return table


    def sockets_of(self, pid: int, fds: tuple[FdInfo, ...], netns: int | None) -> tuple[SocketInfo, ...]:
        """pid's sockets in fd order, one per socket: read through its fds when there is an
        fd_reader and pid holds at most FD_SOCKETS_MAX socket fds, else joined from its
        namespace's table (for_pid)."""
        reader = self.fd_reader
        if reader is not None:
            if sum(1 for f in fds if f.kind == "socket") <= FD_SOCKETS_MAX:
                got = reader.read(pid, fds, netns)
                if got is not None:
                    return got
            else:
                reader.fallbacks += 1
        return join_sockets(fds, self.for_pid(pid, netns))


def join_sockets(fds: Iterable[FdInfo], table: dict[int, SocketInfo]) -> tuple[SocketInfo, ...]:
    """The SocketInfo behind each socket fd, in fd order. Sockets of other families (netlink,
    packet, vsock) are not in the table and are left out; two fds sharing one socket (dup,
    fork) yield it once."""
    seen: set[int] = set()
    out = []
    for fd in fds:
        if fd.kind == "socket" and fd.inode is not None and fd.inode not in seen:
            info = table.get(fd.inode)
            if info is not None:
                seen.add(fd.inode)
                out.append(info)
    return tuple(out)

