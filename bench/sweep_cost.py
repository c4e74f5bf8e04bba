"""Cost of a procfs sweep per 1,000 processes, for each Depth.

Spawns N sleeping processes (default 1000), times ``userspace.sweep.scan`` over the whole host
at each depth, and prints milliseconds per 1,000 processes scanned. Run as root so that every
process is readable:

    sudo .venv/bin/python bench/sweep_cost.py [--procs 1000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from userspace.procfs import ProcFS  # noqa: E402
from userspace.process import read_process  # noqa: E402
from userspace.sweep import SweepStats, scan  # noqa: E402
from userspace.types import Depth  # noqa: E402


def spawn_sleepers(n: int) -> list[int]:
    # posix_spawn, not fork: a forked copy of this interpreter per sleeper would cost far more
    # memory and the children would all look like python.
    return [os.posix_spawn("/bin/sleep", ["sleep", "3600"], os.environ) for _ in range(n)]


def reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def time_scan(fs: ProcFS, depth: Depth, rounds: int) -> tuple[float, int, SweepStats]:
    best = float("inf")
    n = 0
    stats = SweepStats()
    for _ in range(rounds):
        stats = SweepStats()
        t0 = time.perf_counter()
        n = sum(1 for _ in scan(fs, depth, stats=stats))
        best = min(best, time.perf_counter() - t0)
    return best, n, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=1000, help="sleeping processes to spawn (default 1000)")
    ap.add_argument("--rounds", type=int, default=5, help="sweeps per depth; the best is reported")
    args = ap.parse_args(argv)

    fs = ProcFS()
    children = spawn_sleepers(args.procs)
    try:
        time.sleep(0.5)  # let every child finish exec so we do not time half-born processes
        print(f"kernel {platform.release()}, python {platform.python_version()}, cpus {os.cpu_count()}")
        for depth in (Depth.CHEAP, Depth.EXEC, Depth.FULL):
            secs, n, stats = time_scan(fs, depth, args.rounds)
            print(
                f"{depth.value:5s}: {n} processes in {secs * 1e3:7.1f} ms = {secs * 1e6 / n:6.0f} us/process"
                f" = {secs * 1e3 / n * 1000:7.1f} ms per 1000 processes"
                f" (gone={stats.gone} denied={stats.denied} parse={stats.parse_errors})"
            )
        # the per-event enrichment path: one process, CHEAP
        pid = children[0]
        t0 = time.perf_counter()
        for _ in range(1000):
            read_process(fs, pid, Depth.CHEAP)
        print(f"read_process(CHEAP) of one sleeper: {(time.perf_counter() - t0) * 1e3:.0f} us per call")
    finally:
        reap(children)
    return 0


if __name__ == "__main__":
    sys.exit(main())
