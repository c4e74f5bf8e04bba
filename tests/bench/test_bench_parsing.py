"""The benchmark's matching and output parsers, on recorded lines (no root, no BPF)."""
from __future__ import annotations

import sys

import contenders as C  # bench/ is on pytest's pythonpath (pyproject.toml)
import measure as M
import report

ARGV = ["/b/nop", "--token", "psbx-1", "x y"]


def truth(pid=100, token="psbx-1"):
    return M.Truth(1, pid, 50, 1_000_000_000, 500_000, ["/b/nop", "--token", token, "x y"])


def ctx(tmp_path):
    return C.Context(tmp_path, sys.executable, tmp_path, "psbx")


def test_match_pid_token_argv_ppid():
    evs = [M.Event(1_002_000_000, 100, 50, argv=ARGV)]
    m = M.match([truth()], evs, want_ppid=True)
    assert (m.seen, m.captured, m.exact, m.ppid_ok) == (1, 1, 1, 1)
    assert m.latencies_ms == [2.0]


def test_match_needs_the_token_not_just_the_pid():
    # PID right but the argv is the pre-exec parent's (forkstat reading /proc too late)
    evs = [M.Event(1, 100, None, cmd="/b/workload -n 10 psbx-")]
    m = M.match([truth()], evs, want_ppid=False)
    assert (m.seen, m.captured, m.exact) == (1, 0, 0)
    # a token that is a prefix of the real one does not count
    m = M.match([truth(token="psbx-12")], [M.Event(1, 100, None, cmd="/b/nop --token psbx-1 x y")], False)
    assert m.captured == 0


def test_match_space_joined_command_line():
    m = M.match([truth()], [M.Event(1, 100, 50, cmd="/b/nop --token psbx-1 x y")], want_ppid=True)
    assert (m.captured, m.exact, m.ppid_ok) == (1, 1, 1)
    m = M.match([truth()], [M.Event(1, 100, 50, cmd="nop --token psbx-1 x y")], want_ppid=True)
    assert (m.captured, m.exact) == (1, 0)


def test_match_by_pid_only_without_argv():
    m = M.match([truth()], [M.Event(1_001_000_000, 100, 50, exe="/b/nop")], True, has_argv=False)
    assert (m.seen, m.captured, m.ppid_ok, m.latencies_ms) == (1, 0, 1, [1.0])


def test_audit_records_joined_by_serial(tmp_path):
    a = C.Auditd(ctx(tmp_path))
    lines = [
        (5, b'type=SYSCALL msg=audit(1795671231.052:5): arch=c000003e syscall=59 success=yes exit=0 '
            b'items=2 ppid=50 pid=100 comm="nop" exe="/b/nop" key="psbench"\x1dARCH=x86_64 SYSCALL=execve'),
        (7, b'type=EXECVE msg=audit(1795671231.052:5): argc=4 a0="/b/nop" a1="--token" a2="psbx-1" a3=782079'),
        (9, b'type=EXECVE msg=audit(1795671231.052:6): argc=1 a0="/orphan"'),
    ]
    (ev,) = a.parse(lines)
    assert (ev.t_ns, ev.pid, ev.ppid, ev.argv) == (7, 100, 50, ARGV)


def test_ps_forkstat_bpftrace_lines(tmp_path):
    ps = C.PsPoll(ctx(tmp_path), 0.1)
    (ev,) = ps.parse([(1, b"root         100      50  0 05:22 ?        00:00:00 /b/nop --token psbx-1 x y"),
                      (2, b"UID          PID    PPID  C STIME TTY          TIME CMD")])
    assert (ev.pid, ev.ppid, ev.cmd) == (100, 50, "/b/nop --token psbx-1 x y")
    fk = C.Forkstat(ctx(tmp_path))
    (ev,) = fk.parse([(1, b"05:22:56 exec    100                 /b/nop --token psbx-1 x y "),
                      (2, b"Time     Event   PID Info   Duration Process")])
    assert (ev.pid, ev.cmd) == (100, "/b/nop --token psbx-1 x y")
    bt = C.Bpftrace(ctx(tmp_path))
    assert bt.keep(0, b"Lost 12 events") is False and bt.lost == 12
    (ev,) = bt.parse([(1, b"100 50 /b/nop")])
    assert (ev.pid, ev.ppid, ev.exe) == (100, 50, "/b/nop")


def test_profile_summary(tmp_path):
    src = tmp_path / "monitor"
    src.mkdir()
    (src / "perfbuf.py").write_text("def poll(self):\n    self.epoll.poll(0.01)\n")
    raw = tmp_path / "p.txt"
    raw.write_text("<module> (monitor/__main__.py:1);run (monitor/pipeline.py:470);drain (monitor/pipeline.py:90) 2\n"
                   "<module> (monitor/__main__.py:1);run (monitor/pipeline.py:470);drain (monitor/pipeline.py:91);"
                   "to_json (monitor/output.py:5) 1\n"
                   "<module> (monitor/__main__.py:1);poll (/usr/lib/python3/dist-packages/bcc/__init__.py:12) 1\n"
                   "<module> (monitor/__main__.py:1);run (monitor/pipeline.py:470);poll (monitor/perfbuf.py:2) 4\n"
                   "<module> (monitor/__main__.py:1);__create_fn__.<locals>.__init__ (<string>:3) 1\n")
    p = report.summarise_profile(raw, root=tmp_path)
    # the sample waiting in epoll is counted apart, not as work
    assert (p["samples"], p["waiting"], p["work"]) == (9, 4, 5)
    assert p["waits"][0][1:3] == ("poll", "monitor/perfbuf.py")
    assert p["self"][0] == (40.0, "drain", "monitor/pipeline.py")  # line numbers merged
    assert (20.0, "poll", "bcc/__init__.py") in p["self"]
    assert (20.0, "__init__ of a dataclass (generated)", "<string>") in p["self"]
    assert sorted(p["total"][:2]) == [(60.0, "drain", "monitor/pipeline.py"), (60.0, "run", "monitor/pipeline.py")]
    assert all(f != "<module>" for _, f, _ in p["total"])  # on every stack: left out


def test_detection_cost_pairs_each_repetition_with_its_own_no_detection_run():
    """report.detection_cost divides each detection contender's CPU per 1,000 execs by the
    no-detection run of the same repetition (paired), not by a pooled median."""
    def run(rep, cpu_s, n=1000):
        return {"rep": rep, "levels": {"storm": {"cpu_s": cpu_s, "n": n}}}

    sessions = {
        "procsentry-bpf-nodetect": [run(0, 1.0), run(1, 2.0), run(2, 1.0)],
        "procsentry-bpf-rules": [run(0, 1.1), run(1, 2.4), run(2, 1.05)],
        "procsentry-bpf": [run(0, 1.0), run(2, 1.2)],  # repetition 1 missing: not paired
    }
    got = report.detection_cost(sessions, ["storm"])
    rules = got["procsentry-bpf-rules"]["storm"]
    assert [round(x, 3) for x in rules["paired"]] == [1.1, 1.2, 1.05]
    assert round(rules["paired_median"], 3) == 1.1
    assert round(rules["of_medians"], 3) == 1.1  # medians 1.1 over 1.0
    default = got["procsentry-bpf"]["storm"]
    assert [round(x, 3) for x in default["paired"]] == [1.0, 1.2]
    assert report.detection_cost({"procsentry-bpf": [run(0, 1.0)]}, ["storm"]) == {}
