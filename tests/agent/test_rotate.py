"""Bounded events files: size rotation (--max-size, --max-backups) and reopening on SIGHUP."""
from __future__ import annotations

import json
import os
import signal
import stat
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from monitor.output import OutputRefused
from monitor.rotate import RotatingFile, Rotation, parse_size, request_reopen
from tests.support.wait import until

TRUE = os.path.realpath("/bin/true")
SLEEP = os.path.realpath("/bin/sleep")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def chain(path: Path) -> list[Path]:
    """FILE.N .. FILE.1, FILE: oldest first."""
    backups = sorted(path.parent.glob(path.name + ".*"), key=lambda p: int(p.suffix[1:]), reverse=True)
    return backups + [path]


# -- the module on real files ------------------------------------------------------------------
def test_parse_size():
    assert [parse_size(s) for s in ("4096", "4k", "4K", "64kb", "100m", "1g", "2MiB")] == \
        [4096, 4096, 4096, 65536, 100 << 20, 1 << 30, 2 << 20]
    for bad in ("", "0", "-1", "4x", "1.5m", "k"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_rotation_cuts_between_lines_at_the_limit(tmp_path):
    path = tmp_path / "ev.jsonl"
    f = RotatingFile(str(path), Rotation(max_size=100, max_backups=3))
    lines = [b"%02d" % i + b"x" * 37 + b"\n" for i in range(12)]  # 40 bytes each
    f.write(b"".join(lines[:3]))  # 120 bytes would cross 100: two in the file, then a rotation
    f.write(b"".join(lines[3:5]))
    f.write(b"y" * 150 + b"\n")  # larger than the limit by itself: a file of its own
    f.write(b"".join(lines[5:12]))
    f.close()
    files = chain(path)
    assert [p.name for p in files] == ["ev.jsonl.3", "ev.jsonl.2", "ev.jsonl.1", "ev.jsonl"]
    contents = [p.read_bytes() for p in files]
    # [0,1] [2,3] [4] [big] [5,6] [7,8] [9,10] [11]: each cut where the next line would cross
    # 100 bytes; the oldest fell off (max_backups 3)
    assert contents == [lines[5] + lines[6], lines[7] + lines[8], lines[9] + lines[10], lines[11]]
    assert all(mode(p) == 0o600 for p in files)
    assert f.rotations == 7


def test_rotation_never_follows_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    path = tmp_path / "ev.jsonl"
    (tmp_path / "ev.jsonl.1").symlink_to(victim)
    (tmp_path / "ev.jsonl.2").symlink_to(victim)
    f = RotatingFile(str(path), Rotation(max_size=10, max_backups=2))
    for i in range(5):
        f.write(b"".join([b"%d-abcdefg\n" % i]))
    f.close()
    assert victim.read_bytes() == b"precious\n"
    assert [p.read_bytes() for p in chain(path)] == [b"2-abcdefg\n", b"3-abcdefg\n", b"4-abcdefg\n"]
    assert all(not p.is_symlink() and mode(p) == 0o600 for p in chain(path))


def test_a_symlink_at_the_path_is_refused_at_reopen(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    path = tmp_path / "ev.jsonl"
    f = RotatingFile(str(path), None)
    f.write(b"".join([b"one\n"]))
    path.rename(tmp_path / "moved")
    path.symlink_to(victim)
    request_reopen()
    f.write(b"two\n")  # refused: said once on stderr, written on into the old file
    f.close()
    assert victim.read_bytes() == b""
    assert (tmp_path / "moved").read_bytes() == b"one\ntwo\n"
    with pytest.raises(OutputRefused, match="symbolic link"):
        RotatingFile(str(path), None)


def test_max_backups_zero_starts_over(tmp_path):
    path = tmp_path / "ev.jsonl"
    f = RotatingFile(str(path), Rotation(max_size=8, max_backups=0))
    f.write(b"".join([b"aaaa\n", b"bbbb\n", b"cccc\n"]))
    f.close()
    assert chain(path) == [path] and path.read_bytes() == b"cccc\n"


# -- watch under a storm -----------------------------------------------------------------------
def read_events(path: Path) -> tuple[list[dict], list[tuple[Path, int, int]]]:
    events, files = [], []
    for p in chain(path):
        data = p.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"{p} ends inside an event"
        lines = data.splitlines()
        events += [json.loads(line) for line in lines]  # a split event would not parse
        files.append((p, len(data), max((len(x) + 1 for x in lines), default=0)))
    return events, files


@pytest.mark.bpf
def test_storm_rotates_without_losing_or_splitting_an_event(watch, progs, tmp_path):
    limit = 4096
    path = tmp_path / "ev.jsonl"
    # The storm runs as nobody and only nobody's processes are written (a shared host runs
    # thousands of other processes a second); every rotated file is kept, to count every event.
    bindir = Path(tempfile.mkdtemp(prefix="procsentry-storm-"))
    try:
        bindir.chmod(0o755)
        shutil.copy(progs / "fork_storm", bindir / "fork_storm")
        (bindir / "fork_storm").chmod(0o755)
        # (no detection: the storm runs from /tmp, which the built-in pack would rightly flag,
        # and this test counts every line of the stream)
        w = watch("--output", str(path), "--max-size", "4k", "--max-backups", "100000",
                  "--sweep-interval", "0", "--uid", "65534", "--no-builtin-rules")
        w.sensor_line()
        until(lambda: path.exists() and path.stat().st_size > 0, 60, "the start event in the file")
        storm = subprocess.run([str(bindir / "fork_storm"), "300", TRUE], capture_output=True,
                               check=True, timeout=120, user=65534, group=65534)
    finally:
        shutil.rmtree(bindir)
    pids = {int(x) for x in storm.stdout.split()}
    assert len(pids) == 300

    def exits() -> int:
        try:  # the files move while it runs: a read that races a rotation is simply retried
            evs = read_events(path)[0]
        except (OSError, ValueError):
            return 0
        return sum(1 for e in evs if e.get("pid") in pids and e["event"] == "exit")

    until(lambda: exits() >= 300, 60, "the storm's 300 exits in the files", exits)
    assert w.stop() == 0
    events, files = read_events(path)
    assert len(files) > 20, f"only {len(files)} files for a 4 KiB limit"
    for p, size, longest in files:
        # never past the limit, but for a single event larger than the limit by itself
        assert size <= limit or size == longest, (p, size)
        assert mode(p) == 0o600, p
    # nothing lost, nothing twice: each child of the storm forked, exec'd and exited once
    per = Counter((e["pid"], e["event"]) for e in events if e.get("pid") in pids)
    assert {k: v for k, v in per.items() if v != 1} == {}
    assert {e for (_, e) in per} == {"fork", "exec", "exit"}
    assert sum(1 for (_, e) in per if e == "exec") == 300
    execs = [e for e in events if e["event"] == "exec" and e["pid"] in pids]
    assert sorted(e["argv"][1] for e in execs) == sorted(f"tok-{i}" for i in range(300))
    assert len({e["exec_id"] for e in execs}) == 300
    # and the whole stream: the start event, the storm's children, the storm itself (its exec
    # and exit as nobody), the final stats; nothing else and nothing missing
    assert events[0]["event"] == "start"
    final = events[-1]
    assert final["event"] == "stats" and final["dropped_writes"] == 0 and final["lost"] == 0
    rest = [(e["event"], e["comm"]) for e in events[1:-1] if e["pid"] not in pids]
    assert sorted(rest) == [("exec", "fork_storm"), ("exit", "fork_storm")]
    assert len(events) == 1 + 900 + 2 + 1


@pytest.mark.bpf
def test_sighup_reopens_after_an_external_rename(watch, tmp_path):
    path = tmp_path / "ev.jsonl"
    moved = tmp_path / "ev.jsonl.logrotate"
    w = watch("--output", str(path), "--sweep-interval", "0")
    w.sensor_line()
    until(lambda: path.exists() and path.stat().st_size > 0, 60, "the start-up sweep in the file")
    path.rename(moved)  # what logrotate does (without copytruncate)
    before = subprocess.run([SLEEP, "0.011"], check=True)
    assert before.returncode == 0
    until(lambda: b'"0.011"' in moved.read_bytes(), 30, "the exec before SIGHUP in the renamed file")
    assert not path.exists()
    w.proc.send_signal(signal.SIGHUP)
    until(lambda: path.exists() or w.proc.poll() is not None, 30, "a new file after SIGHUP")  # reopened
    subprocess.run([SLEEP, "0.012"], check=True)
    until(lambda: path.exists() and b'"0.012"' in path.read_bytes(), 30, "the exec after SIGHUP in the new file")
    assert w.stop() == 0
    assert mode(path) == 0o600 and mode(moved) == 0o600
    assert b'"0.012"' not in moved.read_bytes()
    old, _ = read_events(moved)
    new = [json.loads(x) for x in path.read_bytes().splitlines()]
    final = new[-1]
    assert final["event"] == "stats"
    assert len(old) + len(new) == sum(final["events"].values()) + 1  # none lost in the switch
