"""The Redis transport against a real redis-server, and the spool's drop policy on real files."""
from __future__ import annotations

import json
import signal

import pytest

from monitor.delivery.fanout import FanOut
from monitor.delivery.redis_dest import RedisTransport
from monitor.delivery.spool import Record
from monitor.delivery.transport import DeliveryError, Outcome
from monitor.delivery.urls import parse, parse_all
from monitor.delivery.worker import MARKER_RESERVE, Options
from monitor.events import LostEvent
from tests.delivery.servers import Redis, make_ca

pytestmark = pytest.mark.root


def rec(seq: int, sub: int = 0) -> Record:
    return Record(seq, sub, b'{"seq":%d,"event":"exec"}\n' % seq, (1, seq))


@pytest.fixture
def redis_server(tmp_path):
    s = Redis(tmp_path / "redis").start()
    yield s
    s.kill()


def test_stream_ids_from_seq_make_a_replay_a_counted_duplicate(redis_server):
    t = RedisTransport(parse(f"redis://127.0.0.1:{redis_server.port}/ps:host1"), 5.0)
    t.connect()
    assert t.deliver([rec(1), rec(2), rec(3)]) == [Outcome.OK] * 3
    # a reconnect resends 2 and 3 (their acks were lost), then 4 is new
    assert t.deliver([rec(2), rec(3), rec(4)]) == [Outcome.DUPLICATE, Outcome.DUPLICATE, Outcome.OK]
    # a dropped record sits between two seqs: ID 4-1, after 4-0 and before 5-0
    assert t.deliver([rec(4, 1), rec(5)]) == [Outcome.OK, Outcome.OK]
    t.close()
    c = redis_server.client()
    ids = [i.decode() for i, _ in c.xrange("ps:host1")]
    assert ids == ["1-0", "2-0", "3-0", "4-0", "4-1", "5-0"]
    assert json.loads(c.xrange("ps:host1")[0][1][b"json"]) == {"seq": 1, "event": "exec"}


def test_a_large_batch_then_a_server_state_error_mid_batch(redis_server):
    # The batch is one packed buffer and its replies are read one by one: 3,000 events of 1 KiB
    # arrive in order; then the key changes type under the session, and the error reply to the
    # first command stops the batch as broken (the server's state, not the event's fault).
    key = "ps:big"
    t = RedisTransport(parse(f"redis://127.0.0.1:{redis_server.port}/{key}"), 5.0)
    t.connect()
    big = [Record(n, 0, b'{"seq":%d,"pad":"%s"}\n' % (n, b"x" * 1000), (1, n)) for n in range(1, 3001)]
    assert t.deliver(big) == [Outcome.OK] * 3000
    c = redis_server.client()
    assert [int(i.split(b"-")[0]) for i, _ in c.xrange(key)] == list(range(1, 3001))
    assert json.loads(c.xrange(key, "2999-0", "2999-0")[0][1][b"json"])["seq"] == 2999
    c.delete(key)
    c.set(key, "x")
    assert t.deliver([rec(3001), rec(3002)]) == []
    assert t.broken.startswith("Redis: WRONGTYPE"), t.broken
    t.close()


def test_list_mode_pushes_lines(redis_server):
    t = RedisTransport(parse(f"redis://127.0.0.1:{redis_server.port}/beats?mode=list"), 5.0)
    t.connect()
    assert t.deliver([rec(1), rec(2)]) == [Outcome.OK, Outcome.OK]
    t.close()
    assert redis_server.client().lrange("beats", 0, -1) == [b'{"seq":1,"event":"exec"}', b'{"seq":2,"event":"exec"}']


def test_a_key_of_another_type_is_an_error_not_data_loss(redis_server):
    redis_server.client().set("taken", "x")
    t = RedisTransport(parse(f"redis://127.0.0.1:{redis_server.port}/taken"), 5.0)
    with pytest.raises(DeliveryError, match="holds a string, not a stream"):
        t.connect()


def test_server_killed_is_a_broken_session(redis_server):
    t = RedisTransport(parse(f"redis://127.0.0.1:{redis_server.port}/k"), 2.0)
    t.connect()
    redis_server.kill(signal.SIGKILL)
    assert t.deliver([rec(1)]) == [] and t.broken
    t.close()
    with pytest.raises(DeliveryError, match="Connection refused|connecting"):
        t.connect()


def test_rediss_verifies_the_server(tmp_path):
    good, other = make_ca(tmp_path / "ca", "good"), make_ca(tmp_path / "ca", "other")
    s = Redis(tmp_path / "redis", tls=good).start()
    try:
        ok = RedisTransport(parse_all([f"rediss://127.0.0.1:{s.port}/k"], tls_ca=good["ca"])[0], 5.0)
        ok.connect()
        assert ok.deliver([rec(1)]) == [Outcome.OK]
        ok.close()
        bad = RedisTransport(parse_all([f"rediss://127.0.0.1:{s.port}/k"], tls_ca=other["ca"])[0], 5.0)
        with pytest.raises(DeliveryError, match="certificate"):
            bad.connect()
    finally:
        s.kill()


def make_fanout(tmp_path, spool: str = "64k", url: str = "relp://127.0.0.1:9?max_size=4k") -> FanOut:
    # Port 9 (discard) is closed here: the worker is not started, the spool only fills.
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    from monitor.delivery.urls import parse_size  # noqa: PLC0415
    return FanOut(parse_all([url]), "json", str(state), Options(spool_size=parse_size(spool)))


def spooled(ch) -> list[dict]:
    return [json.loads(r.payload) for r in ch.spool.read(ch.spool.acked_pos, 1 << 20, 1 << 30)]


def test_drop_newest_then_one_dropped_record_with_the_exact_range(tmp_path):
    f = make_fanout(tmp_path)
    ch = f.channels[0]
    for i in range(200):  # ~1 KiB each: three times the 64 KiB spool
        f.write(LostEvent("lost", "t", "bpf", 0, i))
        f.write(LostEvent("lost", "t", "bpf", 1, 1))  # small ones too
        f.flush()
    kept = spooled(ch)
    assert ch.spool.bytes <= 64 << 10
    assert ch.spool_full > 0 and ch._run_count == ch.spool_full
    first_dropped = kept[-1]["seq"] + 1
    # the destination acknowledges everything: space comes back, the next flush closes the run
    ch.spool.ack(ch.spool.end_locked(), ch.spool.pending)
    f.write(LostEvent("lost", "t", "bpf", 2, 2))
    f.flush()
    after = spooled(ch)
    marker, nxt = after[0], after[1]
    assert marker["event"] == "dropped" and marker["reason"] == "spool_full" and marker["seq"] is None
    assert marker["first_seq"] == first_dropped and marker["last_seq"] == f.seq.last - 1
    assert marker["count"] == marker["last_seq"] - marker["first_seq"] + 1 == ch.spool_full
    assert nxt["seq"] == f.seq.last and nxt["cpu"] == 2
    assert ch.figures().dropped == ch.spool_full
    f.close()


def test_an_event_over_max_size_is_replaced_not_cut(tmp_path):
    f = make_fanout(tmp_path, url="relp://127.0.0.1:9?max_size=1k")
    ch = f.channels[0]
    f.write(LostEvent("lost", "t", "bpf", 0, 1))
    f.write(LostEvent("lost", "t" * 2000, "bpf", 0, 2))  # the header makes room for 1k - 400 B only
    f.flush()
    a, b = spooled(ch)
    assert a["seq"] == 1 and a["count"] == 1
    assert b == {**b, "event": "dropped", "reason": "too_large", "first_seq": 2, "last_seq": 2, "count": 1}
    assert ch.too_large == 1 and ch.figures().dropped == 1
    f.close()


def test_the_reserve_keeps_room_for_the_dropped_record_at_exit(tmp_path):
    f = make_fanout(tmp_path)
    ch = f.channels[0]
    for i in range(600):  # ~200 bytes each: twice the spool
        f.write(LostEvent("lost", "t", "bpf", 0, i))
        f.flush()
    assert ch._run_count > 0 and ch.spool.bytes <= (64 << 10) - MARKER_RESERVE
    count = ch._run_count
    f.close()  # still dropping at exit: the record of the gap goes in the reserve
    again = make_fanout(tmp_path)
    last = spooled(again.channels[0])[-1]
    assert last["event"] == "dropped" and last["count"] == count and last["last_seq"] == 600
    assert again.seq.next() == 601
    again.close()
