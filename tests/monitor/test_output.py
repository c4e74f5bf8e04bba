"""Bytes become text at one place: JSON stays valid and lossless, text stays terminal-safe."""
from __future__ import annotations

import base64
import json
import os
import stat

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.events import ExitEvent, ProcessEvent
from monitor.output import OutputRefused, Sink, to_json, to_text
from monitor.text import argv_raw, safe, text, texts


def event(**kw) -> ProcessEvent:
    base = dict(event="exec", time="2026-11-26T05:00:00.000000001Z", source="bpf", pid=42, ppid=1,
                exec_id="b:1:42", parent_exec_id="b:0:1", uid=0, euid=0, gid=0, egid=0, user="root",
                comm="sh", exe="/bin/sh", argv=("sh",), argv_truncated=False, cwd="/",
                start_time=1, container_id=None, ns=None, enrichment="gone")
    base.update(kw)
    return ProcessEvent(**base)


@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\0" not in b), min_size=1, max_size=5))
def test_any_argv_gives_one_valid_json_line_and_argv_raw_restores_it(argv):
    argv = tuple(argv)
    line = to_json(event(argv=texts(argv), argv_raw=argv_raw(argv)))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    d = json.loads(line)
    if d["argv_raw"] is None:
        assert [a.encode() for a in d["argv"]] == list(argv)
    else:
        assert base64.b64decode(d["argv_raw"]).split(b"\0") == list(argv)


def test_valid_utf8_escapes_and_newlines_are_kept_exactly():
    argv = (b"\x1b[31mred", b"a\nb", "caf\u00e9".encode())
    d = json.loads(to_json(event(argv=texts(argv), argv_raw=argv_raw(argv))))
    assert d["argv"] == ["\x1b[31mred", "a\nb", "caf\u00e9"] and d["argv_raw"] is None


def test_bytes_that_reach_the_encoder_are_still_decoded_by_the_policy():
    d = json.loads(to_json(event(comm=b"raw\xff")))
    assert d["comm"] == "raw\\xff"


def test_invalid_utf8_is_backslash_escaped_never_surrogates():
    d = json.loads(to_json(event(comm=text(b"\xff\xfe"))))
    assert d["comm"] == "\\xff\\xfe"
    with pytest.raises(TypeError):
        orjson.dumps("\udcff")  # why surrogateescape must never reach orjson


def test_text_format_has_no_control_characters():
    line = to_text(event(argv=texts((b"\x1b[2Jclear", "\u009bcsi".encode(), b"tab\there"))))
    assert not any(c < 0x20 for c in line[:-1]) and b"\x1b" not in line
    assert b"\\x1b[2Jclear" in line and b"\\u009bcsi" in line and b"tab\\there" in line
    assert safe(None) == "-"


def test_exit_text_line():
    ev = ExitEvent(**dict(
        event="exit", time="2026-11-26T05:00:00.500000000Z", source="bpf", pid=42, ppid=1,
        exec_id="b:1:42", parent_exec_id=None, uid=0, euid=0, gid=0, egid=0, user="root",
        comm="sh", exe="/bin/sh", argv=("sh",), argv_truncated=False, cwd="/", start_time=1,
        container_id=None, ns=None, enrichment="full", signal=9, duration_ns=1_500_000_000))
    assert b"signal=9 after 1.500s" in to_text(ev)


def test_full_disk_writes_are_counted_not_raised():
    with open("/dev/full", "wb") as full:  # a stream: --output refuses devices
        sink = Sink("json", stream=full)
        sink.write(event())
        sink.write(event())
        sink.flush()
        assert sink.dropped_writes == 2
        sink.close()


def test_output_file_is_created_0600_and_appended(tmp_path):
    path = tmp_path / "out.jsonl"
    for _ in range(2):
        sink = Sink("auto", path=str(path))
        assert sink.format == "json"
        sink.write(event())
        sink.close()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert len(path.read_bytes().splitlines()) == 2


def test_closed_pipe_raises_broken_pipe(tmp_path):
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "wb") as stream:
        sink = Sink("json", stream=stream)
        sink.write(event())
        with pytest.raises(BrokenPipeError):
            sink.flush()


# --- --output as a root daemon opens it (issue 11, defect 1) ------------------------------------

def refused(path) -> str:
    """Sink(path=...) refuses to open path: the reason it gives."""
    with pytest.raises(OutputRefused) as e:
        Sink("json", path=str(path))
    return str(e.value)


def test_output_symlink_is_refused_and_its_target_left_alone(tmp_path):
    target = tmp_path / "passwd-copy"
    target.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    assert refused(link) == f"{link} is a symbolic link; give the file itself"
    assert target.read_bytes() == b"root:x:0:0:root:/root:/bin/bash\n"


def test_output_dangling_symlink_is_refused_and_nothing_created(tmp_path):
    link = tmp_path / "events.jsonl"
    link.symlink_to(tmp_path / "planted")
    assert refused(link) == f"{link} is a symbolic link; give the file itself"
    assert not (tmp_path / "planted").exists()


def test_output_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    assert refused(fifo) == f"{fifo} is not a regular file"
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # with a reader the open succeeds: fstat refuses
    try:
        assert refused(fifo) == f"{fifo} is not a regular file"
    finally:
        os.close(r)


def test_output_directory_and_device_are_refused(tmp_path):
    assert refused("/dev/null") == "/dev/null is not a regular file"
    assert refused(tmp_path) == f"cannot open {tmp_path}: Is a directory"


@pytest.mark.root
def test_output_owned_by_another_user_is_refused(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"theirs\n")
    os.chmod(path, 0o600)
    os.chown(path, 65534, 65534)
    assert refused(path) == f"{path} is owned by uid 65534, not by this user (uid {os.geteuid()})"
    assert path.read_bytes() == b"theirs\n"


def test_output_new_file_is_0600_whatever_the_umask(tmp_path):
    path = tmp_path / "new.jsonl"
    old = os.umask(0)
    try:
        Sink("json", path=str(path)).close()
    finally:
        os.umask(old)
    st = os.stat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


def test_output_readable_by_others_is_used_with_a_warning(tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"before\n")
    os.chmod(path, 0o644)
    sink = Sink("json", path=str(path))
    sink.write(event())
    sink.close()
    assert capsys.readouterr().err == (
        f"procsentry: warning: {path} is readable by group or others (mode 0644); "
        "the events hold every command line on the host\n")
    assert path.read_bytes().startswith(b"before\n{")
    os.chmod(path, 0o600)
    Sink("json", path=str(path)).close()
    assert capsys.readouterr().err == ""


def test_the_pending_buffer_keeps_its_memory_and_loses_no_byte(tmp_path):
    """The sink's buffer is emptied without being freed (flush writes from it in place): every
    line arrives once and in order across flushes, lines longer than the buffer included, and
    its memory stays what the largest flush needed."""
    path = tmp_path / "out.jsonl"
    sink = Sink("json", path=str(path))
    lines = [b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * (i * 37 % 3000)) for i in range(3000)]
    lines.insert(1500, b'{"big":"%s"}\n' % (b"y" * 300_000))  # past the buffer's capacity
    for i, line in enumerate(lines):
        sink.write_encoded(line)
        if i % 700 == 699:
            sink.flush()
            assert sink.pending_bytes == 0
    sink.flush()
    capacity = len(sink._buf)
    for line in lines[:50]:  # a small flush after a large one: the same memory, not a new one
        sink.write_encoded(line)
    sink.flush()
    sink.close()
    assert len(sink._buf) == capacity
    assert path.read_bytes() == b"".join(lines) + b"".join(lines[:50])


def test_output_in_a_directory_others_can_write_is_refused(tmp_path):
    """FILE, FILE.1 .. FILE.N are names in the file's directory: anyone who can write it can
    delete the events file or plant a directory at FILE.1 (before, root shifted it up to FILE.N
    and then every rotation failed on it: FILE grew without bound), sticky bit or not."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    assert refused(shared / "events.jsonl") == (
        f"the directory of {shared}/events.jsonl is writable by group or others (mode 1777); "
        "give a file in a directory only this user can write (e.g. /var/log/procsentry)")
    shared.chmod(0o770)
    assert refused(shared / "events.jsonl").startswith(
        f"the directory of {shared}/events.jsonl is writable by group or others (mode 0770)")
    assert list(shared.iterdir()) == []


@pytest.mark.root
def test_output_in_another_users_directory_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(0o755)
    os.chown(theirs, 65534, 65534)
    assert refused(theirs / "events.jsonl").startswith(
        f"the directory of {theirs}/events.jsonl is owned by uid 65534; ")
    assert list(theirs.iterdir()) == []
