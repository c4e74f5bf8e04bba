"""A reader that stops reading: memory stays bounded, every loss is reported, the stream resumes.

Before: `procsentry watch | (sleep 45; cat > file)` during a 60,000-exec storm peaked at 202 MB
RSS (the encoded events were held as orjson's bytes objects, 8-16 KiB of allocation each
whatever their length). Now the encoded events wait in one buffer bounded by --output-buffer;
past it the monitor waits for the reader, the kernel's perf buffers fill, and what they drop
is counted and reported as `lost` events.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.support.wait import until

pytestmark = pytest.mark.bpf

TRUE = os.path.realpath("/bin/true")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RSS_TARGET = 80 << 20
STORM = 20000


def test_a_stalled_reader_keeps_memory_bounded_and_every_loss_reported(progs, tmp_path):
    bound = 1 << 20
    # The monitor writes into a pipe nobody reads for now: a stalled consumer.
    mon = subprocess.Popen(
        [sys.executable, "-m", "monitor", "watch", "--format", "json", "--stats-interval", "1",
         "--sweep-interval", "600", "--output-buffer", str(bound)],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "stderr", "wb"), cwd=REPO)
    try:
        until(lambda: b"sensor bpf" in (tmp_path / "stderr").read_bytes(), 60, "the sensor line")
        time.sleep(2)  # the start-up sweep is written (and stalls in the pipe too)
        storm = subprocess.run([str(progs / "fork_storm"), str(STORM), TRUE],
                               capture_output=True, check=True, timeout=300)
        assert len(storm.stdout.split()) == STORM
        time.sleep(3)  # still stalled: the monitor waits, the kernel buffers are full
        # The reader comes back: everything held arrives, and then new events again.
        out = bytearray()

        def read_all():
            while chunk := os.read(mon.stdout.fileno(), 1 << 20):
                out.extend(chunk)

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        marker = f"resumed-{uuid.uuid4().hex[:8]}"

        def resumed():
            subprocess.run([TRUE, marker], check=True)  # again until one is seen: the first
            return marker.encode() in out               # may meet buffers still full
        until(resumed, 60, "a process started after the reader came back",
              lambda: f"{len(out)} bytes read")
        mon.send_signal(signal.SIGINT)
        assert mon.wait(60) == 0
        reader.join(30)
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait()
    events = [json.loads(line) for line in bytes(out).splitlines()]
    stats = [e for e in events if e["event"] == "stats"][-1]
    lost = [e for e in events if e["event"] == "lost"]
    # the storm's children: argv [true, tok-<i>], i unique (their PIDs wrap around)
    seen = {e["argv"][1] for e in events if e["event"] == "exec" and e["argv"] and len(e["argv"]) == 2
            and e["argv"][0] == TRUE and e["argv"][1].startswith("tok-")}
    # bounded: the output buffer never held much more than its bound, RSS within the target
    assert stats["output_buffer"]["bound_bytes"] == bound
    assert stats["output_buffer"]["peak_bytes"] <= bound + (64 << 10)
    assert stats["peak_rss_bytes"] <= RSS_TARGET, f"peak RSS {stats['peak_rss_bytes'] >> 20} MiB"
    # every loss is reported in the stream, and explains every exec that is not there
    assert stats["lost"] > 0, "the stall did not fill the kernel's buffers: nothing was tested"
    assert sum(e["count"] for e in lost) == stats["lost"]
    assert len(seen) + stats["lost"] >= STORM
    assert stats["dropped_writes"] == 0
