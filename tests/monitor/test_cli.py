"""The command line as a user meets it: privileges, usage errors, doctor."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def run(*args, user=None, env=None):
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, cwd=REPO,
                          timeout=120, user=user, env=env)


def test_usage_error_exits_2():
    p = run("watch", "--events", "exec,bogus")
    assert p.returncode == 2
    assert b"unknown event type(s): bogus" in p.stderr


def test_help_has_examples():
    p = run("watch", "--help")
    assert p.returncode == 0 and b"examples:" in p.stdout and b"--sensor" in p.stdout


@pytest.mark.root
def test_watch_without_privileges_is_one_sentence_and_status_77():
    p = run("watch", "--sensor", "bpf", user=NOBODY)
    assert p.returncode == 77, p.stderr
    lines = p.stderr.decode().strip().splitlines()
    assert b"Traceback" not in p.stderr
    assert any("needs root (or CAP_BPF and CAP_PERFMON)" in line for line in lines)


@pytest.mark.root
def test_doctor_as_non_root_fails_with_a_reason():
    p = run("doctor", user=NOBODY)
    assert p.returncode == 1
    out = p.stdout.decode()
    assert "FAIL  privileges" in out and "remedy: run as root" in out
    assert b"Traceback" not in p.stderr


@pytest.mark.bpf
def test_doctor_passes_here_and_reports_the_headers():
    p = run("doctor", "--format", "json")
    assert p.returncode == 0, p.stdout
    report = json.loads(p.stdout)
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["sensor"]["status"] == "PASS"
    assert checks["btf"]["status"] == "PASS"
    release = os.uname().release
    build = Path(f"/lib/modules/{release}/build").resolve()
    from monitor.doctor import headers_release  # noqa: PLC0415
    if headers_release(build) == release:
        assert checks["headers"]["status"] == "PASS"
    else:  # these CI machines: a custom kernel with the distro's generic headers
        assert checks["headers"]["status"] == "WARN"
        assert "mismatched fallback" in checks["headers"]["detail"]


@pytest.mark.bpf
def test_dump_bpf_prints_the_source_and_the_btf_offsets():
    p = run("watch", "--dump-bpf")
    assert p.returncode == 0
    assert b"-DOFF_TASK_TGID=" in p.stdout and b"on_sched_process_exec" in p.stdout


def test_snapshot_of_a_fixture_tree_as_text(proc_tree):
    root = proc_tree("host")
    p = run("snapshot", "--format", "text", "--proc-root", root)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["PID", "PPID", "USER"]
    agentd = next(line for line in lines if " /usr/sbin/agentd " in line + " ")
    assert agentd.split()[0] == "100"


def test_snapshot_json_uses_the_event_schema(proc_tree):
    import jsonschema  # noqa: PLC0415
    from monitor.schema import SCHEMA_PATH  # noqa: PLC0415
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    root = proc_tree("host")
    p = run("snapshot", "--format", "json", "--proc-root", root, "--pid", "100")
    assert p.returncode == 0, p.stderr
    (event,) = [json.loads(line) for line in p.stdout.splitlines()]
    assert list(validator.iter_errors(event)) == []
    assert event["pid"] == 100 and event["event"] == "existing"
    assert event["argv"] == ["/usr/sbin/agentd", "--listen", "0.0.0.0:22"]
    assert event["proc"]["fd_count"] is not None
