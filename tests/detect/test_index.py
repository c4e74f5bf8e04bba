"""The detector's indexes (executable basename, command-line literals) only decide which rules
are evaluated, never what matches: for every rule and event of the semantics table, plus cases
written against the literal index, the indexed detector alerts exactly where evaluating every
rule on every event does, and it evaluates fewer rules."""
from __future__ import annotations

import pytest

from monitor.detect.compile import _unwrapped, any_substring
from monitor.detect.engine import Detector
from monitor.detect.fields import View
from monitor.detect.loader import load
from tests.detect.test_sigma_semantics import CASES, PROCESS_CREATION, ev, rule_yaml

# Cases for the command-line literal index: every condition shape it reasons about.
LITERAL_CASES = [
    ("all_of_contains", "sel:\n    CommandLine|contains|all: ['-nc', ' -e ']\n  condition: sel",
     [["ncat", "-nc", "-e", "/bin/sh"], ["nc -nc", "x -e y"], ["nc", "-nc"], ["echo", " -e "]]),
    ("or_with_a_regex_is_not_indexed", "a: {CommandLine|contains: zzq}\n  b: {CommandLine|re: 'ab+c'}\n  condition: a or b",
     [["x", "abbbc"], ["zzq"], ["abd"]]),
    ("not_is_not_a_literal", "a: {CommandLine|contains: chmod}\n  b: {CommandLine|contains: '+x'}\n  condition: a and not b",
     [["chmod", "600", "f"], ["chmod", "+x", "f"], ["ls"]]),
    ("windash_expansion", "sel: {CommandLine|windash|contains: ' -force'}\n  condition: sel",
     [["tool", "-force"], ["tool", "/force"], ["tool", "force"]]),
    ("overlapping_literals", "a: {CommandLine|contains: [abc, bcd, b]}\n  condition: a",
     [["xbx"], ["abcd"], ["xyz"]]),
    ("equals_and_wildcards", "sel:\n    CommandLine: 'sh -c *wget*|*sh'\n  condition: sel",
     [["sh", "-c", "wget -q -O- u|sh"], ["sh", "-c", "wget u"], ["SH", "-C", "WGET x|bash"]]),
    ("cased_ascii", "sel: {CommandLine|cased|contains: 'ReAd'}\n  condition: sel",
     [["x", "ReAd"], ["x", "read"]]),
    ("cased_non_ascii_is_not_indexed", "sel: {CommandLine|cased|contains: 'ΑΣ'}\n  condition: sel",
     [["echo", "ΑΣ"], ["echo", "ας"]]),
    ("keywords_are_not_command_line_only", "keywords: ['/dev/shm/']\n  condition: keywords",
     [["x"], ["cat", "/dev/shm/y"]]),
    ("flags_and_numbers", "a: {exe_fileless: true}\n  b: {euid: 0}\n  condition: a or b", [{"exe_fileless": True}, {"euid": 0}, {"euid": 10}, {"exe_fileless": False}]),
    ("regex_by_its_required_strings",
     "sel: {CommandLine|re: '.*-(W|R)( |\")(([0-9a-fA-F]{2}) ){2,20}.*'}\n  condition: sel",
     [["pnscan", "-W", "0a 1b ff "], ["pnscan", "-w", "0a 1b "], ["tool", "-W", "zz"], ["ls", "-R"]]),
    ("regex_ignorecase_leaves_out_i_and_s", "sel: {CommandLine|re|i: 'kiss me'}\n  condition: sel",
     [["x", "KıſS ME"], ["x", "kiss me"], ["kiss", "you"]]),
    ("startswith_and_endswith", "a: {CommandLine|startswith: 'python3 -c'}\n  b: {CommandLine|endswith: 'pty.spawn(\"/bin/sh\")'}\n  condition: a or b",
     [["python3", "-c", "x"], ["perl", "-e", 'pty.spawn("/bin/sh")'], ["python3"]]),
]


def _events() -> list[dict]:
    out, pid = [], 2000
    for _, _, _, table in CASES:
        for fields, _ in table:
            pid += 1
            e = ev(pid=pid, exec_id=f"b:5:{pid}")
            e.update(fields)
            out.append(e)
    for _, _, variants in LITERAL_CASES:
        for v in variants:  # an argv, or the fields that differ from ev()'s
            pid += 1
            fields = v if isinstance(v, dict) else {"argv": v, "exe": "/usr/bin/" + v[0].split()[0].lower()}
            out.append(ev(pid=pid, exec_id=f"b:5:{pid}", **fields))
    return out


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    d = tmp_path_factory.mktemp("index-rules")
    for case, det, ls, _ in CASES:
        (d / f"{case}.yml").write_text(rule_yaml(case, det, ls))
    for case, det, _ in LITERAL_CASES:
        (d / f"{case}.yml").write_text(rule_yaml(case, det, PROCESS_CREATION))
    loaded, skipped = load([str(d)])
    assert skipped == []
    return loaded


def test_indexed_alerts_equal_evaluating_every_rule(rules):
    events = _events()
    # the parent argvs a replay remembers (fields.parent_argv), as the engine keeps them
    seen = {(e["exec_id"], e.get("image_id")): tuple(e["argv"]) for e in events
            if e.get("argv") and len(" ".join(e["argv"])) > 256}
    brute = {(r.info.id, e["pid"]) for e in events for r in rules if r.match(View(e, long_argvs=seen))}
    det = Detector(rules, [])
    indexed = {(a.rule.id, a.pid) for e in events for a in det.observe(e)}
    assert indexed == brute
    assert det.rule_evaluations < len(rules) * len(events)


def test_literal_index_shapes(rules):
    by_title = {r.info.title.removeprefix("test "): r for r in rules}

    def cmd(*lits):
        return {("CommandLine", lit) for lit in lits}
    assert by_title["all_of_contains"].literals in (cmd("-nc"), cmd(" -e "))
    assert by_title["or_with_a_regex_is_not_indexed"].literals is None
    assert by_title["not_is_not_a_literal"].literals == cmd("chmod")
    assert by_title["windash_expansion"].literals == cmd(" -force", " /force", " –force", " —force", " ―force")
    assert by_title["overlapping_literals"].literals == cmd("abc", "bcd", "b")
    assert by_title["cased_ascii"].literals == cmd("read")
    assert by_title["cased_non_ascii_is_not_indexed"].literals is None
    # a keyword is a substring of CommandLine, Image or CurrentDirectory
    assert by_title["keywords_are_not_command_line_only"].literals == {
        ("CommandLine", "/dev/shm/"), ("Image", "/dev/shm/"), ("CurrentDirectory", "/dev/shm/")}
    assert by_title["equals_and_wildcards"].literals == cmd("sh -c ")  # the longest plain part
    assert by_title["flags_and_numbers"].literals == {("exe_fileless", "true"), ("euid", "0")}
    assert by_title["regex_by_its_required_strings"].literals == cmd("-w ", '-w"', "-r ", '-r"')
    # `i` and `s` also match ı and ſ under IGNORECASE, whose lower case is not ASCII
    assert by_title["regex_ignorecase_leaves_out_i_and_s"].literals == cmd(" me")


@pytest.mark.parametrize("text,found", [
    ("xxabcxx", True), ("xxabxx", False), ("bcd", True), ("ab", False), ("", False), ("a\nbc", False),
    ("zzz-e zz", True), ("-", False)])
def test_any_substring_finds_any_literal_including_prefixes_of_others(text, found):
    search = any_substring(["abc", "abcdef", "bcd", "-e ", "-e"])
    assert (search(text) is not None) is found


@pytest.mark.parametrize("rx,plain", [
    (".*(-(W|R)( |\")x).*", "(-(W|R)( |\")x)"), (".*.*x.*.*", "x"), ("a.*b", "a.*b"),
    (".*?x", ".*?x"), (".*{2}x", ".*{2}x"), ("x\\.*", "x\\.*"), ("x\\\\.*", "x\\\\")])
def test_a_regex_loses_only_a_wrapping_dot_star(rx, plain):
    """A leading or trailing `.*` changes nothing for re.search's yes/no, and costs a retry
    per start position; an escaped dot or a quantified `.*` is kept."""
    assert _unwrapped(rx) == plain
