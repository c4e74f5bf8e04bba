"""Bytes become text at one place: JSON stays valid and lossless, text stays terminal-safe."""
from __future__ import annotations

import base64
import json
import os

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.events import ExitEvent, ProcessEvent
from monitor.output import Sink, to_json, to_text
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
    sink = Sink("json", path="/dev/full")
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
