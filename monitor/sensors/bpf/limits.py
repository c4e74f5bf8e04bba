"""Capture limits: the one place they are set. They reach the BPF C as -D flags."""
from __future__ import annotations

ARGV_MAX_BYTES = 32768  # argv captured per exec; a power of two (the C masks with it)
FILENAME_MAX_BYTES = 4096  # the filename passed to execve, NUL included
PATH_MAX_BYTES = 4096  # components captured per resolved path (exe, cwd)
PATH_MAX_DEPTH = 64  # components walked per resolved path
PERF_PAGES = 256  # perf buffer pages per CPU (1 MiB with 4 KiB pages); --perf-pages
# Wake userspace every N samples per CPU (--wakeup-events). Batching wakeups cuts the per-event
# cost of a storm (one poll per N samples instead of per sample); the samples of a quiet CPU are
# then collected by a poll at least every BATCHED_POLL_MS while records are held, which bounds
# the added latency. A reader with nothing held sleeps longer once it has armed the doorbell
# (bpf/process.bpf.c), which the first sample rings (HandoverSensor._read; bcc's reader, which
# has no doorbell, keeps polling every BATCHED_POLL_MS).
WAKEUP_EVENTS = 16
BATCHED_POLL_MS = 10

assert ARGV_MAX_BYTES & (ARGV_MAX_BYTES - 1) == 0


def cflags() -> list[str]:
    return [
        f"-DARGV_MAX_BYTES={ARGV_MAX_BYTES}",
        f"-DFILENAME_MAX_BYTES={FILENAME_MAX_BYTES}",
        f"-DPATH_MAX_BYTES={PATH_MAX_BYTES}",
        f"-DPATH_MAX_DEPTH={PATH_MAX_DEPTH}",
    ]
