"""Sensors as the pipeline sees them: something to poll that yields ordered records.

A source has `name` (the events' `source`), `start()`, `poll(timeout_ms)`, `drain()` returning
[(kind, record, ts_ns)] sorted by ts_ns (CLOCK_MONOTONIC; the pipeline holds records for a few
milliseconds in that order before acting on them), `pending()`, `lost_per_cpu()`, `counters()`, `close()`,
and `handle(pipeline, rec)` for kinds the pipeline does not know itself.
"""
from __future__ import annotations

from monitor.sensors.bpf import limits, wire

_KIND = {wire.RawExec: "exec", wire.RawFork: "fork", wire.RawExit: "exit"}


class BpfSource:
    name = "bpf"

    def __init__(self, perf_pages: int = limits.PERF_PAGES,
                 wakeup_events: int = limits.WAKEUP_EVENTS, record_to=None) -> None:
        from monitor.sensors.bpf.loader import Sensor  # noqa: PLC0415 - keeps bcc out of non-BPF paths
        self.sensor = Sensor(perf_pages=perf_pages, wakeup_events=wakeup_events)
        self.record_to = record_to  # file object: raw records as hex lines (monitor --record)

    def start(self) -> None:
        self.sensor.start()

    def poll(self, timeout_ms: int) -> None:
        self.sensor.poll(min(timeout_ms, self.sensor.max_block_ms))

    def drain(self) -> list[tuple[str, object]]:
        q = self.sensor.queue
        out: list[tuple[str, object]] = []
        decode = wire.decode
        while q:
            _cpu, data = q.popleft()
            if self.record_to is not None:
                self.record_to.write(data.hex() + "\n")
            try:
                r = decode(data)
            except wire.DecodeError:
                out.append(("decode_error", None, 0))
                continue
            out.append((_KIND[type(r)], r, r.ts_ns))
        # Per-CPU buffers are drained one CPU after another: restore kernel order.
        out.sort(key=lambda rec: rec[2])
        return out

    def pending(self) -> int:
        return len(self.sensor.queue)

    def lost_per_cpu(self) -> dict[int, int]:
        return dict(self.sensor.stats.lost_per_cpu)

    def counters(self) -> dict[str, int]:
        return self.sensor.counters()

    def handle(self, pipeline, rec) -> None:  # every BPF kind is handled by the pipeline
        raise ValueError(f"unexpected record kind {rec[0]}")

    def close(self) -> None:
        self.sensor.close()


class NullSource:
    """No live sensor: for one-shot sweeps (`procsentry snapshot`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def start(self) -> None:
        pass

    def poll(self, timeout_ms: int) -> None:
        pass

    def drain(self) -> list:
        return []

    def pending(self) -> int:
        return 0

    def lost_per_cpu(self) -> dict[int, int]:
        return {}

    def counters(self) -> dict[str, int]:
        return {}

    def handle(self, pipeline, rec) -> None:
        raise ValueError(f"unexpected record kind {rec[0]}")

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


def choose(args, bpf_unavailable: str | None = None):
    """The sensor asked for, or with `auto` the best this host allows: BPF, else the process
    connector, else polling. Returns (source, note): the note says why this one and what it
    costs in completeness, for the start-up line "procsentry: sensor X (note)".
    bpf_unavailable: the reason BPF is already known not to load here (doctor), so not tried."""
    from monitor.sensors.bpf.loader import SensorUnavailable, check_privileges  # noqa: PLC0415

    wanted = args.sensor
    interval = getattr(args, "poll_interval", None) or 0.1
    why: list[str] = []  # why the better sensors were passed over
    if wanted == "auto" and bpf_unavailable is not None:
        why.append(f"BPF unavailable: {bpf_unavailable}")
    elif wanted in ("auto", "bpf"):
        record = getattr(args, "record", None)
        src = BpfSource(perf_pages=getattr(args, "perf_pages", None) or limits.PERF_PAGES,
                        wakeup_events=getattr(args, "wakeup_events", None) or limits.WAKEUP_EVENTS,
                        record_to=open(record, "w") if record else None)
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
    fs = _procfs(args)
    if wanted in ("auto", "connector"):
        from monitor.sensors.connector import ConnectorSource, ConnectorUnavailable  # noqa: PLC0415
        src = ConnectorSource(fs, backlog=getattr(args, "backlog", None) or 1024)
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
        src = PollSource(fs, interval_s=interval)
        src.start()
        return src, "; ".join([wanted, *why, COST["poll"].format(interval=interval)])
    raise NoSensor(f"sensor {wanted} is not available")


def _procfs(args):
    from userspace.procfs import ProcFS, default_root  # noqa: PLC0415
    return ProcFS(getattr(args, "proc_root", None) or default_root())


def probe_auto(bpf_unavailable: str | None = None) -> tuple[str, str]:
    """(name, note) of what `watch --sensor auto` would choose here, the sensor started and
    closed again (`procsentry doctor`)."""
    import argparse  # noqa: PLC0415
    try:
        src, note = choose(argparse.Namespace(sensor="auto"), bpf_unavailable)
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
