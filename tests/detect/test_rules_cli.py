"""`procsentry rules check`, bad rule paths, and rules that cannot be evaluated: each is
reported once with its id and reason and skipped, never a crash."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

GOOD = """title: good
id: 0b5e0000-0000-4000-8000-000000000001
status: test
author: A
level: low
logsource: {category: process_creation, product: linux}
detection:
  sel: {Image|endswith: /id}
  condition: sel
"""
NETWORK = GOOD.replace("000000000001", "000000000002").replace("category: process_creation", "category: network_connection")
WINDOWS = GOOD.replace("000000000001", "000000000003").replace("product: linux", "product: windows")
PLACEHOLDER = GOOD.replace("000000000001", "000000000004").replace("Image|endswith: /id", "User|expand: '%admins%'")
BAD_CONDITION = GOOD.replace("000000000001", "000000000005").replace("condition: sel", "condition: sel and missing_sel")
AUDITD_SYSCALL = (GOOD.replace("000000000001", "000000000006")
                  .replace("{category: process_creation, product: linux}", "{product: linux, service: auditd}")
                  .replace("sel: {Image|endswith: /id}", "sel: {type: SYSCALL, syscall: ptrace}"))
SUFFIX_IMAGE = GOOD.replace("000000000001", "000000000007").replace("endswith: /id", "endswith: TAB")
COMMAND_LINE = GOOD.replace("000000000001", "000000000008").replace("Image|endswith: /id", "CommandLine|contains: [xYz, ' -abc']")
EVERY_EVENT = GOOD.replace("000000000001", "000000000009").replace("Image|endswith: /id", "CommandLine|re: '^x'")


def run(*args: str, stdin: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    # SUDO_UID is one of the owners trusted (monitor/trusted.py): only a test that sets it has one
    base = {k: v for k, v in os.environ.items() if k != "SUDO_UID"}
    return subprocess.run([sys.executable, "-m", "monitor", *args], input=stdin, capture_output=True,
                          cwd=REPO, timeout=120, env={**base, **(env or {})})


def test_rules_check_lists_loaded_and_skipped_with_reasons(tmp_path):
    for name, text in [("good.yml", GOOD), ("net.yml", NETWORK), ("win.yml", WINDOWS), ("ph.yml", PLACEHOLDER),
                       ("cond.yml", BAD_CONDITION), ("audit.yml", AUDITD_SYSCALL),
                       ("broken.yml", "title: [unclosed\n"), ("tab.yml", SUFFIX_IMAGE),
                       ("cmd.yml", COMMAND_LINE), ("all.yml", EVERY_EVENT)]:
        (tmp_path / name).write_text(text)
    r = run("rules", "check", "--format", "json", str(tmp_path))
    assert r.returncode == 1  # some rules were skipped
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    by_file = {Path(row["file"]).name: row for row in rows}
    assert by_file["good.yml"]["status"] == "loaded"
    # what each rule is filed under: the events it is evaluated for
    assert by_file["good.yml"]["index"] == {"image": ["id"]}
    assert by_file["tab.yml"]["index"] == {"image": ["*tab"]}
    assert by_file["cmd.yml"]["index"] == {"contains": ["CommandLine:  -abc", "CommandLine: xyz"]}
    assert by_file["all.yml"]["index"] is None
    assert {n for n, row in by_file.items() if row["status"] == "skipped"} == {
        "net.yml", "win.yml", "ph.yml", "cond.yml", "audit.yml", "broken.yml"}
    assert "category=network_connection" in by_file["net.yml"]["reason"]
    assert by_file["net.yml"]["id"] == "0b5e0000-0000-4000-8000-000000000002"
    assert "product 'windows'" in by_file["win.yml"]["reason"]
    assert "placeholder" in by_file["ph.yml"]["reason"]
    assert "missing_sel" in by_file["cond.yml"]["reason"]
    assert "not about EXECVE" in by_file["audit.yml"]["reason"]
    assert by_file["broken.yml"]["id"] is None


def test_rules_check_text_and_exit_zero_when_all_load(tmp_path):
    (tmp_path / "good.yml").write_text(GOOD)
    r = run("rules", "check", str(tmp_path / "good.yml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines()[-1] == "1 loaded, 0 skipped"


def test_bad_rules_path_is_a_one_line_usage_error(tmp_path):
    for args in (["detect", "--rules", str(tmp_path / "nope")],
                 ["watch", "--rules", str(tmp_path / "nope"), "--duration", "1"],
                 ["rules", "check", str(tmp_path / "nope")]):
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].endswith(f"{tmp_path / 'nope'}: no such file or directory"), lines
        assert r.stdout == b""


@pytest.mark.root
def test_rules_another_user_could_write_are_a_one_line_usage_error(tmp_path):
    # Rules decide what is alerted: a rule someone else can edit is a way to switch off the
    # alert about themselves. Such paths are refused as a bad path is, before anything loads.
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "good.yml").write_text(GOOD)
    shared.chmod(0o1777)  # as /tmp
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "good.yml").write_text(GOOD)
    os.chown(theirs / "good.yml", 65534, 65534)
    loose = tmp_path / "loose"
    (loose / "sub").mkdir(parents=True)
    (loose / "sub" / "good.yml").write_text(GOOD)
    (loose / "sub" / "good.yml").chmod(0o666)
    cases = [(shared, f"{shared}: writable by group or others (mode 1777)"),
             (theirs, f"{theirs / 'good.yml'}: owned by uid 65534, not 0"),
             (loose, f"{loose / 'sub' / 'good.yml'}: writable by group or others (mode 0666)")]
    for path, why in cases:
        for args in (["detect", "--rules", str(path)],
                     ["watch", "--rules", str(path), "--duration", "1"],
                     ["rules", "check", str(path)]):
            r = run(*args)
            assert r.returncode == 2, (args, r.stderr)
            lines = r.stderr.decode().splitlines()
            assert len(lines) == 1 and lines[0].endswith(
                f"{why}; refusing to use it (rules decide what is alerted)"), (args, lines)
            assert r.stdout == b""


@pytest.mark.root
def test_rules_in_a_directory_another_user_can_rename_are_refused(tmp_path):
    # nobody cannot edit root's rules directory, but can swap it for another of root's
    # directories (an older rules set) while it sits in a directory of theirs
    theirs = tmp_path / "srv"
    (theirs / "rules").mkdir(parents=True)
    (theirs / "rules" / "good.yml").write_text(GOOD)
    os.chown(theirs, 65534, 65534)
    for path in (theirs / "rules", theirs / "rules" / "good.yml"):
        r = run("rules", "check", str(path))
        assert r.returncode == 2, r.stderr
        assert r.stderr.decode().splitlines() == [
            f"procsentry: {path}: the directory {theirs} is owned by uid 65534; refusing to use it "
            "(rules decide what is alerted)"]


@pytest.mark.root
def test_rules_of_the_user_who_ran_sudo_are_theirs_to_use(tmp_path):
    # `sudo make run` from a newcomer's own checkout: their files, trusted as root's are
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "good.yml").write_text(GOOD)
    for f in (mine, mine / "good.yml"):
        os.chown(f, 65534, 65534)
    assert run("rules", "check", str(mine)).returncode == 2  # anyone else's: refused
    r = run("rules", "check", str(mine), env={"SUDO_UID": "65534"})
    assert r.returncode == 0, r.stderr
    # group-writable is harmless only in a group no one else is in: nogroup is not one
    (mine / "good.yml").chmod(0o664)
    r = run("rules", "check", str(mine), env={"SUDO_UID": "65534"})
    assert r.returncode == 2
    assert "writable by group or others (mode 0664)" in r.stderr.decode()


def _root_group_is_private() -> bool:
    """From the account files themselves (not the code under test): gid 0 has no members and
    is no one's primary group but root's."""
    members = [line.split(":")[3].strip() for line in Path("/etc/group").read_text().splitlines()
               if line.split(":")[2:3] == ["0"]]
    primary = [line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines()
               if line.split(":")[3:4] == ["0"]]
    return members in ([""], []) and primary == ["root"]


@pytest.mark.root
def test_group_writable_rules_in_their_owners_private_group_are_used(tmp_path):
    # umask 002 with user private groups (Debian, Ubuntu): every file is group-writable
    assert _root_group_is_private(), "this test expects root's group to be root's alone"
    (tmp_path / "good.yml").write_text(GOOD)
    os.chown(tmp_path / "good.yml", 0, 0)
    (tmp_path / "good.yml").chmod(0o664)
    r = run("rules", "check", str(tmp_path / "good.yml"))
    assert r.returncode == 0, r.stderr


def test_a_rule_file_that_is_not_utf8_is_skipped_with_the_reason(tmp_path):
    (tmp_path / "latin1.yml").write_bytes(GOOD.replace("/id", "/caf\u00e9").encode("latin-1"))
    r = run("rules", "check", "--format", "json", str(tmp_path))
    assert r.returncode == 1
    [row] = [json.loads(line) for line in r.stdout.splitlines()]
    assert row["status"] == "skipped" and "can't decode byte 0xe9" in row["reason"], row


def test_a_symlinked_directory_below_a_rules_path_is_not_entered(tmp_path):
    rules, elsewhere = tmp_path / "rules", tmp_path / "elsewhere"
    rules.mkdir()
    elsewhere.mkdir()
    (rules / "good.yml").write_text(GOOD)
    (elsewhere / "cmd.yml").write_text(COMMAND_LINE)
    (rules / "more").symlink_to(elsewhere)
    r = run("rules", "check", "--format", "json", str(rules))
    assert r.returncode == 0, r.stderr
    assert [Path(json.loads(line)["file"]).name for line in r.stdout.splitlines()] == ["good.yml"]


def test_detect_skips_unusable_rules_but_evaluates_the_rest(tmp_path):
    (tmp_path / "good.yml").write_text(GOOD)
    (tmp_path / "net.yml").write_text(NETWORK)
    event = {"event": "exec", "time": "2026-12-01T10:00:00.000000000Z", "pid": 7, "exec_id": "b:1:7",
             "exe": "/usr/bin/id", "argv": ["id"], "user": "root", "uid": 0}
    stream = (json.dumps(event) + "\n" + "garbage\n" + json.dumps([1, 2]) + "\n"
              + json.dumps({"event": "exec", "exe": 5, "argv": "notalist", "pid": 8, "exec_id": "x"}) + "\n").encode()
    r = run("detect", "--no-builtin-rules", "--rules", str(tmp_path), stdin=stream)
    assert r.returncode == 0, r.stderr
    alerts = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(a["rule"]["id"], a["pid"], a["matched"]) for a in alerts] == [
        ("0b5e0000-0000-4000-8000-000000000001", 7, {"Image": "/usr/bin/id"})]
    err = r.stderr.decode()
    assert "rule skipped: 0b5e0000-0000-4000-8000-000000000002" in err
    assert "2 lines not JSON objects" in err
    assert "1 rules loaded, 1 skipped" in err
