"""Sensors: each turns one kind of kernel input into the sensor-neutral records of
monitor/records.py, and nothing else (no sensor imports or calls the pipeline).

A source (the `Source` protocol below) has `name` (the events' `source`), `start()`,
`poll(timeout_ms)`, `sync()` (take in everything already sent, without waiting: see
monitor/reconcile.py), `drain()` returning records sorted by ts_ns (CLOCK_MONOTONIC),
`pending()`, `lost_per_cpu()`, `counters()` and `close()`.

    bpf/        the BPF sensor: the only package that touches bcc
    connector   NETLINK_CONNECTOR process events (codec in cn_proc.py), enriched from procfs
    poll        incremental procfs sweeps
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Protocol

from monitor.sensors.bpf import limits


class Source(Protocol):
    name: str

    def start(self) -> None: ...
    def poll(self, timeout_ms: int) -> None: ...
    def sync(self) -> None: ...
    def drain(self) -> list: ...
    def pending(self) -> int: ...
    def lost_per_cpu(self) -> dict[int, int]: ...
    def counters(self) -> dict[str, int]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class SensorSettings:
    """What `watch` asks of the sensor; validated by the CLI before anything loads."""

    sensor: str = "auto"  # auto | bpf | connector | poll
    perf_pages: int = limits.PERF_PAGES  # a power of two
    wakeup_events: int = limits.WAKEUP_EVENTS
    poll_interval_s: float = 0.1
    backlog: int = 1024
    proc_root: str | None = None
    # --record (hidden): raw BPF records as hex lines, to this file. The CLI opens it, as it
    # opens --output (never through a symlink, never another user's file).
    record_to: IO[str] | None = None

    def problem(self) -> str | None:
        """Why these settings cannot work on any host (a usage error), or None."""
        if self.sensor not in ("auto", "bpf", "connector", "poll"):
            return f"unknown sensor {self.sensor!r}"
        if self.perf_pages <= 0 or self.perf_pages & (self.perf_pages - 1):
            return f"--perf-pages must be a power of two, not {self.perf_pages}"
        if self.wakeup_events <= 0:
            return "--wakeup-events must be positive"
        if self.poll_interval_s <= 0:
            return "--poll-interval must be positive"
        return None


class NullSource:
    """No live sensor: for one-shot sweeps (`procsentry snapshot`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None:
        pass

    def poll(self, timeout_ms: int) -> None:
        pass

    def sync(self) -> None:
        pass

    def drain(self) -> list:
        return []

    def pending(self) -> int:
        return 0

    def lost_per_cpu(self) -> dict[int, int]:
        return {}

    def counters(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


class NoSensor(Exception):
    def __init__(self, message: str, permission: bool = False) -> None:
        super().__init__(message)
        self.permission = permission


COST = {
    "bpf": "complete: argv, paths and exit status captured in the kernel",
    "connector": "real-time fork/exec/exit with exit status; argv, paths and namespaces read "
                 "from procfs afterwards, missing (enrichment: gone) for processes that exit first",
    "poll": "procfs sweeps every {interval:g} s: processes shorter than that are not seen, "
            "exec without fork is not seen, no exit status",
}


def choose(settings: SensorSettings, bpf_unavailable: str | None = None):
    """The sensor asked for, or with `auto` the best this host allows: BPF, else the process
    connector, else polling. Returns (source, note): the note says why this one and what it
    costs in completeness, for the start-up line "procsentry: sensor X (note)".
    `auto` falls back only for reasons of the host; settings are validated before (problem()).
    bpf_unavailable: the reason BPF is already known not to load here (doctor), so not tried."""
    from monitor.sensors.bpf.loader import SensorUnavailable, check_privileges  # noqa: PLC0415

    problem = settings.problem()
    if problem is not None:
        raise ValueError(problem)
    wanted = settings.sensor
    why: list[str] = []  # why the better sensors were passed over
    if wanted == "auto" and bpf_unavailable is not None:
        why.append(f"BPF unavailable: {bpf_unavailable}")
    elif wanted in ("auto", "bpf"):
        from monitor.sensors.bpf.source import BpfSource  # noqa: PLC0415
        src = BpfSource(perf_pages=settings.perf_pages, wakeup_events=settings.wakeup_events,
                        record_to=settings.record_to)
        try:
            src.start()
            return src, f"{wanted}: {COST['bpf']}"
        except SensorUnavailable as e:
            src.close()
            if wanted == "bpf":
                try:
                    check_privileges()
                    perm = False
                except SensorUnavailable:
                    perm = True
                raise NoSensor(str(e), permission=perm) from None
            why.append(f"BPF unavailable: {e}")
    fs = _procfs(settings)
    if wanted in ("auto", "connector"):
        from monitor.sensors.connector import ConnectorSource, ConnectorUnavailable  # noqa: PLC0415
        src = ConnectorSource(fs, backlog=settings.backlog)
        try:
            src.start()
            return src, "; ".join([wanted, *why, COST["connector"]])
        except ConnectorUnavailable as e:
            src.close()
            if wanted == "connector":
                raise NoSensor(str(e), permission=e.permission) from None
            why.append(f"connector unavailable: {e}")
    if wanted in ("auto", "poll"):
        from monitor.sensors.poll import PollSource  # noqa: PLC0415
        interval = settings.poll_interval_s
        src = PollSource(fs, interval_s=interval)
        src.start()
        return src, "; ".join([wanted, *why, COST["poll"].format(interval=interval)])
    raise NoSensor(f"sensor {wanted} is not available")


def _procfs(settings: SensorSettings):
    from userspace.procfs import ProcFS, default_root  # noqa: PLC0415
    return ProcFS(settings.proc_root or default_root())


def probe_auto(bpf_unavailable: str | None = None) -> tuple[str, str]:
    """(name, note) of what `watch --sensor auto` would choose here, the sensor started and
    closed again (`procsentry doctor`)."""
    try:
        src, note = choose(SensorSettings(), bpf_unavailable)
    except NoSensor as e:
        return "none", str(e)
    src.close()
    return src.name, note


def dump_bpf() -> int:
    """Print the exact source and compiler flags the BPF sensor is built with (bcc's --ebpf)."""
    from monitor.sensors.bpf.loader import SensorUnavailable, build  # noqa: PLC0415
    try:
        b = build()
    except SensorUnavailable as e:
        print(f"procsentry: {e}")
        return 1
    print(f"// {b.source}\n// cflags: {' '.join(b.cflags)}")
    print((b.source.parent / "events.h").read_text())
    print(b.source.read_text())
    return 0
