"""`watch --enrich minimal|standard|full` on the real kernel: what each level puts in an exec
event, and that the kernel-captured stdio and capabilities are there at every level."""
from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.bpf

SLEEP = os.path.realpath("/bin/sleep")


def _sleep_tag() -> str:
    """A unique sleep of 20-21 s (the tests kill it): its argv finds its exec event."""
    return f"{20 + uuid.uuid4().int % 10**6 / 1e6:.6f}"


def _exec_event(w, argv: list[str], what: str = "the exec event") -> dict:
    return w.until(lambda evs: next((e for e in evs if e["event"] == "exec" and e["argv"] == argv),
                                    None), 30, what=what)


def _status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


@pytest.mark.parametrize("level", ["minimal", "standard", "full"])
def test_exec_event_at_each_enrichment_level(watch, level):
    w = watch("--enrich", level)
    w.wait_ready()
    listener = socket.create_server(("127.0.0.1", 0))
    conn = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    tag = _sleep_tag()
    # trigger: a process whose stdout is a TCP socket (a reverse shell's shape), stdin a pipe
    r_end, w_end = os.pipe()
    try:
        p = subprocess.Popen([SLEEP, tag], stdin=r_end, stdout=conn.fileno(),
                             stderr=subprocess.DEVNULL)
        try:
            # Popen returns once the exec succeeded: the oracle is read from the new program
            sock_link = os.readlink(f"/proc/{p.pid}/fd/1")
            status = _status(p.pid)
            ev = _exec_event(w, [SLEEP, tag], "the exec event")
        finally:
            p.kill()
            p.wait(30)
    finally:
        os.close(r_end)
        os.close(w_end)
        for s in (conn, peer, listener):
            s.close()
    # kernel-captured, at every level
    assert ev["cap_eff"] == status["CapEff"].strip() and ev["cap_prm"] == status["CapPrm"].strip()
    kinds = [(s["fd"], s["kind"]) for s in ev["stdio"]]
    assert kinds == [(0, "pipe"), (1, "socket"), (2, "chr")]
    assert f"socket:[{ev['stdio'][1]['inode']}]" == sock_link
    assert (ev["stdio"][1]["family"], ev["stdio"][1]["type"], ev["stdio"][1]["protocol"]) == (
        "inet", "stream", "tcp")
    assert ev["stdio"][2]["dev"] == "1:3"  # /dev/null
    if level == "minimal":
        assert (ev["enrichment"], ev["proc"]) == ("kernel", None)
        return
    assert ev["enrichment"] == "full"
    proc = ev["proc"]
    # standard: stat (state, threads, memory); caps and saved/fs uid as the kernel captured them
    assert proc["threads"] == 1 and proc["rss_bytes"] > 0 and proc["vsz_bytes"] > 0
    assert proc["cap_eff"] == status["CapEff"].strip()
    assert (proc["suid"], proc["fsuid"]) == (os.getuid(), os.getuid())
    if level == "standard":
        assert (proc["fds"], proc["fd_count"], proc["sockets"]) == (None, None, None)
    else:
        assert proc["fd_count"] == 3
        assert proc["fds"][:2] == [f"0:pipe:[{ev['stdio'][0]['inode']}]", f"1:{sock_link}"]
        (s,) = proc["sockets"]
        assert (s["fd"], s["protocol"], s["inode"]) == (1, "tcp", ev["stdio"][1]["inode"])




def test_a_connection_the_socket_table_lacks_is_reported_missing(watch):
    """The enricher joins socket fds with a sock_diag table read at most once a second. One
    process after another, each handed a TCP connection made just before its exec: each exec
    event either lists that connection exactly, or says its sockets are short of it
    (missing.sockets = not_in_table, enrichment partial), never silently; and the final stats
    count every one of those."""
    w = watch("--enrich", "full")
    w.wait_ready()
    listener = socket.create_server(("127.0.0.1", 0))
    server = "%s:%d" % listener.getsockname()
    held = []
    seen = []  # (exec event, the connection's inode, its local address)
    try:
        for i in range(4):
            conn = socket.create_connection(listener.getsockname())
            peer, _ = listener.accept()
            held += [conn, peer]
            tag = _sleep_tag()
            p = subprocess.Popen([SLEEP, tag], stdin=subprocess.DEVNULL, stdout=conn.fileno(),
                                 stderr=subprocess.DEVNULL)
            try:
                ev = _exec_event(w, [SLEEP, tag], f"the exec event of process {i}")
            finally:
                p.kill()
                p.wait(30)
            seen.append((ev, os.fstat(conn.fileno()).st_ino, "%s:%d" % conn.getsockname()))
    finally:
        for s in held:
            s.close()
        listener.close()
    assert w.stop() == 0
    stats = [e for e in w.snapshot() if e["event"] == "stats"][-1]
    short = 0
    for i, (ev, inode, local) in enumerate(seen):
        assert ev["stdio"][1]["inode"] == inode and f"1:socket:[{inode}]" in ev["proc"]["fds"], (i, ev)
        if ev["proc"]["sockets"]:
            assert ev["proc"]["sockets"] == [{"fd": 1, "protocol": "tcp", "state": "ESTABLISHED",
                                              "local": local, "remote": server, "inode": inode}], (i, ev)
            assert "sockets" not in ev["missing"] and ev["enrichment"] == "full", (i, ev)
        else:
            assert ev["missing"]["sockets"] == "not_in_table" and ev["enrichment"] == "partial", (i, ev)
            short += 1
    assert stats["socket_table"]["not_in_table"] >= short >= 0
    assert stats["socket_table"]["dumps"] >= 1


def test_a_unix_socket_name_that_is_not_utf8_does_not_stop_the_monitor(watch):
    """Any user can bind a unix socket to a name that is not UTF-8. A process holding one used to
    make the socket dump raise out of enrichment and end the monitor (exit 1): now its exec
    event lists the socket, named as net/unix renders it, and the monitor goes on."""
    w = watch("--enrich", "full")
    w.wait_ready()
    name = b"\0procsentry-\xff\xfe-%d" % os.getpid()
    held = socket.socket(socket.AF_UNIX)
    held.bind(name)
    held.listen()
    tag = _sleep_tag()
    try:
        p = subprocess.Popen([SLEEP, tag], stdin=held.fileno(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            ev = _exec_event(w, [SLEEP, tag], "the exec event")
        finally:
            p.kill()
            p.wait(30)
        inode = os.fstat(held.fileno()).st_ino
    finally:
        held.close()
    assert {"fd": 0, "protocol": "unix", "state": "LISTEN", "local": f"@procsentry-\\xff\\xfe-{os.getpid()}",
            "remote": "", "inode": inode} in ev["proc"]["sockets"]
    after = f"after-{uuid.uuid4().hex}"
    subprocess.run(["/bin/true", after], check=True)  # still watching
    _exec_event(w, ["/bin/true", after], "the next exec event")
    assert w.stop() == 0
