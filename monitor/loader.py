"""Load the BPF sensor with bcc and hand its raw records to the pipeline.

The only module that imports bcc. Everything it produces is bytes (wire.decode turns them into
typed values) plus lost-sample counts, so the rest of procsentry runs and is tested without BPF.
"""
from __future__ import annotations

import ctypes as ct
import inspect
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from monitor import limits, offsets, wire
from userspace.procfs import ProcFS, ProcFSError, default_root

DISABLE_ENV = "PROCSENTRY_DISABLE_BPF"  # set to 1 to make loading fail (tests of the fallbacks)


class SensorUnavailable(Exception):
    """BPF cannot be used here; the message is one sentence that says why and what to do."""


def bpf_dir() -> Path:
    """bpf/ in a checkout, or the monitor/bpf data package of an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "bpf", here.parent / "bpf"):
        if (candidate / "process.bpf.c").is_file():
            return candidate
    raise SensorUnavailable(f"the BPF sources (process.bpf.c) are not next to {here}: reinstall procsentry")


def possible_cpus() -> int:
    """Highest possible CPU id + 1 (the scratch array is indexed by CPU id)."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def effective_caps() -> int:
    """This process's effective capability mask (CapEff in its status file), 0 if unreadable."""
    try:
        status = ProcFS(default_root()).read_bytes("self", "status")
        line = next(x for x in status.splitlines() if x.startswith(b"CapEff:"))
        return int(line.split()[1], 16)
    except (ProcFSError, StopIteration, ValueError, IndexError):
        return 0


def check_privileges() -> None:
    if os.geteuid() == 0:
        return
    # CAP_BPF (39) + CAP_PERFMON (38) suffice on 5.8+; CAP_SYS_ADMIN (21) on older kernels.
    caps = effective_caps()
    if caps & (1 << 21) or (caps & (1 << 39) and caps & (1 << 38)):
        return
    raise SensorUnavailable(
        "loading the BPF sensor needs root (or CAP_BPF and CAP_PERFMON): run it with sudo")


@dataclass
class Build:
    source: Path
    cflags: list[str]


def build(btf_path: str = offsets.BTF_PATH) -> Build:
    """Source file and compiler flags: limits, BTF-resolved offsets, CPU count."""
    src = bpf_dir() / "process.bpf.c"
    try:
        offs = offsets.load(btf_path)
    except offsets.OffsetsError as e:
        raise SensorUnavailable(str(e)) from None
    flags = [f"-I{src.parent}", f"-DNR_CPUS_MAX={possible_cpus()}"]
    flags += limits.cflags() + offsets.cflags(offs)
    return Build(src, flags)


@dataclass
class SensorStats:
    lost_per_cpu: dict[int, int] = field(default_factory=dict)
    records: int = 0

    @property
    def lost(self) -> int:
        return sum(self.lost_per_cpu.values())


class Sensor:
    """The loaded programs and their perf buffer.

    Records are appended to ``self.queue`` as (cpu, bytes) by bcc's callbacks during ``poll``;
    the caller drains it. Capture therefore never waits on enrichment: poll returns as soon as
    the per-CPU buffers are drained.
    """

    def __init__(self, perf_pages: int = limits.PERF_PAGES,
                 wakeup_events: int = limits.WAKEUP_EVENTS) -> None:
        self.perf_pages = perf_pages
        self.wakeup_events = wakeup_events
        self.queue: deque[tuple[int, bytes]] = deque()
        self.stats = SensorStats()
        self._bpf = None
        self._callbacks = []  # keep ctypes callbacks alive

    def start(self) -> None:
        if os.environ.get(DISABLE_ENV) == "1":
            raise SensorUnavailable(f"the BPF sensor is disabled by {DISABLE_ENV}=1")
        check_privileges()
        try:
            from bcc import BPF  # noqa: PLC0415 - the one bcc import
        except ImportError:
            raise SensorUnavailable(
                "bcc's Python bindings are not importable: install python3-bpfcc "
                "(Debian/Ubuntu) or python3-bcc (Fedora), and use a venv with "
                "--system-site-packages (sudo make run does both)") from None
        b = build()
        try:
            self._bpf = BPF(src_file=str(b.source).encode(), cflags=b.cflags)
        except Exception as e:  # bcc raises bare Exception for compile and load errors
            raise SensorUnavailable(
                f"bcc could not compile or load the sensor ({e}); check kernel headers at "
                f"/lib/modules/{os.uname().release}/build (sudo make run sets them up)") from None
        self._open_buffer()

    def _open_buffer(self) -> None:
        table = self._bpf[b"events"]
        queue = self.queue
        stats = self.stats
        string_at = ct.string_at

        def on_sample(cpu, data, size):
            queue.append((cpu, string_at(data, size)))

        def lost_for(cpu):
            def on_lost(count):
                stats.lost_per_cpu[cpu] = stats.lost_per_cpu.get(cpu, 0) + count
            return on_lost

        # bcc's public open_perf_buffer gives the lost callback no CPU; opening each CPU's
        # buffer ourselves lets lost samples be counted per CPU.
        opener = getattr(table, "_open_perf_buffer", None)
        params = inspect.signature(opener).parameters if opener else {}
        if opener and "cpu" in params:
            from bcc.utils import get_online_cpus  # noqa: PLC0415
            for cpu in get_online_cpus():
                if "wakeup_events" in params:
                    opener(cpu, on_sample, self.perf_pages, lost_for(cpu), self.wakeup_events)
                else:
                    opener(cpu, on_sample, self.perf_pages, lost_for(cpu))
        else:
            table.open_perf_buffer(on_sample, page_cnt=self.perf_pages, lost_cb=lost_for(-1))

    def poll(self, timeout_ms: int) -> None:
        self._bpf.perf_buffer_poll(timeout=timeout_ms)

    def counters(self) -> dict[str, int]:
        """Kernel-side counters summed over CPUs (events seen, threads skipped, submit errors)."""
        table = self._bpf[b"counters"]
        out = {}
        for i, name in enumerate(wire.COUNTERS):
            out[name] = int(sum(v.value if hasattr(v, "value") else v for v in table[ct.c_int(i)]))
        return out

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
