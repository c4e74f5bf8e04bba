"""Read the sensor's perf buffers without bcc: perf_event_open + mmap, in pure Python.

Why not bcc's own reader: it calls back into Python through ctypes once per sample, which is
most of the per-event cost of a storm, and keeping libbcc (with LLVM inside) mapped in the
daemon would be most of its resident memory for the whole life of the monitor (the monitor's
CPU and peak RSS are in bench/RESULTS.md). Here the programs are compiled and loaded by a
short-lived child (loader.HandoverSensor), which hands over the map and program file
descriptors; the daemon only needs the perf ring ABI, which is stable (see
include/uapi/linux/perf_event.h and tools/lib/bpf/libbpf.c perf_buffer__new).

The ring is read with plain loads and stores on the mmap. That is correct on x86-64, whose
memory model keeps loads ordered with loads and stores with earlier loads (the kernel's
perf_event_mmap_page comment asks for an rmb after reading data_head and an mb before writing
data_tail; both are compiler barriers there). On other architectures the loader uses bcc's
reader instead (`supported()`, loader.BccSensor).
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import select
import struct

PAGE = mmap.PAGESIZE
_SYSCALLS = {  # (perf_event_open, bpf)
    "x86_64": (298, 321),
}
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
# struct bpf_prog_info: run_time_ns and run_cnt (5.1+, counted while kernel.bpf_stats_enabled=1)
_PROG_INFO_SIZE = 256
_RUN_TIME_OFF, _RUN_CNT_OFF = 192, 200

# struct perf_event_attr, the PERF_ATTR_SIZE_VER0 prefix (64 bytes): type, size, config,
# sample_period, sample_type, read_format, flag bits, wakeup_events, bp_type, config1.
_ATTR = struct.Struct("<IIQQQQQIIQ")
# perf_event_mmap_page: data_head at 1024, data_tail at 1032, data_offset/size at 1040/1048.
_HEAD, _TAIL, _DATA_OFFSET, _DATA_SIZE = 1024, 1032, 1040, 1048
_U64 = struct.Struct("<Q")
_REC = struct.Struct("<IHH")  # perf_event_header: type, misc, size

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class PerfError(OSError):
    pass


def supported() -> bool:
    return platform.machine() in _SYSCALLS


def _syscall(nr: int, *args) -> int:
    ret = _libc.syscall(nr, *args)
    if ret < 0:
        e = ctypes.get_errno()
        raise PerfError(e, os.strerror(e))
    return ret


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, len(attr))
    return _syscall(_SYSCALLS[platform.machine()][1], ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    attr = struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0)
    _bpf(BPF_MAP_UPDATE_ELEM, attr)


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    attr = struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0)
    _bpf(BPF_MAP_LOOKUP_ELEM, attr)
    return v.raw


def raw_tracepoint_open(name: str, prog_fd: int) -> int:
    """Attach a loaded BPF_PROG_TYPE_RAW_TRACEPOINT program; returns the link fd (closing it
    detaches)."""
    n = ctypes.create_string_buffer(name.encode())
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI4x", ctypes.addressof(n), prog_fd))


def prog_run_stats(prog_fd: int) -> tuple[int, int]:
    """(run count, total run time in ns) of a loaded program; zeros unless bpf_stats is on."""
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", prog_fd, _PROG_INFO_SIZE, ctypes.addressof(info)))
    run_time, run_cnt = struct.unpack_from("<QQ", info.raw, _RUN_TIME_OFF)
    return run_cnt, run_time


def possible_cpus() -> list[int]:
    """Ids of every CPU that can ever come online, ascending. A per-CPU map lookup returns one
    value per possible CPU in this order (kernel/bpf/arraymap.c bpf_percpu_array_copy walks
    for_each_possible_cpu), and the highest id bounds bpf_get_smp_processor_id(). The ids
    need not be contiguous, so the count is len() and the bound is max() + 1."""
    return parse_cpu_list(_read_sysfs("/sys/devices/system/cpu/possible"))


def online_cpus() -> list[int]:
    """Ids of the CPUs online now: the ones that get a perf ring."""
    return parse_cpu_list(_read_sysfs("/sys/devices/system/cpu/online"))


def _read_sysfs(path: str) -> str:
    with open(path) as f:
        return f.read()


def parse_cpu_list(text: str) -> list[int]:
    """A sysfs CPU list ("0-3,8,10-11\\n", Documentation/admin-guide/cputopology.rst) as ids.
    ValueError on anything else."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


class _Ring:
    __slots__ = ("cpu", "fd", "mm", "data_off", "size", "mask")

    def __init__(self, cpu: int, pages: int, wakeup_events: int) -> None:
        attr = _ATTR.pack(PERF_TYPE_SOFTWARE, _ATTR.size, PERF_COUNT_SW_BPF_OUTPUT, 1,
                          PERF_SAMPLE_RAW, 0, 0, wakeup_events, 0, 0)
        buf = ctypes.create_string_buffer(attr, len(attr))
        self.cpu = cpu
        self.fd = _syscall(_SYSCALLS[platform.machine()][0], buf, ctypes.c_int(-1),
                           ctypes.c_int(cpu), ctypes.c_int(-1), ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
        try:
            self.mm = mmap.mmap(self.fd, (pages + 1) * PAGE, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(self.fd)
            raise
        data_off, size = struct.unpack_from("<QQ", self.mm, _DATA_OFFSET)
        if not data_off:  # kernels before 4.1 do not fill these: data starts at page 1
            data_off, size = PAGE, pages * PAGE
        self.data_off = data_off
        self.size = size
        self.mask = size - 1
        import fcntl  # noqa: PLC0415
        fcntl.ioctl(self.fd, PERF_EVENT_IOC_ENABLE, 0)

    def read(self, out: list, lost: dict[int, int]) -> int:
        """Append every complete sample to out as (cpu, bytes); count lost records."""
        mm = self.mm
        head = _U64.unpack_from(mm, _HEAD)[0]
        tail = _U64.unpack_from(mm, _TAIL)[0]
        if head == tail:
            return 0
        size, mask, base = self.size, self.mask, self.data_off
        start = tail & mask
        avail = head - tail
        if start + avail <= size:
            data = mm[base + start:base + start + avail]
        else:  # wrapped: join the two pieces once
            first = size - start
            data = mm[base + start:base + size] + mm[base:base + avail - first]
        pos = 0
        n = 0
        cpu = self.cpu
        unpack = _REC.unpack_from
        while pos + 8 <= avail:
            rtype, _misc, rsize = unpack(data, pos)
            if rsize < 8 or pos + rsize > avail:
                break
            if rtype == PERF_RECORD_SAMPLE:
                raw_size = struct.unpack_from("<I", data, pos + 8)[0]
                out.append((cpu, data[pos + 12:pos + 12 + raw_size]))
                n += 1
            elif rtype == PERF_RECORD_LOST:
                lost[cpu] = lost.get(cpu, 0) + struct.unpack_from("<Q", data, pos + 16)[0]
            pos += rsize
        _U64.pack_into(mm, _TAIL, tail + pos)
        return n

    def skip(self) -> None:
        """Discard everything in the ring (the doorbell's bytes carry nothing). Called every
        turn: the tail, a line the kernel reads, is written only when the ring is not empty."""
        head = _U64.unpack_from(self.mm, _HEAD)[0]
        if head != _U64.unpack_from(self.mm, _TAIL)[0]:
            _U64.pack_into(self.mm, _TAIL, head)

    def close(self) -> None:
        try:
            self.mm.close()
        finally:
            os.close(self.fd)


class PerfReader:
    """One perf ring per online CPU, registered in the BPF_PERF_OUTPUT map `map_fd`; and, with
    `doorbell_fd`, a one-page ring per CPU in that map that wakes the reader on every sample
    (see `doorbell` in bpf/process.bpf.c)."""

    def __init__(self, map_fd: int, pages: int, wakeup_events: int,
                 doorbell_fd: int | None = None) -> None:
        if pages & (pages - 1):
            raise ValueError("perf buffer pages must be a power of two")
        self.rings: list[_Ring] = []
        self.bells: list[_Ring] = []
        self.lost: dict[int, int] = {}
        self.epoll = select.epoll()
        try:
            for cpu in online_cpus():
                ring = _Ring(cpu, pages, wakeup_events)
                self.rings.append(ring)
                map_update(map_fd, struct.pack("<I", cpu), struct.pack("<I", ring.fd))
                self.epoll.register(ring.fd, select.EPOLLIN)
                if doorbell_fd is not None:
                    bell = _Ring(cpu, 1, 1)
                    self.bells.append(bell)
                    map_update(doorbell_fd, struct.pack("<I", cpu), struct.pack("<I", bell.fd))
                    self.epoll.register(bell.fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    def poll(self, timeout_ms: float, out: list) -> int:
        """Wait up to timeout_ms for a wakeup, then read every ring (not only the woken
        ones: with wakeup_events > 1 a quiet CPU's remainder is collected here too)."""
        try:
            self.epoll.poll(timeout_ms / 1000.0)
        except InterruptedError:
            pass
        except OSError as e:
            if e.errno != errno.EINTR:
                raise
        return self.read(out)

    def read(self, out: list) -> int:
        """Every sample in the rings now, without waiting. The doorbells are emptied first: a
        bell rung for a sample read here must not count as news after it."""
        for bell in self.bells:
            bell.skip()
        n = 0
        for ring in self.rings:
            n += ring.read(out, self.lost)
        return n

    def close(self) -> None:
        for ring in self.rings + self.bells:
            ring.close()
        self.rings = []
        self.bells = []
        self.epoll.close()
