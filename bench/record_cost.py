"""CPU per process (fork + exec + exit records) through the BPF source's decode and the pipeline,
without a kernel: synthetic wire records, enrichment not reached, output to /dev/null. Works on
this tree and on a checkout from before the neutral records (run it from that checkout's root):
    .venv/bin/python bench/record_cost.py 20000
Figures: bench/SOAK.md."""
import collections
import os
import sys
import time

sys.path.insert(0, os.getcwd())  # the checkout being measured, whichever it is
N = int(sys.argv[1])
try:
    from monitor.sensors.bpf import wire
    NEW = True
except ImportError:
    from monitor import wire
    NEW = False
from monitor.output import Sink
from monitor.pipeline import Config, Pipeline
from userspace.procfs import ProcFS
from userspace.types import NSEC_PER_TICK

def raws(n, t0):
    out = []
    for i in range(n):
        pid = 400000 + i
        ts = t0 + i * 3000
        st = (10**9 + i) * NSEC_PER_TICK
        f = wire.RawFork(ts, pid, pid, st, 1, 1, 2 * NSEC_PER_TICK)
        e = wire.RawExec(ts + 1000, pid, pid, st, pid, 0, 1, 3, 2 * NSEC_PER_TICK, 1, 0, 0, 0, 0,
                         wire.UNSET_ID, wire.UNSET_ID, (1, 2, 3, 4, 5, 6, 7), 30, b"true",
                         b"/bin/true", None, b"/usr/bin/true", b"/root", (b"/bin/true", b"a", b"tok%d" % i))
        x = wire.RawExit(ts + 2000, pid, pid, st, 0, ts, b"true")
        out += [wire.encode(f), wire.encode(e), wire.encode(x)]
    return out

class Q:
    def __init__(self, data): self.queue = collections.deque((0, d) for d in data)
    class stats: lost_per_cpu = {}
    def counters(self): return {}
    def poll(self, ms): pass
    def account_losses(self, force=False): pass
    max_block_ms = 10

if NEW:
    from monitor.sensors.bpf.source import BpfSource
else:
    from monitor.sensors import BpfSource
src = BpfSource.__new__(BpfSource)
src.record_to = None
src._lost_seen = {}
fs = ProcFS("/proc")
sink = Sink("json", stream=open(os.devnull, "wb"))
p = Pipeline(src, sink, fs, Config(enrich_delay_ns=0))
data = raws(N, time.monotonic_ns())
src.sensor = Q(data)
t = time.process_time()
while src.sensor.queue:
    # batches like the loop's: 600 samples a turn
    batch = [src.sensor.queue.popleft() for _ in range(min(600, len(src.sensor.queue)))]
    src.sensor.queue, rest = collections.deque(batch), src.sensor.queue
    p.drain(flush=True)
    src.sensor.queue = rest
    sink.flush()
cpu = time.process_time() - t
print(f"{'new' if NEW else 'old'}: {cpu / N * 1e6:.1f} us per process ({N} processes)")
