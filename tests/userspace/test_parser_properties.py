"""Layer 1, Hypothesis: every parser raises only ParseError on arbitrary bytes, and the
round-trip properties of STYLE 2.3."""
from __future__ import annotations

from dataclasses import replace

import re
import socket
import time
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from userspace import parsers as P
from userspace import process
from userspace.procfs import ParseError
from userspace.sockets import parse_net_inet, parse_net_unix

PARSERS: dict[str, Callable[[bytes], object]] = {
    "parse_stat": P.parse_stat,
    "parse_status": P.parse_status,
    "parse_cmdline": P.parse_cmdline,
    "parse_environ": P.parse_environ,
    "parse_ns_link": P.parse_ns_link,
    "parse_fd_target": P.parse_fd_target,
    "parse_cgroup": P.parse_cgroup,
    "cgroup_of (memoized)": process._cgroup_of,
    "container_id_from_cgroup": lambda b: P.container_id_from_cgroup([b]),
    "parse_maps": P.parse_maps,
    "parse_mountinfo": P.parse_mountinfo,
    "parse_cgroup2_mounts": P.parse_cgroup2_mounts,
    "unescape_mount_path": P.unescape_mount_path,
    "parse_loginuid": P.parse_loginuid,
    "parse_comm": P.parse_comm,
    "parse_net_tcp": lambda b: parse_net_inet(b, socket.AF_INET, "tcp"),
    "parse_net_tcp6": lambda b: parse_net_inet(b, socket.AF_INET6, "tcp"),
    "parse_net_unix": parse_net_unix,
}

# Arbitrary bytes, plus bytes built from the alphabet procfs files use, so that Hypothesis gets
# past the first check of each parser and into the field conversions.
_ALPHABET = b"0123456789abcdefABCDEF:()[]-/ \t\n\0kBxX=.,"
procish = st.one_of(
    st.binary(max_size=512),
    st.lists(st.sampled_from([bytes([c]) for c in _ALPHABET]), max_size=300).map(b"".join),
)


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=300, deadline=None)
@given(data=procish)
def test_only_parse_error_escapes(name: str, data: bytes) -> None:
    try:
        PARSERS[name](data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(data=procish, cut=st.integers(min_value=0, max_value=600))
def test_status_prefixes(data: bytes, cut: int) -> None:
    """A status truncated anywhere either parses or is a ParseError."""
    try:
        P.parse_status(data[:cut])
    except ParseError:
        pass


@given(argv=st.lists(st.binary(min_size=1).filter(lambda b: b"\0" not in b), min_size=1, max_size=20))
def test_cmdline_roundtrip(argv: list[bytes]) -> None:
    assert P.parse_cmdline(b"\0".join(argv) + b"\0") == tuple(argv)


@given(argv=st.lists(st.binary().map(lambda b: b.replace(b"\0", b"")), min_size=1, max_size=20))
def test_cmdline_roundtrip_with_empty_arguments(argv: list[bytes]) -> None:
    # Empty arguments survive too (falco's sched_proc_exec test execs argv with "" in it).
    assert P.parse_cmdline(b"\0".join(argv) + b"\0") == tuple(argv)


def render_stat(s: P.Stat) -> bytes:
    """Inverse of parse_stat: a line with the parsed fields in their proc(5) slots, 52 fields
    long (today's kernels), 44 (before 3.5: no arg_start) or 25 (no start_code either)."""
    length = 52 if s.arg_start is not None else 44 if s.start_code is not None else 25
    fields = ["0"] * length
    for num, value in (
        (1, s.pid), (4, s.ppid), (5, s.pgrp), (6, s.session), (7, s.tty_nr), (9, s.flags),
        (14, s.utime), (15, s.stime), (20, s.num_threads), (22, s.starttime), (23, s.vsize), (24, s.rss),
        (26, s.start_code), (27, s.end_code), (28, s.start_stack), (48, s.arg_start), (49, s.arg_end),
    ):
        if num <= length:
            fields[num - 1] = str(value)
    fields[2] = s.state
    head = fields[0].encode() + b" (" + s.comm + b") "
    return head + " ".join(fields[2:]).encode() + b"\n"


u64 = st.integers(min_value=0, max_value=2**64 - 1)
i32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
stats = st.builds(
    P.Stat,
    pid=st.integers(min_value=1, max_value=2**22),
    comm=st.binary(max_size=15).filter(lambda b: b"\0" not in b),
    state=st.sampled_from("RSDZTtXIPKW"),
    ppid=st.integers(min_value=0, max_value=2**22),
    pgrp=i32,
    session=i32,
    tty_nr=i32,
    flags=st.integers(min_value=0, max_value=2**32 - 1),
    utime=u64,
    stime=u64,
    num_threads=st.integers(min_value=1, max_value=2**22),
    starttime=u64,
    vsize=u64,
    rss=st.integers(min_value=-(2**63), max_value=2**63 - 1),
).flatmap(lambda s: st.one_of(
    st.just(s),  # a stat cut before field 26
    st.tuples(u64, u64, u64).map(lambda t: replace(s, start_code=t[0], end_code=t[1], start_stack=t[2])),
    st.tuples(u64, u64, u64, u64, u64).map(lambda t: replace(
        s, start_code=t[0], end_code=t[1], start_stack=t[2], arg_start=t[3], arg_end=t[4])),
))


@settings(max_examples=500)
@given(s=stats)
def test_stat_roundtrip(s: P.Stat) -> None:
    assert P.parse_stat(render_stat(s)) == s


@given(inode=st.integers(min_value=0, max_value=2**64 - 1), name=st.sampled_from(["net", "pid", "mnt", "pid_for_children"]))
def test_ns_link_roundtrip(inode: int, name: str) -> None:
    assert P.parse_ns_link(f"{name}:[{inode}]".encode()) == inode


@given(path=st.binary(min_size=1).filter(lambda b: b"\0" not in b).map(lambda b: b"/" + b))
def test_fd_target_deleted_roundtrip(path: bytes) -> None:
    t = P.parse_fd_target(path + b" (deleted)")
    assert t.deleted and t.target == path and t.kind in ("file", "memfd")


@settings(max_examples=300, deadline=None)
@given(data=procish)
def test_the_memoized_cgroup_answer_is_the_parsed_one(data: bytes) -> None:
    """process._cgroup_of caches per file content: asked twice, it answers what parsing says,
    and a content that does not parse raises every time (errors are not cached)."""
    try:
        cg = P.parse_cgroup(data)
    except ParseError:
        for _ in range(2):
            with pytest.raises(ParseError):
                process._cgroup_of(data)
        return
    want = (P.primary_cgroup_path(cg), P.container_id_from_cgroup(e.path for e in cg))
    assert process._cgroup_of(data) == want
    assert process._cgroup_of(data) == want


# The one-regex form has_url_with_password replaced: the same answers, found linearly.
_URL_WITH_PASSWORD_REGEX = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:[^/@\s]+@")


@settings(max_examples=2000)
@given(st.binary(max_size=40).map(lambda b: bytes(b"a1:/@ .+-x\t"[c % 11] for c in b)))
def test_a_url_with_a_password_is_found_as_the_regex_finds_it(value):
    assert P.has_url_with_password(value) == (_URL_WITH_PASSWORD_REGEX.search(value) is not None)


def test_a_long_environment_value_is_redacted_in_one_pass():
    """A never-hang check, not a speed target: the regex search was quadratic (0.64 s for
    32,000 letters); 2 MB of scheme characters must not take minutes."""
    hostile = b"a" * 2_000_000
    t0 = time.monotonic()
    assert P.parse_environ(b"X=" + hostile + b"\0Y=" + hostile + b"://u:p@h\0") == (
        (b"X", hostile), (b"Y", P.REDACTED))
    assert time.monotonic() - t0 < 10
