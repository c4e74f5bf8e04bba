"""The RELP client against a real rsyslogd (imrelp -> omfile), and its frame parser on
hostile bytes."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from monitor.delivery import syslog5424
from monitor.delivery.relp import MAX_TXNR, ProtocolError, RelpTransport, frame, parse_frames
from monitor.delivery.spool import Record
from monitor.delivery.transport import DeliveryError, Outcome
from monitor.delivery.urls import parse
from tests.delivery.delivery_helpers import wait_for
from tests.delivery.servers import Rsyslog, SilentPeer

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


def rec(seq: int, body: bytes) -> Record:
    return Record(seq, 0, body + b"\n", (1, seq))


@pytest.fixture
def rsyslog(tmp_path):
    s = Rsyslog(tmp_path / "rsyslog").start()
    yield s
    s.kill()


def test_frames_parse_incrementally_and_reject_garbage():
    buf = bytearray(b"1 rsp 6 200 OK\n2 rsp 0\n3 serverclose 0\n4 rsp 10 200 O")
    assert parse_frames(buf) == [(1, b"rsp", b"200 OK"), (2, b"rsp", b""), (3, b"serverclose", b"")]
    assert bytes(buf) == b"4 rsp 10 200 O"  # incomplete: kept for the next read
    buf += b"K\nabc\n"
    assert parse_frames(buf) == [(4, b"rsp", b"200 OK\nabc")]
    assert buf == bytearray()
    for garbage in (b"HTTP/1.1 400 Bad Request\r\n", b"1 rsp x 200\n", b"1 rsp 3 abcd\n", b"12345678901234 rsp 0\n"):
        with pytest.raises(ProtocolError):
            parse_frames(bytearray(garbage))
    assert frame(7, b"syslog", b"hello") == b"7 syslog 5 hello\n"
    assert frame(8, b"close") == b"8 close 0\n"


def test_syslog_message_is_rfc5424_with_the_json_as_msg():
    fields = syslog5424.header_fields("web 1")  # a space is not PRINTUSASCII: NILVALUE
    msg = syslog5424.message(fields, b'{"seq":1,"host":{},"event":"exec","x":1}\n', b"2026-12-01T00:00:00.000000Z")
    pid = fields.split()[2].decode()
    assert msg == (b'<110>1 2026-12-01T00:00:00.000000Z - procsentry ' + pid.encode() +
                   b' exec - {"seq":1,"host":{},"event":"exec","x":1}')


def test_open_send_and_close_against_rsyslogd(rsyslog):
    t = RelpTransport(parse(f"relp://127.0.0.1:{rsyslog.port}"), 5.0, "testhost")
    t.connect()
    assert t.server_software.startswith("librelp,")
    bodies = [b'{"seq":%d,"event":"exec","argv":["caf\xc3\xa9","a\\"b"]}' % i for i in range(1, 3001)]
    out = t.deliver([rec(i + 1, b) for i, b in enumerate(bodies)])
    assert out == [Outcome.OK] * 3000 and t.broken is None
    t.close()
    # RELP acknowledged after omfile wrote: the file holds exactly these lines, in order.
    assert rsyslog.out.read_bytes() == b"".join(b + b"\n" for b in bodies)


def test_txnr_must_be_exact_and_wraps_after_999999999(rsyslog):
    # librelp checks that each TXNR is the previous + 1: a client that skips one is closed
    # on (serverclose), which is why the client numbers every frame it sends, open included.
    t = RelpTransport(parse(f"relp://127.0.0.1:{rsyslog.port}"), 5.0, "testhost")
    t.connect()
    assert t.deliver([rec(1, b'{"event":"exec"}')]) == [Outcome.OK]
    t.txnr += 5
    assert t.deliver([rec(2, b'{"event":"exec"}')]) == []
    assert "serverclose" in t.broken and t.peer_closed
    t.close()
    # The wrap itself (sending 10^9 frames to a real server is not a test's job).
    t.txnr = MAX_TXNR - 2
    assert [t._next_txnr() for _ in range(4)] == [MAX_TXNR - 1, MAX_TXNR, 1, 2]


def test_server_shutdown_is_a_broken_session_not_a_hang(rsyslog):
    t = RelpTransport(parse(f"relp://127.0.0.1:{rsyslog.port}"), 5.0, "testhost")
    t.connect()
    assert t.deliver([rec(1, b'{"event":"exec"}')]) == [Outcome.OK]
    rsyslog.kill(signal.SIGTERM)  # rsyslog sends serverclose to its RELP clients
    out = t.deliver([rec(2, b'{"event":"exec"}')])
    assert out == [] and t.broken is not None
    t.close()
    with pytest.raises(DeliveryError, match="connect 127.0.0.1"):
        t.connect()


def test_silent_server_times_out_the_open():
    peer = SilentPeer()
    try:
        t = RelpTransport(parse(f"relp://127.0.0.1:{peer.port}"), 0.5, "testhost")
        with pytest.raises(DeliveryError, match="no RELP answer within 0.5s"):
            t.connect()
    finally:
        peer.close()


class ShippedSnippet(Rsyslog):
    """contrib/rsyslog-procsentry.conf as shipped, with only its port, output file and work
    directory moved into the test's directory."""

    def __init__(self, workdir):
        super().__init__(workdir)
        text = (REPO / "contrib" / "rsyslog-procsentry.conf").read_text()
        assert 'port="2514"' in text and "/var/log/procsentry/events.jsonl" in text
        text = text.replace('port="2514"', f'port="{self.port}"')
        text = text.replace("/var/log/procsentry/events.jsonl", str(self.out))
        self.conf.write_text(f'global(workDirectory="{self.dir}/work")\n' + text)


def test_the_shipped_rsyslog_snippet_stores_a_40k_event_whole(tmp_path):
    s = ShippedSnippet(tmp_path / "snippet").start()
    try:
        t = RelpTransport(parse(f"relp://127.0.0.1:{s.port}?max_size=512k"), 5.0, "testhost")
        t.connect()
        big = b'{"seq":1,"host":{},"event":"exec","argv":["' + b"x" * 40000 + b'"]}'
        assert t.deliver([rec(1, big), rec(2, b'{"seq":2,"event":"exit"}')]) == [Outcome.OK, Outcome.OK]
        t.close()
        # the snippet's ruleset queue writes asynchronously
        wait_for(lambda: s.out.exists() and s.out.read_bytes().count(b"\n") >= 2, 10, "both lines in the file")
        assert s.out.read_bytes() == big + b"\n" + b'{"seq":2,"event":"exit"}\n'
        assert oct(s.out.stat().st_mode & 0o777) == "0o600"
    finally:
        s.kill()


def test_an_event_the_server_aborts_the_session_on_becomes_a_refused_record(tmp_path):
    # A mismatched collector: imrelp takes 8k and aborts the session above it, while this
    # procsentry was told max_size=512k. Without care the event would block the stream forever.
    from monitor.delivery.fanout import FanOut  # noqa: PLC0415
    from monitor.delivery.urls import parse_all  # noqa: PLC0415
    from monitor.delivery.worker import Options  # noqa: PLC0415
    from monitor.events import LostEvent  # noqa: PLC0415

    rs = Rsyslog(tmp_path / "rsyslog", max_message="8k")
    rs.conf.write_text(rs.conf.read_text().replace('maxDataSize="8k"', 'maxDataSize="8k" oversizeMode="abort"'))
    rs.start()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    f = FanOut(parse_all([f"relp://127.0.0.1:{rs.port}?max_size=512k"]), "json", str(state),
               Options(retry_initial=0.05, retry_max=0.2, timeout=5))
    f.start()
    try:
        f.write(LostEvent("lost", "t", "bpf", 0, 1))
        f.write(LostEvent("lost", "t" * 20000, "bpf", 0, 2))
        f.write(LostEvent("lost", "t", "bpf", 0, 3))
        f.flush()
        got = wait_for(lambda: (lambda r: r if len(r) == 3 else None)(rs.records()), 30, "three records")
    finally:
        f.close()
        rs.kill()
    assert [r["seq"] for r in got] == [1, None, 3]
    assert got[1] == {**got[1], "event": "dropped", "reason": "refused", "first_seq": 2, "last_seq": 2, "count": 1}
    ch = f.channels[0]
    assert ch.refused == 1 and ch.figures().dropped == 1 and "refused by the destination" in ch.last_error
