"""Decoding sensor records without a kernel: golden dumps recorded on a real kernel, and
round-trip properties."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.sensors.bpf import wire
from monitor.sensors.bpf.source import PIPEFS_MAGIC, stdio_kind

DUMPS = sorted((Path(__file__).resolve().parents[1] / "data" / "events").glob("*.dump"))


def load_dump(path: Path) -> tuple[bytes, dict]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return bytes.fromhex(lines[0]), json.loads("\n".join(lines[1:]))


def as_json(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, tuple):
        return [as_json(v) for v in value]
    return value


def test_there_are_golden_dumps_of_every_record_type():
    names = {p.name.split("-")[0] for p in DUMPS}
    assert names == {"exec", "fork", "exit"}


@pytest.mark.parametrize("path", DUMPS, ids=[p.stem for p in DUMPS])
def test_golden_dump_decodes_to_the_recorded_values(path):
    data, expected = load_dump(path)
    r = wire.decode(data)
    assert {k: as_json(v) for k, v in r._asdict().items()} == expected


def test_hostile_argv_dump_keeps_every_byte():
    data, _ = load_dump(next(p for p in DUMPS if p.name == "exec-hostile-argv.dump"))
    r = wire.decode(data)
    assert r.argv == (b"/bin/echo", b"caf\xc3\xa9", b"\xff raw", b"", b"new\nline")
    assert r.cwd == b"/tmp/golden-cwd"
    assert r.exe == b"/usr/bin/echo"


def test_records_inside_a_pid_namespace_carry_the_in_namespace_pid():
    # recorded from `unshare --pid --fork --mount-proc /bin/echo in-pidns`: the child is the
    # first process of a new pid namespace, so getpid() says 1 there, at depth 1
    by_kind = {p.name.split("-")[0]: wire.decode(load_dump(p)[0]) for p in DUMPS if "in-pidns" in p.name}
    assert set(by_kind) == {"exec", "fork", "exit"}
    host_pids = {r.tgid for r in by_kind.values()}
    assert len(host_pids) == 1 and host_pids != {1}
    for r in by_kind.values():
        assert (r.vpid, r.pid_level) == (1, 1)
    host = wire.decode(load_dump(next(p for p in DUMPS if p.name == "exec-hostile-argv.dump"))[0])
    assert (host.vpid, host.pid_level) == (host.tgid, 0)
    assert by_kind["exec"].ns[0] != host.ns[0]  # pid namespace inode


def test_exec_dump_carries_the_image_layout():
    # the mm fields of a real PIE image (x86-64, ASLR on): code below the stack, the argument
    # area inside the stack above the initial stack pointer, argv_size bytes long
    for p in (p for p in DUMPS if p.name.startswith("exec-")):
        r = wire.decode(load_dump(p)[0])
        assert 0 < r.start_code < r.end_code < r.start_stack < r.arg_start
        assert r.arg_start + r.argv_size <= 1 << 47  # x86-64 user space ends at 128 TiB


def test_fork_dump_carries_the_forking_image_and_exec_replaces_it():
    fork, exec_ = (wire.decode(load_dump(next(p for p in DUMPS if p.name == f"{k}-in-pidns.dump"))[0])
                   for k in ("fork", "exec"))
    assert fork.tgid == exec_.tgid
    assert fork.arg_start and fork.end_code  # unshare's image, inherited by the child
    assert exec_.arg_start != fork.arg_start and exec_.end_code != fork.end_code  # echo's own


def test_exec_dump_carries_stdio_and_capabilities():
    # recorded by tests/data/events/record.py: /bin/echo run as root with stdin a pipe, stdout a
    # regular file and stderr a TCP connection to a 127.0.0.1 listener
    r = wire.decode(load_dump(next(p for p in DUMPS if p.name == "exec-hostile-argv.dump"))[0])
    kinds = [stdio_kind(i, s) for i, s in enumerate(r.stdio)]
    assert [(k.fd, k.kind, k.family, k.type, k.protocol) for k in kinds] == [
        (0, "pipe", None, None, None), (1, "file", None, None, None),
        (2, "socket", "inet", "stream", "tcp")]
    assert all(s.state == wire.STDIO_OPEN and s.ino > 0 for s in r.stdio)
    assert r.stdio[0].mode & 0o170000 == 0o010000 and r.stdio[0].sb_magic == PIPEFS_MAGIC
    assert r.stdio[2].mode & 0o170000 == 0o140000
    # root (in this sandbox, which withholds CAP_MAC_OVERRIDE): the same bounding set in both
    assert r.cap_effective == r.cap_permitted == 0x1FFFEFFFFFF
    assert (r.suid, r.fsuid) == (0, 0)


@pytest.mark.parametrize("cut", [0, 10, 39, 40, 191, 200, 311])
def test_truncated_records_raise_decode_error(cut):
    data, _ = load_dump(next(p for p in DUMPS if p.name == "exec-hostile-argv.dump"))
    with pytest.raises(wire.DecodeError):
        wire.decode(data[:cut])


def test_unknown_type_and_version_are_rejected():
    data, _ = load_dump(next(p for p in DUMPS if p.name.startswith("fork")))
    with pytest.raises(wire.DecodeError, match="unknown record type"):
        wire.decode(b"\x09" + data[1:])
    with pytest.raises(wire.DecodeError, match="wire version"):
        wire.decode(data[:1] + b"\x07" + data[2:])


def test_decode_path():
    assert wire.decode_path(b"") == b"/"
    assert wire.decode_path(b"true\0bin\0usr\0") == b"/usr/bin/true"
    assert wire.decode_path(b"memfd:x\0") == b"/memfd:x"


def test_decode_argv_keeps_empty_and_partial_elements():
    assert wire.decode_argv(b"") == ()
    assert wire.decode_argv(b"\0") == (b"",)
    assert wire.decode_argv(b"a\0\0b\0") == (b"a", b"", b"b")
    assert wire.decode_argv(b"a\0trunc") == (b"a", b"trunc")


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
u16 = st.integers(0, 2**16 - 1)
name = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b)
path = st.lists(name, max_size=6).map(lambda parts: b"/" + b"/".join(parts))
arg = st.binary(max_size=50).filter(lambda b: b"\0" not in b)

raw_exec = st.builds(
    wire.RawExec, u64, u32, u32, u64, u32, st.integers(0, 0x3FF).map(lambda f: f & ~(wire.EXE_ERROR | wire.CWD_ERROR)),
    u32, u32, u64, u64, u32, u32, u32, u32, u32, u32, st.tuples(*[u32] * 7), u32,
    st.binary(max_size=15).filter(lambda b: b"\0" not in b),
    st.binary(max_size=60).filter(lambda b: b"\0" not in b),
    st.none() | st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b),
    path, path, st.lists(arg, min_size=1, max_size=8).map(tuple),
    u32, u32, u64, u64, u64, u64,  # vpid pid_level start_code end_code start_stack arg_start
    u32, u32, u64, u64,  # suid fsuid cap_effective cap_permitted
    st.tuples(*[st.builds(wire.RawStdio, st.integers(0, 2), u16, u64, u64, u32, u16, u16, u16)] * 3))
raw_fork = st.builds(wire.RawFork, u64, u32, u32, u64, u32, u32, u64, u32, u32, u64, u64)
raw_exit = st.builds(wire.RawExit, u64, u32, u32, u64, u32, u64,
                     st.binary(max_size=16).filter(lambda b: b"\0" not in b), u32, u32)


@given(st.one_of(raw_exec, raw_fork, raw_exit))
def test_decode_inverts_encode(raw):
    assert wire.decode(wire.encode(raw)) == raw


@given(st.binary(max_size=400))
def test_decode_raises_only_decode_error(data):
    try:
        wire.decode(data)
    except wire.DecodeError:
        pass
