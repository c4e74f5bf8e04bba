"""The spool, the state directory and the seq counter on real files (no network)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from monitor.delivery.spool import HDR, Spool
from monitor.delivery.state import Sequencer, StateDir, StateError, open_dir
from monitor.delivery.urls import UsageError, parse, parse_all, parse_size

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spool_at(d, capacity=1 << 20, segment=None) -> Spool:
    d.mkdir(exist_ok=True, mode=0o700)
    return Spool(open_dir(str(d)), str(d), capacity, segment)


def test_records_read_back_in_order_and_ack_frees_whole_segments(tmp_path):
    s = spool_at(tmp_path / "s", segment=4096)
    recs = [(i, 0, b'{"seq":%d,"pad":"%s"}\n' % (i, b"x" * 300)) for i in range(1, 41)]
    s.append(recs[:25])
    s.append(recs[25:])
    assert s.pending == 40
    got = s.read(s.acked_pos, 1000, 1 << 20)
    assert [(r.seq, r.sub, r.payload) for r in got] == recs
    segments_before = len(s.sizes)
    assert segments_before > 3  # 40 records of ~330 bytes in 4 KiB segments
    s.ack(got[19].end, 20)
    assert s.pending == 20
    assert len(s.sizes) < segments_before  # fully acknowledged segments are gone from disk
    assert sorted(n for n in os.listdir(tmp_path / "s") if n.endswith(".seg")) == \
        [f"{n:016d}.seg" for n in sorted(s.sizes)]
    assert [r.seq for r in s.read(s.acked_pos, 1000, 1 << 20)] == list(range(21, 41))


def test_restart_after_a_crash_replays_exactly_the_unacknowledged(tmp_path):
    s = spool_at(tmp_path / "s", segment=2048)
    s.append([(i, 0, b"%d\n" % i * 50) for i in range(1, 101)])
    got = s.read(s.acked_pos, 30, 1 << 20)
    s.ack(got[-1].end, 30)
    # no close(): the process died (kill -9 keeps what write(2) and pwrite(2) handed the kernel)
    again = spool_at(tmp_path / "s", segment=2048)
    assert again.pending == again.recovered == 70
    assert [r.seq for r in again.read(again.acked_pos, 1000, 1 << 20)] == list(range(31, 101))
    again.append([(101, 0, b"new\n")])
    assert [r.seq for r in again.read(again.acked_pos, 1000, 1 << 20)][-2:] == [100, 101]


def test_a_torn_record_is_cut_at_restart(tmp_path):
    s = spool_at(tmp_path / "s")
    s.append([(1, 0, b"one\n"), (2, 0, b"two\n")])
    seg = tmp_path / "s" / f"{s.write_seg:016d}.seg"
    with open(seg, "ab") as f:  # half a record, as a crash mid-write on a full disk leaves it
        f.write(HDR.pack(100, 0, 3, 0) + b"partial")
    again = spool_at(tmp_path / "s")
    assert [r.seq for r in again.read(again.acked_pos, 10, 1 << 20)] == [1, 2]
    assert again.pending == 2
    again.append([(3, 0, b"three\n")])
    assert [r.payload for r in again.read(again.acked_pos, 10, 1 << 20)] == [b"one\n", b"two\n", b"three\n"]


def test_fits_respects_capacity(tmp_path):
    s = spool_at(tmp_path / "s", capacity=64 << 10)
    assert s.fits(60 << 10) and not s.fits(64 << 10)
    s.append([(1, 0, b"x" * (32 << 10))])
    assert s.fits(30 << 10) and not s.fits(32 << 10)
    assert s.bytes == HDR.size + (32 << 10)


@pytest.mark.root
def test_state_files_are_never_followed_or_foreign(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (state / "seq").symlink_to(victim)
    sd = StateDir(str(state))
    with pytest.raises(StateError, match="seq: cannot open"):
        Sequencer(sd)
    sd.close()
    assert victim.read_text() == "untouched\n"
    (state / "seq").unlink()
    (state / "seq").write_text("41\n")
    os.chown(state / "seq", 65534, 65534)
    sd = StateDir(str(state))
    with pytest.raises(StateError, match="owned by uid 65534"):
        Sequencer(sd)
    sd.close()
    link = tmp_path / "link"
    link.symlink_to(state)
    with pytest.raises(StateError, match="symlink"):
        StateDir(str(link))
    os.chmod(state, 0o777)
    with pytest.raises(StateError, match="writable by group or others"):
        StateDir(str(state))


def test_seq_continues_across_restarts_and_one_user_per_state_dir(tmp_path):
    sd = StateDir(str(tmp_path / "st"))
    q = Sequencer(sd)
    assert [q.next() for _ in range(3)] == [1, 2, 3]
    q.persist()
    with pytest.raises(StateError, match="in use by another procsentry"):
        StateDir(str(tmp_path / "st"))
    # no close: a kill -9 after persist() keeps the number
    sd2_fd = os.open(str(tmp_path / "st" / "seq"), os.O_RDONLY)
    assert int(os.read(sd2_fd, 64)) == 3
    os.close(sd2_fd)
    q.close()
    sd.close()
    sd = StateDir(str(tmp_path / "st"))
    assert Sequencer(sd).next() == 4
    assert stat_mode(tmp_path / "st" / "seq") == 0o600 and stat_mode(tmp_path / "st") == 0o700


def stat_mode(p) -> int:
    return os.stat(p).st_mode & 0o777


def test_destination_urls():
    d = parse("relp+tls://collector.example:2514?max_size=512k")
    assert (d.scheme, d.host, d.port, d.max_size, d.network) == ("relp+tls", "collector.example", 2514, 512 << 10, True)
    d = parse("redis://10.0.0.5:6379/procsentry:web1?mode=list")
    assert (d.key, d.mode, d.max_size) == ("procsentry:web1", "list", 512 << 20)
    assert parse("/var/log/x.jsonl").path == parse("file:/var/log/x.jsonl").path == "/var/log/x.jsonl"
    assert parse("file:///var/log/x.jsonl").path == "/var/log/x.jsonl"
    assert parse("-").scheme == "stdout"
    assert parse("relp://a:1").spool_name != parse("relp://a:1?max_size=9k").spool_name
    assert parse_size("256m") == 256 << 20 and parse_size("64KiB") == 64 << 10
    for bad, why in [("relp://host", "port is missing"), ("http://h:1", "unknown scheme"),
                     ("redis://h:6379", "Redis key is missing"), ("redis://h:1/k?mode=set", "mode must be"),
                     ("relp://u:p@h:1", "credentials"), ("relp://h:99999", "out of range"),
                     ("relp://h:1/x", "takes no path"), ("relp://h:1?max_size=0", "positive"),
                     ("relp://h:1?foo=1", "unknown option"), ("relp://h_:1", "not a host name"), ("file:", "needs a path")]:
        with pytest.raises(UsageError, match=why):
            parse(bad)
    with pytest.raises(UsageError, match="given twice"):
        parse_all(["relp://h:1", "relp://h:1"])
    with pytest.raises(UsageError, match="no TLS destination"):
        parse_all(["relp://h:1"], tls_ca="/etc/hostname")
    with pytest.raises(UsageError, match="go together"):
        parse_all(["relp+tls://h:1"], tls_cert="/etc/hostname")


@pytest.mark.parametrize("args, why", [
    (["--output", "relp://nohost"], "port is missing"),
    (["--output", "gopher://h:70"], "unknown scheme"),
    (["--output", "relp+tls://h:1", "--tls-ca", "/nonexistent/ca.pem"], "--tls-ca /nonexistent/ca.pem: not a readable file"),
    (["--spool-size", "12q"], "--spool-size"),
])
def test_bad_output_is_a_one_line_usage_error_before_anything_loads(args, why):
    p = subprocess.run([sys.executable, "-m", "monitor", "watch", *args], capture_output=True, cwd=REPO, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1 and why in lines[0], p.stderr
    assert b"sensor" not in p.stderr  # nothing was loaded


def test_after_catching_up_the_writer_starts_a_new_segment_and_the_reader_follows(tmp_path):
    # The state a stalled benchmark run was found in: cursor at the very end of the write
    # segment, everything acknowledged. The next append must rotate (in the writer, the only
    # thread that rotates) and the reader must continue in the new segment.
    s = spool_at(tmp_path / "s", segment=4096)
    s.append([(i, 0, b"x" * 1000) for i in range(1, 4)])
    got = s.read(s.acked_pos, 100, 1 << 20)
    s.ack(got[-1].end, 3)
    assert s.pending == 0 and s.acked_pos == (s.write_seg, s.sizes[s.write_seg])
    old = s.write_seg
    s.append([(4, 0, b"y" * 10)])
    assert s.write_seg == old + 1
    assert not (tmp_path / "s" / f"{old:016d}.seg").exists()  # its space came back
    assert [r.seq for r in s.read(s.acked_pos, 100, 1 << 20)] == [4]
