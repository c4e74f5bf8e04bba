"""The pipeline without a kernel: a scripted source and a fixture procfs tree.

PIDs in the fixture tree "host": 1 systemd (start 2), 100 agentd (start 5000, child of 1),
2 kthreadd, 200 a zombie, others (see tests/fixtures/proc/host.ttar).
"""
from __future__ import annotations

import io
import logging

from monitor.output import Sink
from monitor.pipeline import Config, Filters, Pipeline
from monitor.records import LostRecord, lost_since
from monitor.sensors.bpf import wire
from monitor.sensors.bpf.source import exec_record, exit_record, fork_record
from userspace.procfs import ProcFS
from userspace.sockets import DumpBudget
from userspace.types import NSEC_PER_TICK, ProcessSnapshot, ProcKey

BOOT = "4b7c1a7e-1111-2222-3333-444455556666"


class ScriptedSource:
    """Hands the pipeline prepared batches of sensor-neutral records, as a sensor would."""

    name = "bpf"

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.lost: dict[int, int] = {}
        self._lost_seen: dict[int, int] = {}

    def drain(self):
        out = self.batches.pop(0) if self.batches else []
        return out + lost_since(self._lost_seen, self.lost, 0)

    def poll(self, timeout_ms):
        pass

    def sync(self):
        pass

    def pending(self):
        return 0

    def lost_per_cpu(self):
        return dict(self.lost)

    def counters(self):
        return {}

    def close(self):
        pass


class Capture(Sink):
    def __init__(self) -> None:
        super().__init__("json", stream=io.BytesIO())
        self.records = []

    def write(self, record) -> None:
        self.records.append(record)


def make(proc_tree, **cfg):
    fs = ProcFS(proc_tree("host"))
    src = ScriptedSource()
    sink = Capture()
    return Pipeline(src, sink, fs, Config(**cfg)), src, sink


def rexec(pid, start_ticks, ppid, pstart_ticks, argv, ts, exe=b"/usr/bin/x", flags=0):
    return exec_record(raw_exec(pid, start_ticks, ppid, pstart_ticks, argv, ts, exe, flags))


def raw_exec(pid, start_ticks, ppid, pstart_ticks, argv, ts, exe=b"/usr/bin/x", flags=0):
    return wire.RawExec(ts, pid, pid, start_ticks * NSEC_PER_TICK, pid, flags, ppid, len(argv),
                        pstart_ticks * NSEC_PER_TICK, 1, 0, 0, 0, 0, wire.UNSET_ID, wire.UNSET_ID,
                        (1, 2, 3, 4, 5, 6, 7), sum(len(a) + 1 for a in argv), b"x", argv[0], None,
                        exe, b"/", argv)


def rfork(pid, ticks, ppid, pticks, ts):
    return fork_record(raw_fork(pid, ticks, ppid, pticks, ts))


def raw_fork(pid, ticks, ppid, pticks, ts):
    return wire.RawFork(ts, pid, pid, ticks * NSEC_PER_TICK, ppid, ppid, pticks * NSEC_PER_TICK)


def rexit(pid, ticks, status, ts):
    return exit_record(raw_exit(pid, ticks, status, ts))


def raw_exit(pid, ticks, status, ts):
    return wire.RawExit(ts, pid, pid, ticks * NSEC_PER_TICK, status, ts - 1000, b"x")


def test_startup_sweep_emits_existing_parents_first(proc_tree):
    p, _, sink = make(proc_tree)
    p.sweep_existing()
    existing = [r for r in sink.records if r.event == "existing"]
    order = [r.pid for r in existing]
    assert order.index(1) < order.index(100)
    agentd = next(r for r in existing if r.pid == 100)
    assert agentd.argv == ("/usr/sbin/agentd", "--listen", "0.0.0.0:22")
    assert agentd.exec_id == ProcKey(BOOT, 100, 5000).exec_id
    assert agentd.parent_exec_id == ProcKey(BOOT, 1, 2).exec_id
    assert agentd.source == "sweep"
    kthread = next(r for r in existing if r.pid == 2)
    assert kthread.exe is None and kthread.missing.get("exe") == "kernel_thread"


def test_fork_child_inherits_the_parent_until_exec_and_links_by_key(proc_tree):
    p, src, sink = make(proc_tree)
    p.sweep_existing()
    src.batches = [[rfork(7000, 9000, 100, 5000, 10),
                    rexec(7000, 9000, 100, 5000, (b"/bin/sh", b"-c", b"id"), 20, exe=b"/usr/bin/dash"),
                    rexit(7000, 9000, 1 << 8, 30)]]
    p.drain()
    fork, exec_, exit_ = [r for r in sink.records if r.pid == 7000]
    assert fork.event == "fork" and fork.exe == "/usr/sbin/agentd" and fork.enrichment == "full"
    assert exec_.event == "exec" and exec_.argv == ("/bin/sh", "-c", "id")
    assert exec_.parent_exec_id == ProcKey(BOOT, 100, 5000).exec_id
    assert [a.pid for a in exec_.ancestry] == [100, 1]
    assert exec_.enrichment == "gone"  # pid 7000 is not in the fixture tree
    assert exit_.exit_code == 1 and exit_.signal is None and exit_.duration_ns == 1000
    assert exit_.argv == ("/bin/sh", "-c", "id")


def test_exit_before_exec_is_kept_and_not_resurrected(proc_tree):
    p, src, sink = make(proc_tree)
    # different CPUs: the exit record arrives in an earlier batch than the exec
    src.batches = [[rexit(7100, 9100, 9, 50)],
                   [rexec(7100, 9100, 1, 2, (b"/bin/true",), 40)]]
    p.drain()
    p.drain()
    kinds = [(r.event, r.pid) for r in sink.records]
    assert kinds == [("exit", 7100), ("exec", 7100)]
    assert sink.records[0].signal == 9
    assert p.table.get((7100, 9100)).exited_at is not None
    p.drain()
    assert len(sink.records) == 2  # a late duplicate exit would not be reported twice


def test_a_zombie_found_by_the_start_up_sweep_still_gets_the_sensors_exit(proc_tree):
    # The sensor is attached before the start-up sweep: a process that the sweep finds a
    # zombie may have died after that, and its exit record is then still to come. Two cases:
    # main() called pthread_exit while another thread runs (Z with 2 threads: alive), and the
    # whole group gone but not yet reaped (Z, 1 thread). Either way, one exit, the sensor's.
    p, src, sink = make(proc_tree)
    for pid, threads in ((7300, 2), (7301, 1)):
        snap = ProcessSnapshot(key=ProcKey(BOOT, pid, 9300), pid=pid, ppid=1, comm=b"exit_leader",
                               state="Z", start_ticks=9300, zombie=True, threads=threads)
        p.on_snapshot(snap, "existing")
    assert p.table.get((7300, 9300)).exited_at is None  # its exit(7) is still to come
    src.batches = [[rexit(7300, 9300, 7 << 8, 50), rexit(7301, 9300, 7 << 8, 60)]]
    p.drain(flush=True)
    p.drain(flush=True)
    exits = [r for r in sink.records if r.event == "exit"]
    assert [(r.pid, r.exit_code, r.inferred) for r in exits] == [(7300, 7, False), (7301, 7, False)]


def test_records_in_a_batch_are_applied_in_kernel_time_order(proc_tree):
    from monitor.sensors.bpf.source import BpfSource  # noqa: PLC0415 - only its drain ordering
    src = BpfSource.__new__(BpfSource)

    class Q:
        queue = __import__("collections").deque(
            [(1, wire.encode(raw_exit(7200, 1, 0, 3000))), (0, wire.encode(raw_fork(7200, 1, 1, 2, 1000))),
             (0, wire.encode(raw_exec(7200, 1, 1, 2, (b"a",), 2000)))])

        class stats:
            lost_per_cpu: dict = {}
    src.sensor = Q()
    src.record_to = None
    src._lost_seen = {}
    assert [type(rec).__name__ for rec in src.drain()] == ["ForkRecord", "ExecRecord", "ExitRecord"]


def test_reconcile_reports_missed_and_infers_exits(proc_tree):
    p, src, sink = make(proc_tree)
    # the table believes in a process that /proc does not have
    src.batches = [[rexec(7300, 9300, 1, 2, (b"/bin/sleep", b"9"), 10)]]
    src.lost = {0: 1}  # records were lost: an unknown zombie is a real miss
    p.drain(flush=True)
    p.reconcile()
    # a first sweep only suspects (a record may still be on its way), and asks for another
    assert [r for r in sink.records if r.event == "missed" or getattr(r, "inferred", False)] == []
    assert p._reconcile_due == "suspects" and len(p._suspects) > 0
    p.reconcile()
    missed = {r.pid for r in sink.records if r.event == "missed"}
    assert {1, 100} <= missed  # nothing was known about the fixture processes
    inferred = [r for r in sink.records if r.event == "exit" and r.inferred]
    assert 7300 in {r.pid for r in inferred}
    assert 200 in {r.pid for r in inferred}  # the zombie was never seen exiting
    ex = next(r for r in inferred if r.pid == 7300)
    assert ex.source == "sweep" and ex.exit_code is None and ex.argv == ("/bin/sleep", "9")
    assert p.counters.missed == len(missed)
    before = len(sink.records)
    p.reconcile()
    assert len(sink.records) == before  # a second sweep finds nothing new


def test_backlog_skips_enrichment_and_counts_it(proc_tree):
    p, src, sink = make(proc_tree, backlog=1)
    src.batches = [[rexec(100, 5000, 1, 2, (b"/usr/sbin/agentd",), t) for t in (1, 2, 3)]]
    p.drain()
    got = [r.missing.get("proc") for r in sink.records]
    assert got == ["skipped_backlog", None, None]
    assert p.counters.enrichment["skipped_backlog"] == 1
    assert sink.records[2].enrichment in ("full", "partial") and sink.records[2].proc is not None


def test_lost_samples_become_a_lost_event_and_schedule_a_sweep(proc_tree):
    p, src, sink = make(proc_tree)
    src.lost = {1: 17}
    p.drain()
    (lost,) = [r for r in sink.records if r.event == "lost"]
    assert (lost.cpu, lost.count) == (1, 17)
    assert p._reconcile_due == "lost"
    p.drain()
    assert len([r for r in sink.records if r.event == "lost"]) == 1  # a delta, not a total


def test_filters(proc_tree):
    p, src, sink = make(proc_tree, filters=Filters(events=frozenset({"exec"}), exe="/usr/bin/*sh"))
    src.batches = [[rexec(7400, 1, 1, 2, (b"bash",), 1, exe=b"/usr/bin/bash"),
                    rexec(7401, 1, 1, 2, (b"ls",), 2, exe=b"/usr/bin/ls"),
                    rexit(7400, 1, 0, 3)]]
    p.drain()
    assert [(r.event, r.pid) for r in sink.records] == [("exec", 7400)]
    assert p.counters.events == {"exec": 2, "exit": 1}


def test_count_stops_the_run(proc_tree):
    p, src, sink = make(proc_tree, count=2)
    src.batches = [[rexec(7500 + i, 1, 1, 2, (b"x",), i) for i in range(5)]]
    p.drain()
    assert p.stop_requested


def test_a_record_that_arrives_after_a_sweep_suspected_its_process_wins(proc_tree):
    # procfs shows an exec's new comm before the exec tracepoint runs: the first sweep may
    # find the process "changed"; the sensor's exec record then arrives before the second.
    p, src, sink = make(proc_tree)
    p.sweep_existing(pids=[1, 100])
    src.batches = [[rfork(304, 7400, 100, 5000, 10)]]
    p.drain()
    p.reconcile()
    assert (304, 7400) in p._suspects.snapshots
    src.batches = [[rexec(304, 7400, 1, 2, (b"nginx: worker process",), 20, exe=b"/usr/sbin/nginx")]]
    p.drain(flush=True)
    p.reconcile()
    assert [r for r in sink.records if r.event == "missed" and r.pid == 304] == []
    assert p.counters.missed == sum(1 for r in sink.records if r.event == "missed")


def test_reconcile_reports_an_exec_whose_record_was_lost(proc_tree):
    p, src, sink = make(proc_tree)
    p.sweep_existing(pids=[1, 100])
    # pid 304 (nginx in the fixture, start 7400) was seen forking from agentd, its exec lost:
    # the table still shows agentd's image
    src.batches = [[rfork(304, 7400, 100, 5000, 10)]]
    p.drain()
    assert p.table.get((304, 7400)).exe == "/usr/sbin/agentd"
    p.reconcile()
    p.reconcile()  # the second sweep confirms what the first suspected
    (missed,) = [r for r in sink.records if r.event == "missed" and r.pid == 304]
    assert missed.argv == ("nginx: worker process",) and missed.comm == "nginx"
    assert missed.ppid == 1  # procfs's parent now (the fixture's nginx was reparented)
    assert missed.parent_exec_id == ProcKey(BOOT, 1, 2).exec_id
    assert p.table.get((304, 7400)).comm == "nginx"


def test_enrich_levels_and_the_time_they_take(proc_tree):
    # agentd (pid 100, start 5000) in the fixture: stat says state S, 2 threads, rss 900 pages
    raw = raw_exec(100, 5000, 1, 2, (b"/usr/sbin/agentd",), 1)._replace(
        cap_effective=0x3000, cap_permitted=0x7000, suid=11, fsuid=12)
    got = {}
    fs = ProcFS(proc_tree("host"))
    for level in ("minimal", "standard", "full"):
        src, sink = ScriptedSource(), Capture()
        p = Pipeline(src, sink, fs, Config(enrich=level))
        src.batches = [[exec_record(raw)]]
        p.drain(flush=True)
        (ev,) = sink.records
        got[level] = (ev, p.stats().time_s)
        # kernel-captured, whatever the level
        assert (ev.cap_eff, ev.cap_prm) == ("0000000000003000", "0000000000007000")
    ev, spent = got["minimal"]
    assert (ev.enrichment, ev.proc) == ("kernel", None)
    # (Capture.write only appends: its time, rounded to the microsecond, may well be 0.0.)
    assert "exec" not in spent["enrich"] and spent["encode"]["exec"] >= 0
    ev, spent = got["standard"]
    assert ev.enrichment == "full" and spent["enrich"]["exec"] > 0
    assert (ev.proc.state, ev.proc.threads, ev.proc.rss_bytes) == ("S", 2, 900 * fs.page_size)
    # status not read: capabilities and saved/fs uid as the kernel captured them at exec
    assert (ev.proc.cap_eff, ev.proc.suid, ev.proc.fsuid) == ("0000000000003000", 11, 12)
    assert (ev.proc.fds, ev.proc.fd_count, ev.proc.sockets, ev.differs) == (None, None, None, None)
    ev, spent = got["full"]
    assert ev.enrichment in ("full", "partial") and spent["enrich"]["exec"] > 0
    assert ev.proc.fds is not None and ev.proc.fd_count == len(fs.listdir(100, "fd"))
    assert ev.proc.suid != 11  # from the fixture's status, not the kernel record


class BuggyProcFS(ProcFS):
    """The fixture tree, with a reader that fails with something other than a ProcFSError for
    agentd: what a parser bug on hostile input does (a unix socket name that was not UTF-8 once
    made the sock_diag decoding raise TypeError and stopped the monitor)."""

    def read_parsed(self, pid, name, parser):
        if pid == 100 and name == "status":
            raise TypeError("a reader bug")
        return super().read_parsed(pid, name, parser)


def test_a_reader_bug_costs_its_event_the_procfs_part_not_the_monitor(proc_tree, caplog):
    src, sink = ScriptedSource(), Capture()
    p = Pipeline(src, sink, BuggyProcFS(proc_tree("host")), Config(enrich="full"))
    agentd = [rexec(100, 5000, 1, 2, (b"/usr/sbin/agentd", b"--bad"), t) for t in (1, 2)]
    systemd = rexec(1, 2, 0, 0, (b"/sbin/init",), 3, exe=b"/usr/lib/systemd/systemd")
    src.batches = [[*agentd, systemd]]
    with caplog.at_level(logging.ERROR, logger="procsentry.pipeline"):
        p.drain(flush=True)
    bad1, bad2, good = sink.records
    for ev in (bad1, bad2):  # everything the kernel captured, and why proc is missing
        assert (ev.event, ev.pid, ev.argv, ev.exe) == ("exec", 100, ("/usr/sbin/agentd", "--bad"),
                                                       "/usr/bin/x")
        assert (ev.enrichment, ev.proc, ev.missing["proc"]) == ("partial", None, "error")
    # the next process is read as ever (the fixture's PID 1 has no fd/ directory)
    assert (good.pid, good.exe, good.proc.state, good.proc.threads) == (1, "/usr/lib/systemd/systemd", "S", 1)
    assert good.missing == {"fds": "unavailable", "fd_count": "unavailable", "sockets": "unavailable"}
    assert p.stats().enrichment == {"full": 0, "partial": 1, "gone": 0, "skipped_backlog": 0,
                                    "kernel": 0, "error": 2}
    # logged once, with where it was raised
    (logged,) = [r for r in caplog.records if r.name == "procsentry.pipeline"]
    assert "enrich.bug proc.pid=100: TypeError: a reader bug" in logged.getMessage()
    assert logged.exc_info is not None and logged.exc_info[0] is TypeError


EVIL_RULE = """title: evil runs
id: 6f1d2c3b-0000-4000-8000-00000000e1e1
status: test
level: high
author: procsentry tests
logsource: {category: process_creation, product: linux}
detection:
  sel: {Image|endswith: /evil}
  condition: sel
"""


def test_detection_runs_per_flush_and_each_alert_follows_its_event(proc_tree, tmp_path):
    """Detection is batched (Pipeline.detect): the events of a drain are observed in their order
    at the next flush, and every alert is written after its event, before the flush's bytes go
    out. The batch is bounded: DETECT_BATCH events are observed at once."""
    from monitor import pipeline as pl
    from monitor.detect.engine import Detector

    (tmp_path / "evil.yml").write_text(EVIL_RULE)
    fs = ProcFS(proc_tree("host"))
    src, sink = ScriptedSource(), Capture()
    p = Pipeline(src, sink, fs, Config(), detector=Detector.from_paths([str(tmp_path)], builtin=False))
    src.batches = [[rexec(7600, 1, 1, 2, (b"evil", b"-x"), 1, exe=b"/tmp/evil"),
                    rexec(7601, 1, 1, 2, (b"ls",), 2, exe=b"/usr/bin/ls"),
                    rexec(7602, 1, 1, 2, (b"evil",), 3, exe=b"/opt/evil")]]
    p.drain(flush=True)
    assert [r.event for r in sink.records] == ["exec", "exec", "exec"]  # not observed yet
    p.flush()
    got = [(r.event, r.pid) for r in sink.records]
    assert got == [("exec", 7600), ("exec", 7601), ("exec", 7602), ("alert", 7600), ("alert", 7602)]
    alert = sink.records[3]
    assert alert.rule.id == "6f1d2c3b-0000-4000-8000-00000000e1e1"
    assert alert.exec_id == sink.records[0].exec_id and alert.argv == ("evil", "-x")
    assert p.counters.events["alert"] == 2 and p.counters.time_detect["exec"] > 0

    # a drain longer than the bound observes DETECT_BATCH events without waiting for a flush
    n = pl.DETECT_BATCH + 3
    # (PIDs above any this host hands out: the pipeline drops its own PID's records, and the
    # test's PID once fell in 8000 .. 8000 + n)
    base = 4_100_000
    src.batches = [[rexec(base + i, 1, 1, 2, (b"evil",), 10 + i, exe=b"/tmp/evil") for i in range(n)]]
    p.drain(flush=True)
    assert len(p._to_detect) == 3
    assert sum(r.event == "alert" for r in sink.records) == 2 + pl.DETECT_BATCH
    p.flush()
    assert sum(r.event == "alert" for r in sink.records) == 2 + n and not p._to_detect
    # every alert comes after its own event, the batch's last one included
    where = {(r.event, r.pid): i for i, r in enumerate(sink.records)}
    assert all(where[("alert", base + i)] > where[("exec", base + i)] for i in range(n))


def test_stats_count_the_alerts_of_what_was_emitted_before_them(proc_tree, tmp_path):
    """The periodic stats event runs detection first: its alert counters cover every event
    emitted before it (status.json and the metrics endpoint read them)."""
    from monitor.detect.engine import Detector

    (tmp_path / "evil.yml").write_text(EVIL_RULE)
    fs = ProcFS(proc_tree("host"))
    src, sink = ScriptedSource(), Capture()
    p = Pipeline(src, sink, fs, Config(stats_interval_s=0.0, duration_s=0.0),
                 detector=Detector.from_paths([str(tmp_path)], builtin=False))
    src.batches = [[], [rexec(7700, 1, 1, 2, (b"evil",), 1, exe=b"/tmp/evil")]]
    p.run()
    first = next(i for i, r in enumerate(sink.records) if r.event == "stats")
    before = sink.records[:first]
    stats = sink.records[first]
    assert stats.events.get("exec") == 1 and any(r.event == "alert" and r.pid == 7700 for r in before)
    shown = sum(r.event == "alert" for r in before)  # the fixture's existing processes may alert too
    assert stats.events.get("alert") == shown and stats.detection["alerts"] == shown


def test_the_enrichers_socket_table_lives_as_long_as_its_dumps_allow(proc_tree):
    """A table is kept SOCKET_TABLE_TTL_S, and longer while the dump budget allows no new dump
    (DumpBudget.IDLE_FACTOR times as long as the last one took): any user can open tens of thousands of sockets (38,000 made one
    dump 1.2 s here), and a table read again every second then took most of the monitor's CPU."""
    from monitor import enrich as E

    e = E.Enricher(ProcFS(proc_tree()))
    t = e.sockets()
    assert e.sockets() is t
    e._sockets_at -= E.SOCKET_TABLE_TTL_S + 0.1
    assert e.sockets() is not t  # a cheap table: read again after the TTL, as before
    t = e.sockets()
    e._dump_budget.spent(1.0)  # as a dump on a host with tens of thousands of sockets
    e._sockets_at -= 2 * E.SOCKET_TABLE_TTL_S
    assert e.sockets() is t
    e._dump_budget.next_at -= DumpBudget.IDLE_FACTOR * 1.0  # that much later
    assert e.sockets() is not t

