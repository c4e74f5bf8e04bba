"""monitor/detect/linear.py: the same answers as Python's re, in time linear in the command line,
so that a crafted command line cannot stall detection whatever the operator's patterns."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.detect.linear import glob_test, regex_search
from tests.detect.test_rules_cli import GOOD

REPO = Path(__file__).resolve().parents[2]
TEXT = st.text(alphabet="ab -D\n$é", max_size=24)


@given(st.lists(st.one_of(st.none(), st.text(alphabet="ab-", min_size=1, max_size=3)), max_size=6), TEXT)
def test_a_wildcard_value_matches_as_its_regex_does(parts, text):
    rx = "".join(".*" if p is None else re.escape(p) for p in parts)
    assert glob_test(parts)(text) == (re.fullmatch(rx, text, re.DOTALL) is not None)


PATTERNS = [r"\s-D(\s|$)", r"-D$", r"a$", r"^a", r"[$a]b", r"[^$]$", r"a\$", r"(a|b)+\s",
            r"a.*b", r"\s-e\s*0(\s|$)", r"D\n$", r"é.b", r"$"]


@settings(max_examples=300)
@given(st.sampled_from(PATTERNS), st.sampled_from([0, re.IGNORECASE, re.MULTILINE, re.DOTALL]), TEXT)
def test_a_regex_finds_what_python_re_finds(pattern, flags, text):
    assert regex_search(pattern, flags)(text) == (re.search(pattern, text, flags) is not None)


def test_a_final_newline_does_not_slip_past_a_dollar():
    # Python's $ matches before a final newline; RE2's would not without the rewrite
    assert regex_search(r"-D$", 0)("auditctl -D\n")


def test_a_pattern_python_re_would_take_hours_on_is_answered_at_once():
    """`a.*a.*b` is cubic for a backtracking engine: 7.2 s on 4,000 characters here. A
    never-hang check, not a speed target: 200,000 characters must not take minutes."""
    found = regex_search(r"a.*a.*b", 0)
    glob = glob_test(["a", None, "a", None, "b", None])
    text = "a" * 200_000
    t0 = time.monotonic()
    assert not found(text) and not glob(text)
    assert found(text + "b") and glob(text + "bz")
    assert time.monotonic() - t0 < 10


def test_a_rule_python_re_cannot_hand_to_re2_still_works_and_is_named(caplog):
    with caplog.at_level("WARNING", logger="procsentry.detect"):
        found = regex_search(r"(?<=-)D\b", 0)
    assert found("auditctl -D") and not found("auditctl D")
    assert "'(?<=-)D\\\\b' evaluated with Python's backtracking re" in caplog.text


def test_detect_with_a_backtracking_prone_rule_on_a_hostile_command_line(tmp_path):
    rule = GOOD.replace("sel: {Image|endswith: /id}", "wild: {CommandLine: 'a*a*b*'}\n  rx: {CommandLine|re: 'a.*a.*c'}")
    rule = rule.replace("condition: sel", "condition: wild or rx")
    (tmp_path / "r.yml").write_text(rule)
    hostile = {"event": "exec", "time": "2026-12-02T10:00:00.000000000Z", "pid": 7, "exec_id": "b:1:7",
               "exe": "/usr/bin/x", "argv": ["a" * 100_000], "user": "root", "uid": 0}
    matching = dict(hostile, pid=8, exec_id="b:1:8", argv=["a" * 100_000, "c"])
    stream = (json.dumps(hostile) + "\n" + json.dumps(matching) + "\n").encode()
    r = subprocess.run([sys.executable, "-m", "monitor", "detect", "--no-builtin-rules", "--rules",
                        str(tmp_path)], input=stream, capture_output=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["pid"] for line in r.stdout.splitlines()] == [8]


def test_perl_classes_have_pythons_unicode_meaning_on_every_code_point():
    r"""Python's \d, \w, \s are Unicode; RE2's are ASCII, so `\w+\s` handed to RE2 as written
    missed `xmrÄig\v` which re finds. Every code point RE2 can be given (not a surrogate), in
    and out of a class, negated or not: none matches where re does not, none is missed."""
    for letter in "dws":
        member = re.compile(rf"\{letter}").match
        chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
        inside = "".join(c for c in chars if member(c))
        outside = "".join(c for c in chars if not member(c))
        up = letter.upper()
        for p in (rf"\{letter}", rf"[\{letter}]", rf"[^\{up}]", rf"[#\{letter}]"):
            assert not regex_search(p, 0)(outside.replace("#", "")), p
        for p in (rf"\{up}", rf"[\{up}]", rf"[^\{letter}]"):
            assert not regex_search(p, 0)(inside), p
    found = regex_search(r"xmr\w+\s+--url", 0)
    assert found("xmrÄig --url") and found("xmrig\v--url") and found("xmrig\xa0--url")
    assert not found("xmr --url")
