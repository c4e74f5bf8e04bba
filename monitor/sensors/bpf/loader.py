"""Load the BPF sensor with bcc and hand its raw records to the pipeline.

The only module that imports bcc (in the handover backend's loader child, or in this process
for the bcc backend). Everything it produces is bytes (wire.decode turns them into typed values)
plus lost-sample counts, so the rest of procsentry runs and is tested without BPF.
"""
from __future__ import annotations

import ctypes as ct
import inspect
import json
import os
import socket
import struct
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from monitor.sensors.bpf import limits, offsets, perfbuf, wire
from userspace.procfs import ProcFS, ProcFSError, default_root

DISABLE_ENV = "PROCSENTRY_DISABLE_BPF"  # set to 1 to make loading fail (tests of the fallbacks)
BCC_READER_ENV = "PROCSENTRY_BCC_READER"  # set to 1 to read with bcc even where perfbuf works
# How often poll() re-reads the BPF side's submit-failure counter, in seconds: a storm wakes the
# reader for every batch of samples, and a map lookup per wakeup would be a syscall each.
LOSS_CHECK_S = 0.1
_KEY_0, _IDLE = struct.pack("<I", 0), struct.pack("<I", 1)  # reader_idle[0] = 1: ring the doorbell


class SensorUnavailable(Exception):
    """BPF cannot be used here; the message is one sentence that says why and what to do."""


def bpf_dir() -> Path:
    """bpf/ in a checkout, or the monitor/bpf data package of an installed wheel."""
    package = Path(__file__).resolve().parents[2]  # monitor/
    for candidate in (package / "bpf", package.parent / "bpf"):
        if (candidate / "process.bpf.c").is_file():
            return candidate
    raise SensorUnavailable(f"the BPF sources (process.bpf.c) are not next to {package}: reinstall procsentry")


def _possible_cpus() -> list[int]:
    try:
        return perfbuf.possible_cpus()
    except (OSError, ValueError) as e:
        raise SensorUnavailable(f"cannot read the possible CPUs from sysfs ({e}): mount /sys") from None


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
    # The scratch array is indexed by bpf_get_smp_processor_id(): the highest id, not the count.
    flags = [f"-I{src.parent}", f"-DNR_CPUS_MAX={max(_possible_cpus()) + 1}"]
    flags += limits.cflags() + offsets.cflags(offs)
    return Build(src, flags)


@dataclass
class SensorStats:
    lost_per_cpu: dict[int, int] = field(default_factory=dict)
    records: int = 0

    @property
    def lost(self) -> int:
        return sum(self.lost_per_cpu.values())


# tracepoint -> handler in bpf/process.bpf.c
HOOKS = (("sched_process_exec", "on_sched_process_exec"),
         ("sched_process_fork", "on_sched_process_fork"),
         ("sched_process_exit", "on_sched_process_exit"))


def load_programs():
    """Compile and load (not attach) the sensor in this process: (bcc BPF object, prog fds)."""
    try:
        from bcc import BPF  # noqa: PLC0415 - the one bcc import
    except ImportError:
        raise SensorUnavailable(
            "bcc's Python bindings are not importable: install python3-bpfcc "
            "(Debian/Ubuntu) or python3-bcc (Fedora), and use a venv with "
            "--system-site-packages (sudo make run does both)") from None
    b = build()
    try:
        bpf = BPF(src_file=str(b.source).encode(), cflags=b.cflags)
        return bpf, [bpf.load_func(fn.encode(), BPF.RAW_TRACEPOINT).fd for _tp, fn in HOOKS]
    except Exception as e:  # bcc raises bare Exception for compile and load errors
        raise SensorUnavailable(
            f"bcc could not compile or load the sensor ({e}); check kernel headers at "
            f"/lib/modules/{os.uname().release}/build (sudo make run sets them up)") from None


def backend() -> type[Sensor]:
    """The backend for this host: our own perf reader where its memory-ordering assumptions
    hold (perfbuf.supported(): x86-64), bcc's reader elsewhere or when BCC_READER_ENV=1."""
    if perfbuf.supported() and os.environ.get(BCC_READER_ENV) != "1":
        return HandoverSensor
    return BccSensor


class Sensor(ABC):
    """The loaded programs and their perf buffers, whichever backend reads them.

    ``Sensor(perf_pages=, wakeup_events=)`` returns the backend() for this host, as
    ``pathlib.Path()`` returns a PosixPath: callers never choose. A backend subclass can also
    be constructed directly (the tests run both).

    Records are appended to ``self.queue`` as (cpu, bytes) during ``poll``; the caller drains
    it. Capture never waits on enrichment: poll returns as soon as the buffers are read. Loss
    accounting, the counters and the queue are the same for every backend; a backend only
    loads, reads the rings and the counter map, and closes.
    """

    batching = False  # True once wakeups are batched: a poll must then come every BATCHED_POLL_MS

    def __new__(cls, *args, **kwargs):
        return super().__new__(backend() if cls is Sensor else cls)

    def __init__(self, perf_pages: int = limits.PERF_PAGES,
                 wakeup_events: int = limits.WAKEUP_EVENTS) -> None:
        self.perf_pages = perf_pages
        self.wakeup_events = wakeup_events
        self.queue: deque[tuple[int, bytes]] = deque()
        self.stats = SensorStats()
        self._cpus: list[int] = []  # possible CPU ids: the order of a per-CPU map's values
        self._perf_lost: dict[int, int] = {}  # from PERF_RECORD_LOST, by the backend's reader
        self._submit_failed: dict[int, int] = {}  # from the BPF side's counter
        self._loss_checked = 0.0

    def start(self) -> None:
        if os.environ.get(DISABLE_ENV) == "1":
            raise SensorUnavailable(f"the BPF sensor is disabled by {DISABLE_ENV}=1")
        check_privileges()
        if self.perf_pages & (self.perf_pages - 1):
            raise ValueError(f"perf buffer pages must be a power of two, not {self.perf_pages}")
        self._cpus = _possible_cpus()
        self._start()

    def poll(self, timeout_ms: int) -> None:
        self._read(timeout_ms)
        self.account_losses()

    def account_losses(self, force: bool = False) -> None:
        """Lost samples per CPU, as soon as they happen.

        The kernel reports a full ring's losses in a PERF_RECORD_LOST written only when the
        next sample on that CPU finds room again: on a CPU that falls quiet after a burst the
        report can wait indefinitely (seen: a stalled reader, 400 execs, then no loss reported
        at all). The BPF side counts every failed bpf_perf_event_output per CPU at the moment
        it happens (COUNTER_SUBMIT_FAILED); both count the same samples, so the larger wins.
        Read at most every LOSS_CHECK_S."""
        now = time.monotonic()
        if force or now - self._loss_checked >= LOSS_CHECK_S:
            self._loss_checked = now
            try:
                self._submit_failed = self._per_cpu_counter(wire.COUNTERS.index("submit_failed"))
            except (OSError, KeyError, ValueError):
                pass
        merged = dict(self._perf_lost)
        for cpu, n in self._submit_failed.items():
            if n > merged.get(cpu, 0):
                merged[cpu] = n
        self.stats.lost_per_cpu = merged

    def _per_cpu_counter(self, index: int) -> dict[int, int]:
        """{cpu id: value} of one counter, CPUs at zero left out."""
        return {cpu: v for cpu, v in zip(self._cpus, self._counter_values(index)) if v}

    def counters(self) -> dict[str, int]:
        """Kernel-side counters summed over CPUs (events seen, threads skipped, submit errors)."""
        return {name: sum(self._counter_values(i)) for i, name in enumerate(wire.COUNTERS)}

    @property
    def max_block_ms(self) -> int:
        """Longest a poll may block without delaying samples (batched wakeups need a bound)."""
        return limits.BATCHED_POLL_MS if self.batching else 1000

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """tracepoint -> (runs, total ns in the BPF program), from the kernel's own accounting
        (counted only while sysctl kernel.bpf_stats_enabled=1; bench/bpf_cost.py turns it on).
        Empty where the backend cannot ask the kernel."""
        return {}

    # -- what a backend provides ------------------------------------------------------------------
    @abstractmethod
    def _start(self) -> None:
        """Load the programs, open a ring per online CPU, then attach (in that order, so that
        nothing is submitted before every ring is registered)."""

    @abstractmethod
    def _read(self, timeout_ms: int) -> None:
        """Wait up to timeout_ms, append every sample to self.queue and count PERF_RECORD_LOST
        into self._perf_lost."""

    @abstractmethod
    def _counter_values(self, index: int) -> list[int]:
        """One entry of the per-CPU `counters` map: a value per possible CPU, in self._cpus order
        (the kernel's bpf_percpu_array_copy walks for_each_possible_cpu)."""

    @abstractmethod
    def close(self) -> None:
        """Detach and release everything; safe before start and twice."""


class HandoverSensor(Sensor):
    """The default on x86-64: a child process compiles and loads the programs with bcc,
    passes the map and program file descriptors back over a socket (SCM_RIGHTS) and exits;
    this process attaches the programs (it owns the links) and reads the perf rings itself
    (perfbuf.PerfReader). The daemon never maps libbcc and LLVM and pays no ctypes callback
    per sample (perfbuf.py says why; the monitor's CPU and memory are in bench/RESULTS.md)."""

    def __init__(self, perf_pages: int = limits.PERF_PAGES,
                 wakeup_events: int = limits.WAKEUP_EVENTS) -> None:
        super().__init__(perf_pages, wakeup_events)
        self._reader: perfbuf.PerfReader | None = None
        # The events, counters, doorbell and reader_idle maps, a program per HOOK, then the links.
        self._fds: list[int] = []
        # PerfReader rings wake the reader every wakeup_events samples, exactly as asked; the
        # doorbell (bpf/process.bpf.c) wakes it on the first sample after it said it was idle.
        self.batching = wakeup_events > 1

    def _start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "monitor.sensors.bpf.loader", "--handover", str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                cwd=str(Path(__file__).resolve().parents[3]))
            child.close()
            msg, fds, _flags, _addr = socket.recv_fds(parent, 65536, 16)
            proc.wait()
        finally:
            parent.close()
            if child.fileno() >= 0:
                child.close()
        try:
            reply = json.loads(msg or b"{}")
        except ValueError:
            reply = {}
        if "error" in reply or not fds:
            for fd in fds:
                os.close(fd)
            raise SensorUnavailable(reply.get("error") or
                                    f"the loader process exited with status {proc.returncode}")
        self._fds = fds
        try:
            self._reader = perfbuf.PerfReader(self._events_fd, self.perf_pages, self.wakeup_events,
                                              doorbell_fd=self._doorbell_fd if self.batching else None)
        except OSError as e:
            self.close()
            raise SensorUnavailable(f"cannot open the perf buffers: {e.strerror}") from None
        self._perf_lost = self._reader.lost  # the reader counts PERF_RECORD_LOST straight into it
        # Attach last, once every CPU's buffer is registered: nothing is submitted into the void.
        try:
            for (tp, _fn), prog in zip(HOOKS, self._prog_fds):
                self._fds.append(perfbuf.raw_tracepoint_open(tp, prog))
        except OSError as e:
            self.close()
            raise SensorUnavailable(f"cannot attach to {tp}: {e.strerror}") from None

    @property
    def _events_fd(self) -> int:
        return self._fds[0]

    @property
    def _counters_fd(self) -> int:
        return self._fds[1]

    @property
    def _doorbell_fd(self) -> int:
        return self._fds[2]

    @property
    def _idle_fd(self) -> int:
        return self._fds[3]

    @property
    def _prog_fds(self) -> list[int]:
        return self._fds[4:4 + len(HOOKS)]

    @property
    def max_block_ms(self) -> int:
        return 1000  # past BATCHED_POLL_MS, _read arms the doorbell

    def _read(self, timeout_ms: int) -> None:
        """Up to BATCHED_POLL_MS, a plain poll. Longer (the pipeline holds nothing and has
        nothing due): arm the doorbell, collect what came before it was armed, and only if
        that was nothing sleep until a sample rings it or the time is up. An idle monitor so
        turns its loop every poll timeout (100 ms) instead of every 10 ms, and the first
        sample after a quiet spell is read at once instead of at the next 10 ms poll."""
        out: list = []
        reader = self._reader
        if timeout_ms <= limits.BATCHED_POLL_MS or not self.batching:
            reader.poll(timeout_ms, out)
        else:
            deadline = time.monotonic() + timeout_ms / 1000
            while True:
                try:
                    perfbuf.map_update(self._idle_fd, _KEY_0, _IDLE)
                except OSError:
                    reader.poll(limits.BATCHED_POLL_MS, out)  # cannot arm it: poll as before
                    break
                if reader.read(out):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # Woken with nothing (a bell left from a sample read before, or one a CPU rang
                # for an earlier arming): arm again before sleeping on.
                if reader.poll(left * 1000, out):
                    break
        if out:
            self.queue.extend(out)

    def _counter_values(self, index: int) -> list[int]:
        n = len(self._cpus)
        raw = perfbuf.map_lookup(self._counters_fd, struct.pack("<I", index), 8 * n)
        return list(struct.unpack(f"<{n}Q", raw))

    def program_stats(self) -> dict[str, tuple[int, int]]:
        return {tp: perfbuf.prog_run_stats(fd) for (tp, _fn), fd in zip(HOOKS, self._prog_fds)}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for fd in self._fds:  # closing the link fds detaches the programs
            os.close(fd)
        self._fds = []


class BccSensor(Sensor):
    """bcc in this process, with bcc's perf reader: for architectures where perfbuf's plain
    loads and stores on the ring are not enough (perfbuf.supported()), or BCC_READER_ENV=1."""

    def __init__(self, perf_pages: int = limits.PERF_PAGES,
                 wakeup_events: int = limits.WAKEUP_EVENTS) -> None:
        super().__init__(perf_pages, wakeup_events)
        self._bpf = None

    def _start(self) -> None:
        self._bpf, _progs = load_programs()
        try:
            self._open_buffers()
        except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
            self.close()
            raise SensorUnavailable(f"cannot open the perf buffers: {e}") from None
        try:
            for tp, fn in HOOKS:
                self._bpf.attach_raw_tracepoint(tp=tp.encode(), fn_name=fn.encode())
        except Exception as e:  # noqa: BLE001 - bcc raises bare Exception
            self.close()
            raise SensorUnavailable(f"cannot attach to the scheduler tracepoints: {e}") from None

    def _open_buffers(self) -> None:
        table = self._bpf[b"events"]
        queue = self.queue
        perf_lost = self._perf_lost
        string_at = ct.string_at

        def on_sample(cpu, data, size):
            queue.append((cpu, string_at(data, size)))

        def lost_for(cpu):
            def on_lost(count):
                perf_lost[cpu] = perf_lost.get(cpu, 0) + count
            return on_lost

        # bcc's public open_perf_buffer gives the lost callback no CPU; opening each CPU's
        # buffer ourselves lets lost samples be counted per CPU.
        opener = getattr(table, "_open_perf_buffer", None)
        params = inspect.signature(opener).parameters if opener else {}
        if opener and "cpu" in params:
            # Batched wakeups leave a quiet CPU's last samples in its ring until
            # perf_buffer_consume collects them (_read): batch only where bcc has both.
            self.batching = (self.wakeup_events > 1 and "wakeup_events" in params
                             and hasattr(self._bpf, "perf_buffer_consume"))
            for cpu in perfbuf.online_cpus():
                if "wakeup_events" in params:
                    opener(cpu, on_sample, self.perf_pages, lost_for(cpu),
                           self.wakeup_events if self.batching else 1)
                else:
                    opener(cpu, on_sample, self.perf_pages, lost_for(cpu))
        else:
            table.open_perf_buffer(on_sample, page_cnt=self.perf_pages, lost_cb=lost_for(-1))

    def _read(self, timeout_ms: int) -> None:
        self._bpf.perf_buffer_poll(timeout=timeout_ms)
        if self.batching:
            # With wakeup_events > 1 a CPU's buffer wakes the reader only every N samples;
            # the remainder is read here, so a quiet CPU's last samples wait at most one
            # poll timeout (max_block_ms).
            self._bpf.perf_buffer_consume()

    def _counter_values(self, index: int) -> list[int]:
        return [int(getattr(v, "value", v)) for v in self._bpf[b"counters"][ct.c_int(index)]]

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()  # detaches, closes the perf buffers and frees the maps
            self._bpf = None


def _handover(sock_fd: int) -> int:
    """Child side: compile and load, pass the map and program fds to the parent, exit."""
    sock = socket.socket(fileno=sock_fd)
    try:
        bpf, progs = load_programs()
    except SensorUnavailable as e:
        sock.sendall(json.dumps({"error": str(e)}).encode())
        return 1
    fds = [bpf[b"events"].map_fd, bpf[b"counters"].map_fd, bpf[b"doorbell"].map_fd,
           bpf[b"reader_idle"].map_fd, *progs]
    socket.send_fds(sock, [json.dumps({"ok": True}).encode()], fds)
    sock.close()
    return 0  # bcc's cleanup closes our copies; the parent's keep the maps and programs


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--handover":
        sys.exit(_handover(int(sys.argv[2])))
    print("usage: python -m monitor.sensors.bpf.loader --handover FD (used by monitor.sensors.bpf.loader.HandoverSensor)", file=sys.stderr)
    sys.exit(2)
