"""CPU cost of the Python path per exec and per fork, repeatable on a loaded machine.

Feeds wire records (encoded with monitor/sensors/bpf/wire.py, exactly what the kernel submits)
through BpfSource.drain and Pipeline.drain into a JSON sink writing to /dev/null, and reports
CPU time (time.process_time, so other load on the host does not count) per record:

* exec-<level>: exec records of N real, live processes (sleep, with a pipe, a file and a TCP
  socket to a loopback listener open), so enrichment reads their real procfs entries, at each
  --enrich level;
* fork: fork + exit records of processes that never exec (stress-ng --fork), with the
  benchmark's filter `--events exec,lost`.

    sudo .venv/bin/python bench/pipeline_cost.py [--procs 200] [--rounds 20]
    sudo .venv/bin/python bench/pipeline_cost.py --tree /path/to/other/checkout   # compare

--tree runs another checkout's monitor (before/after comparisons): levels it does not know are
skipped, and its exec default is reported as exec-default.
"""
from __future__ import annotations

import argparse
import collections
import io
import os
import signal
import socket
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--procs", type=int, default=200)
ap.add_argument("--rounds", type=int, default=20)
ap.add_argument("--forks", type=int, default=20000)
ap.add_argument("--cgroup-id", type=int, default=1,
                help="cgroup id in the records: 1 (the root: read from procfs per exec on a hybrid "
                     "cgroup v1/v2 host such as this one) or a real v2 id (resolved once, cached)")
ap.add_argument("--only", default=None, help="one exec level (and no forks): for strace -c")
ap.add_argument("--tree", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
args = ap.parse_args()
sys.path.insert(0, os.path.abspath(args.tree))

from monitor.output import Sink  # noqa: E402
from monitor.pipeline import Config, Filters, Pipeline  # noqa: E402
from monitor.sensors.bpf import wire  # noqa: E402
from monitor.sensors.bpf.source import BpfSource  # noqa: E402
from userspace.procfs import ProcFS  # noqa: E402

NSEC_PER_TICK = 10_000_000


class RingStub:
    """What BpfSource reads of its Sensor: the queue of (cpu, bytes) samples and loss stats."""

    def __init__(self) -> None:
        self.queue: collections.deque = collections.deque()
        self.stats = type("S", (), {"lost_per_cpu": {}})()

    def counters(self) -> dict:
        return {}

    def poll(self, ms) -> None:
        pass

    def account_losses(self, force=False) -> None:
        pass


def source() -> BpfSource:
    s = BpfSource.__new__(BpfSource)
    s.sensor = RingStub()
    s.record_to = None
    s._lost_seen = {}
    return s


def raw_exec(pid: int, start_ticks: int, ts: int, **extra) -> bytes:
    fields = dict(ts_ns=ts, tgid=pid, tid=pid, start_boottime=start_ticks * NSEC_PER_TICK,
                  old_tid=pid, flags=0, ppid=os.getpid(), argc=2, parent_start_boottime=0,
                  cgroup_id=args.cgroup_id, uid=0, gid=0, euid=0, egid=0, loginuid=wire.UNSET_ID,
                  sessionid=wire.UNSET_ID, ns=(4026531836, 4026531840, 4026531840, 4026531837,
                                               4026531838, 4026531839, 4026531835),
                  argv_size=16, comm=b"sleep", filename=b"/bin/sleep", tty=None,
                  exe=b"/usr/bin/sleep", cwd=b"/tmp", argv=(b"sleep", b"3600"), vpid=pid,
                  arg_start=0x7ffd00001000 + pid, end_code=0x5000)
    fields.update(extra)
    fields = {k: v for k, v in fields.items() if k in wire.RawExec._fields}
    return wire.encode(wire.RawExec(**fields))


def pipeline(src, level: str | None, events=None) -> Pipeline:
    cfg = Config(sweep_interval_s=0, stats_interval_s=3600, enrich_delay_ns=0,
                 filters=Filters(events=events))
    if level is not None:
        cfg.enrich = level
    return Pipeline(src, Sink("json", stream=open(os.devnull, "wb")), ProcFS(), cfg)


def cpu_per(fn, n: int) -> float:
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) / n


def main() -> int:
    listener = socket.create_server(("127.0.0.1", 0))
    conn = socket.create_connection(listener.getsockname())
    r_end, w_end = os.pipe()
    log = open(os.devnull, "wb")
    kids = [subprocess.Popen(["/bin/sleep", "3600"], stdin=r_end, stdout=log, stderr=conn.fileno())
            for _ in range(args.procs)]
    try:
        fs = ProcFS()
        starts = {p.pid: int(fs.read_bytes(p.pid, "stat").rsplit(b")", 1)[1].split()[19])
                  for p in kids}
        levels = ["minimal", "standard", "full"] if hasattr(Config(), "enrich") else [None]
        if args.only:
            levels = [None if args.only == "default" else args.only]
        results = {}
        for level in levels:
            src = source()
            pl = pipeline(src, level)

            ts = time.monotonic_ns() - 50_000_000
            batch = [(0, raw_exec(pid, st, ts)) for pid, st in starts.items()]

            def run():
                for _ in range(args.rounds):
                    src.sensor.queue.extend(batch)
                    pl.drain(flush=True)
                    pl.flush() if hasattr(pl, "flush") and callable(pl.flush) else pl.sink.flush()
            run()  # warm: caches (users, cgroups, socket tables) as in a running monitor
            results[f"exec-{level or 'default'}"] = cpu_per(run, args.rounds * len(starts))
        if args.only:
            levels = []
            for name, v in results.items():
                print(f"{name:22s} {v * 1e6:8.1f} us CPU per record")
            return 0
        # forks that never exec, filtered to exec,lost as the benchmark runs the monitor
        src = source()
        pl = pipeline(src, levels[-1], events=frozenset({"exec", "lost"}))
        base = 4_000_000

        ts = time.monotonic_ns() - 50_000_000
        # the forking parent: a live process the table knows from its exec (the monitor's own
        # children are never reported, so not this process)
        parent, pstart = next(iter(starts.items()))
        src.sensor.queue.append((0, raw_exec(parent, pstart, ts - 1000)))
        pl.drain(flush=True)
        samples = []
        for i in range(args.forks):
            pid = base + i
            samples.append((0, wire.encode(wire.RawFork(ts + i, pid, pid, 5 * NSEC_PER_TICK, parent,
                                                        parent, pstart * NSEC_PER_TICK, pid, 0,
                                                        0x7ffd00001000 + parent, 0x5000))))
            samples.append((0, wire.encode(wire.RawExit(ts + i + 1, pid, pid, 5 * NSEC_PER_TICK,
                                                        0, ts, b"stress-ng-fork", pid, 0))))

        def forks():
            q = src.sensor.queue
            for i in range(0, len(samples), 512):
                q.extend(samples[i:i + 512])
                pl.drain(flush=True)
        results["fork+exit"] = cpu_per(forks, args.forks)
        # the same forks with every event type written, as `make bench` runs the monitor
        src = source()
        pl = pipeline(src, levels[-1])
        src.sensor.queue.append((0, raw_exec(parent, pstart, ts - 1000)))
        pl.drain(flush=True)
        results["fork+exit, all events"] = cpu_per(forks, args.forks)
        # a storm: exec + exit of processes gone before the hold window ends (no procfs read),
        # every event type written, as `make bench` runs the monitor
        src = source()
        pl = pipeline(src, levels[-1])
        ts = time.monotonic_ns() - 50_000_000
        storm = []
        for i in range(args.forks):
            pid = base + args.forks + i
            storm.append((0, raw_exec(pid, 7, ts + 2 * i, ppid=parent,
                                      parent_start_boottime=pstart * NSEC_PER_TICK,
                                      argv=(b"/bench/bin/nop", b"--token", b"psb%06d" % i, b"x y"))))
            storm.append((0, wire.encode(wire.RawExit(ts + 2 * i + 1, pid, pid, 7 * NSEC_PER_TICK,
                                                      0, ts, b"nop", pid, 0))))

        def execs():
            q = src.sensor.queue
            for i in range(0, len(storm), 512):
                q.extend(storm[i:i + 512])
                pl.drain(flush=True)
        results["storm exec+exit"] = cpu_per(execs, args.forks)
        for name, v in results.items():
            print(f"{name:22s} {v * 1e6:8.1f} us CPU per record")
    finally:
        for p in kids:
            p.send_signal(signal.SIGKILL)
        for p in kids:
            p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
