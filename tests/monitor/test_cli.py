"""The command line as a user meets it: privileges, usage errors, doctor."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
    assert p.stderr.decode() == (
        "procsentry watch: error: argument --events: unknown event type(s): bogus; choose from "
        "exec, fork, exit, existing, missed, lost, stats, alert, dropped, start (see procsentry watch --help)\n")


@pytest.mark.parametrize("value", ["3", "0", "-8"])
def test_a_bad_perf_buffer_size_is_a_usage_error_not_a_weaker_sensor(value):
    # Before: "--perf-pages 3" ran on the connector ("BPF unavailable: --perf-pages must be a
    # power of two"). A mistake in the options is the user's to fix: exit 2, one line, nothing
    # loaded, no sensor chosen.
    p = run("watch", "--perf-pages", value, "--sensor", "auto")
    assert p.returncode == 2
    assert p.stderr.decode() == (
        f"procsentry watch: error: argument --perf-pages: must be a power of two, not {int(value)} "
        "(see procsentry watch --help)\n")
    assert p.stdout == b""


def test_sensor_settings_name_their_own_problems():
    from monitor.sensors import SensorSettings, choose  # noqa: PLC0415
    assert SensorSettings().problem() is None
    assert SensorSettings(perf_pages=3).problem() == "--perf-pages must be a power of two, not 3"
    assert SensorSettings(sensor="bogus").problem() == "unknown sensor 'bogus'"
    with pytest.raises(ValueError, match="power of two"):
        choose(SensorSettings(perf_pages=6))  # never tried, never a fallback


def test_uid_accepts_a_user_name_or_a_number():
    from monitor.__main__ import build_parser  # noqa: PLC0415
    parse = build_parser().parse_args
    assert parse(["watch", "--uid", "root"]).uid == 0
    assert parse(["watch", "--uid", "nobody"]).uid == 65534
    assert parse(["watch", "--uid", "33"]).uid == 33
    assert parse(["watch", "--uid", "4000000"]).uid == 4000000  # a uid with no name is still a uid


def test_uid_of_an_unknown_user_is_a_one_line_usage_error():
    p = run("watch", "--uid", "no-such-user-here")
    assert p.returncode == 2
    assert p.stderr.decode() == ("procsentry watch: error: argument --uid: no user named "
                                 "'no-such-user-here' on this host (see procsentry watch --help)\n")
    assert p.stdout == b""


def test_output_in_a_missing_directory_fails_before_anything_loads():
    start = time.monotonic()
    p = run("watch", "--output", "/nonexistent/dir/f")
    elapsed = time.monotonic() - start
    assert p.returncode == 2
    # one line, and no "procsentry: sensor ..." line: nothing was compiled, loaded or attached
    assert p.stderr.decode() == "procsentry: --output: cannot open /nonexistent/dir/f: No such file or directory\n"
    assert p.stdout == b""
    assert elapsed < 2.0, f"{elapsed:.2f}s: something was loaded before the output was opened"


@pytest.mark.root
@pytest.mark.parametrize("option,sensor", [("--output", "poll"), ("--record", "bpf")])
def test_an_output_symlink_is_refused_before_anything_loads(tmp_path, option, sensor):
    # --record (hidden: raw BPF records for tests/data) opens its file as --output does
    target = tmp_path / "passwd-copy"
    target.write_bytes(Path("/etc/passwd").read_bytes())
    before = target.read_bytes()
    link = tmp_path / "x.jsonl"
    link.symlink_to(target)
    p = run("watch", option, str(link), "--sensor", sensor, "--duration", "1")
    assert p.returncode == 2
    assert p.stderr.decode() == f"procsentry: {option}: {link} is a symbolic link; give the file itself\n"
    assert target.read_bytes() == before
    assert link.is_symlink() and os.readlink(link) == str(target)


@pytest.mark.bpf
def test_the_raw_record_file_holds_this_run_only(tmp_path):
    rec = tmp_path / "raw.hex"
    rec.write_text("OLD-RECORDING\n")
    rec.chmod(0o600)
    w = subprocess.Popen([sys.executable, "-m", "monitor", "watch", "--record", str(rec), "--sensor", "bpf",
                          "--duration", "30", "--events", "start"], stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert b'"event":"start"' in w.stdout.readline()  # attached: what runs now is recorded
        subprocess.run(["/bin/true"], check=True)
        time.sleep(0.5)
    finally:
        w.send_signal(signal.SIGINT)
        assert w.wait(30) == 0
    lines = rec.read_text().splitlines()
    assert lines and "OLD-RECORDING" not in lines
    assert all(bytes.fromhex(line) for line in lines)  # hex lines of raw records, nothing else


@pytest.mark.root
def test_output_owned_by_another_user_or_a_fifo_is_refused(tmp_path):
    theirs = tmp_path / "theirs.jsonl"
    theirs.write_bytes(b"")
    os.chown(theirs, NOBODY, NOBODY)
    p = run("watch", "--output", str(theirs), "--sensor", "poll", "--duration", "1")
    assert p.returncode == 2
    assert p.stderr.decode() == (f"procsentry: --output: {theirs} is owned by uid {NOBODY}, not by "
                                 "this user (uid 0)\n")
    assert theirs.read_bytes() == b""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    p = run("watch", "--output", str(fifo), "--sensor", "poll", "--duration", "1")
    assert p.returncode == 2
    assert p.stderr.decode() == f"procsentry: --output: {fifo} is not a regular file\n"


def test_help_has_examples():
    p = run("watch", "--help")
    assert p.returncode == 0 and b"examples:" in p.stdout and b"--sensor" in p.stdout


@pytest.mark.root
def test_watch_without_privileges_is_one_sentence_and_status_77():
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415
    state = tempfile.mkdtemp(prefix="procsentry-nobody-", dir="/tmp")  # what nobody would own
    os.chown(state, NOBODY, NOBODY)
    try:
        p = run("watch", "--sensor", "bpf", "--state-dir", state, user=NOBODY)
    finally:
        shutil.rmtree(state)
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
def test_doctor_passes_here():
    """(The headers check, PASS or WARN by what is installed, is tested on trees built below.)"""
    p = run("doctor", "--format", "json")
    assert p.returncode == 0, p.stdout
    report = json.loads(p.stdout)
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["sensor"]["status"] == "PASS"
    assert checks["btf"]["status"] == "PASS"


def headers_tree(root: Path, release: str) -> Path:
    """A headers tree as the distro packages lay it out, for the given kernel release."""
    (root / "include" / "generated").mkdir(parents=True)
    (root / "include" / "generated" / "utsrelease.h").write_text(f'#define UTS_RELEASE "{release}"\n')
    return root


def test_doctor_reports_matching_and_mismatched_headers(tmp_path):
    """The headers check on trees built here (BCC_KERNEL_SOURCE points bcc and doctor at them),
    one for this kernel and one for another: each verdict and its exact text."""
    def headers_check(build: Path) -> dict:
        p = run("doctor", "--format", "json", "--no-load", env={**os.environ, "BCC_KERNEL_SOURCE": str(build)})
        (check,) = [c for c in json.loads(p.stdout)["checks"] if c["name"] == "headers"]
        return check

    release = os.uname().release
    same = headers_tree(tmp_path / "same", release)
    check = headers_check(same)
    assert (check["status"], check["detail"]) == ("PASS", f"matching headers for {release}")
    other = headers_tree(tmp_path / "other", "6.1.0-56-amd64")
    check = headers_check(other)
    assert (check["status"], check["detail"]) == (
        "WARN", f"mismatched fallback: {other} -> {other} is for 6.1.0-56-amd64, not {release}; "
                "bcc compiles with them and every struct offset comes from BTF")


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
