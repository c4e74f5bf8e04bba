"""Kernel-side cost of the sensor: nanoseconds spent in each BPF program per event.

Uses the kernel's own accounting (kernel.bpf_stats_enabled=1, then bpf_prog_info run_time_ns
and run_cnt) while a workload fork+execs /bin/true N times. The workload slowdown as a ratio
to a run without the sensor is measured by the benchmark harness (bench/), side by side.

    sudo .venv/bin/python bench/bpf_cost.py [N]
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from monitor.sensors.bpf.loader import Sensor  # noqa: E402

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    binary = os.path.join(tempfile.mkdtemp(), "fork_storm")
    subprocess.run(["cc", "-O1", "-o", binary, str(REPO / "tests/progs/fork_storm.c")], check=True)
    before = STATS.read_text().strip()
    sensor = Sensor()
    sensor.start()
    stop = threading.Event()

    def reader():  # keep the buffers drained, as the daemon would
        while not stop.is_set():
            sensor.poll(10)
            sensor.queue.clear()

    t = threading.Thread(target=reader)
    t.start()
    try:
        STATS.write_text("1")
        s0 = sensor.program_stats()
        subprocess.run([binary, str(n), "/bin/true"], stdout=subprocess.DEVNULL, check=True)
        s1 = sensor.program_stats()
    finally:
        STATS.write_text(before)
        stop.set()
        t.join()
        sensor.close()
    if not s1:
        print(f"the {type(sensor).__name__} backend reads no per-program statistics: run it "
              "without PROCSENTRY_BCC_READER=1 (x86-64)", file=sys.stderr)
        return 1
    print(f"kernel {os.uname().release}; {n} fork+exec+exit of /bin/true (other activity on the "
          "host is counted too)")
    for tp in s1:
        runs = s1[tp][0] - s0[tp][0]
        ns = s1[tp][1] - s0[tp][1]
        print(f"  {tp:<20} {runs:>7} runs  {ns / max(runs, 1):>7.0f} ns per run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
