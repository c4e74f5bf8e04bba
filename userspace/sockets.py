"""Socket tables: {inode: SocketInfo} per network namespace, and the join with a process's fds.

Two sources, same output:

* sock_diag over netlink (pyroute2 ``DiagSocket``) for the namespace we run in. It is what
  ``ss`` uses, and the only source we use live in the reader's own netns.
* The text tables <pid>/net/{tcp,tcp6,udp,udp6,unix} for every other namespace: sock_diag
  answers only for the caller's netns (net/core/sock_diag.c uses sock_net(skb->sk)), and
  entering another one with setns(2) would move this whole thread. The per-pid files are
  rendered in *that pid's* netns (proc_net: get_proc_task_net), which is what falco's
  scap_fd_read_sockets does. They are also the test oracle for the netlink path.

Tables are cached per netns inode in one ``SocketTables`` object; make one per sweep
(or per batch of events) so that stale sockets do not survive.
"""
from __future__ import annotations

import logging
import re
import socket
import sys
import time
from typing import Callable, Iterable

from .parsers import parse_ns_link
from .procfs import ParseError, ProcFS, ProcFSError, Unavailable
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
    for line in _complete_lines(data)[1:]:
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


def _complete_lines(data: bytes) -> list[bytes]:
    """The lines of a net/ table, without what follows the last newline: the kernel ends every
    line with one, so anything after it is a line cut short by the read limit (a netns with
    enough sockets outgrows procfs.MAX_READ). Parsed, it was a ParseError that cost the whole
    table, or a wrong number (an inode cut to its first digits)."""
    lines = data.split(b"\n")
    lines.pop()
    return lines


# One record of net/unix (unix_seq_show in net/unix/af_unix.c): "%pK: %08X %08X %08X %04X %02X
# %5lu", then " " and the name if the socket has one, then "\n". %pK is hex, or
# "(____ptrval____)" on 4.15-5.x kernels until the pointer-hash key is seeded.
_UNIX_RECORD = re.compile(
    rb"(\S+): ([0-9A-F]{8}) ([0-9A-F]{8}) ([0-9A-F]{8}) ([0-9A-F]{4}) ([0-9A-F]{2}) +([0-9]+)"
    rb"(?: (.*))?\Z", re.S)


def parse_net_unix(data: bytes, netns: int | None = None) -> dict[int, SocketInfo]:
    """Parse <pid>/net/unix: "Num RefCount Protocol Flags Type St Inode [Path]". An abstract
    name is printed with "@" for its leading NUL, as ss does.

    The kernel prints a socket's name byte for byte (NULs as "@"), newlines included, and any
    user can bind one (a path needs a writable directory, an abstract name nothing). So a line
    that is not a record continues the name of the record before it (the name gets its "\n"
    back), and a name may even hold a whole line that looks like a record: an inode that two
    records claim is left out, since one of them is made up and nothing tells which. A made-up
    record for an inode no real record claims cannot be told from a real one and is kept (the
    text alone cannot settle it; a TCP/UDP socket is still never replaced: read_proc_net_table). Read
    line by line instead, one such name made the whole netns's table a ParseError (every
    socket of every process there unreported) or put a made-up record in it."""
    records: dict[int, tuple[str, int, bytes | None]] = {}  # inode -> (state, type, name)
    claimed: set[int] = set()
    last: int | None = None  # the record that a line which is not one continues
    for line in _complete_lines(data)[1:]:
        m = _UNIX_RECORD.match(line)
        if m is None:
            if last is None:
                raise ParseError("net/unix: not a record", line)
            if last in records:  # else the continued record was left out
                state, stype, name = records[last]
                records[last] = (state, stype, (name or b"") + b"\n" + line)
            continue
        flags, stype, st, inode = int(m[4], 16), int(m[5], 16), int(m[6], 16), int(m[7])
        last = inode
        if inode in claimed:
            records.pop(inode, None)
            continue
        claimed.add(inode)
        if flags & _SO_ACCEPTCON:
            state = "LISTEN"
        elif st == _SS_CONNECTED:
            state = "ESTABLISHED"
        else:
            state = UNCONN
        records[inode] = (state, stype, m[8])
    return {
        inode: SocketInfo(
            inode=inode,
            family="unix",
            protocol="unix",
            state=state,
            local_address=name.decode("utf-8", "backslashreplace") if name is not None else "",
            local_port=None,
            remote_address="",
            remote_port=None,
            netns=netns,
            sock_type=UNIX_TYPES.get(stype, str(stype)),
        )
        for inode, (state, stype, name) in records.items()
    }


def read_proc_net_table(fs: ProcFS, pid: int, netns: int | None = None,
                        unix: bool = True) -> dict[int, SocketInfo]:
    """All TCP/UDP v4/v6 and (with ``unix``) unix sockets of the netns ``pid`` lives in, from its
    net/ files. A missing file (no IPv6 in that kernel) is skipped; ProcessGone/AccessDenied
    propagate."""
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
    if not unix:
        return table
    try:
        data = fs.read_bytes(pid, "net/unix")
    except Unavailable:
        return table
    try:
        unix = parse_net_unix(data, netns)
    except ParseError as exc:
        exc.path = fs.path(pid, "net/unix")
        raise
    for inode, info in unix.items():
        # Socket inodes are unique across families: a unix record with a TCP/UDP socket's
        # inode is one made up inside a name (see parse_net_unix), never the truth.
        table.setdefault(inode, info)
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
    if isinstance(name, bytes):
        # pyroute2 hands back a name that is not UTF-8 as bytes; any user can bind one, and
        # it must not stop a dump. Rendered as the net/unix text table renders it.
        name = name.decode("utf-8", "backslashreplace")
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


def read_diag_table(netns: int | None = None, unix: bool = True) -> dict[int, SocketInfo]:
    """All TCP/UDP v4/v6 and (with ``unix``) unix sockets of the *caller's* netns via sock_diag.
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
        if not unix:
            return table
        for msg in ds.get_sock_stats(family=socket.AF_UNIX):
            table[msg["udiag_ino"]] = _diag_unix(msg, netns)
    return table


class DumpBudget:
    """When the next uncached table may be read, shared by the tables one reader makes over
    time: after a dump that took t, none before IDLE_FACTOR * t has passed (at most 10 % of a
    CPU). Any user can open tens of thousands of sockets (38,000 made one dump 1.2 s here), and,
    with unprivileged user namespaces, as many network namespaces as it likes, each its own
    table: a cache per SocketTables alone let one exec per fresh netns cost a dump each."""

    IDLE_FACTOR = 9.0

    def __init__(self) -> None:
        self.next_at = 0.0

    def allows(self) -> bool:
        return time.monotonic() >= self.next_at

    def check(self, path: bytes) -> None:
        if not self.allows():
            raise Unavailable("socket table dumps throttled (10 % of a CPU at most)", path)

    def spent(self, seconds: float) -> None:
        self.next_at = time.monotonic() + self.IDLE_FACTOR * seconds


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
        counts: dict[str, int] | None = None,
        unix: bool = True,
        budget: DumpBudget | None = None,
    ) -> None:
        self.fs = fs
        self.budget = budget  # None: no limit (a sweep reads each netns once)
        self.unix = unix  # False: TCP/UDP only (the unix tables are often the largest)
        # dumps: tables read (one per netns, and retries after a failure); not_in_table: sockets
        # of joined processes that the tables lacked. Pass one dict to count across objects.
        self.counts = counts if counts is not None else {"dumps": 0, "not_in_table": 0}
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
        if self.budget is not None:
            self.budget.check(self.fs.path(pid, "net"))  # Unavailable: the caller says so
        t0 = time.perf_counter()
        try:
            if self._use_diag and netns is not None and netns == self.own_netns():
                try:
                    table = self._diag_reader(netns) if self.unix else self._diag_reader(netns, unix=False)
                except OSError as exc:  # no NETLINK_SOCK_DIAG (seccomp, old kernel): use the files
                    log.warning("sockets.diag_failed: %s; falling back to net/ tables", exc)
                    self._use_diag = False
            if table is None:
                table = read_proc_net_table(self.fs, pid, netns, unix=self.unix)
        finally:
            if self.budget is not None:
                self.budget.spent(time.perf_counter() - t0)
        self.counts["dumps"] += 1
        if netns is not None:
            self._cache[netns] = table
        return table


# sockfs's "system.sockprotoname" (sk->sk_prot->name) of the sockets the tables list.
TABLE_PROTOCOLS = frozenset({b"TCP", b"TCPv6", b"UDP", b"UDPv6", b"UNIX", b"UNIX-STREAM",
                             b"UNIX-DGRAM", b"UNIX-SEQPACKET"})


def missed_by_table(fs: ProcFS, pid: int, fds: Iterable[FdInfo], table: dict[int, SocketInfo]) -> int:
    """How many of pid's sockets a table should have listed and did not: opened after it was
    read. A socket fd missing from the table may also be of a kind no table lists (netlink,
    packet, raw); its protocol name, one getxattr of the fd (no socket lock taken), tells."""
    missed = 0
    seen: set[int] = set()
    for f in fds:
        if f.kind != "socket" or f.inode is None or f.inode in table or f.inode in seen:
            continue
        seen.add(f.inode)
        if socket_protocol(fs, pid, f.fd) in TABLE_PROTOCOLS:  # None: closed since the listing
            missed += 1
    return missed


def socket_protocol(fs: ProcFS, pid: int, fd: int) -> bytes | None:
    """The protocol sockfs names for pid's fd (sk->sk_prot->name: b"TCP", b"UNIX-STREAM",
    b"NETLINK"...): one getxattr of system.sockprotoname, no socket lock taken. None when the
    fd is gone or no socket."""
    try:
        return fs.getxattr(pid, b"fd/%d" % fd, "system.sockprotoname").rstrip(b"\0")
    except ProcFSError:
        return None


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

