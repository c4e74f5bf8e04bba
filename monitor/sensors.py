"""Sensors as the pipeline sees them: something to poll that yields ordered records.

A source has `name` (the events' `source`), `start()`, `poll(timeout_ms)`, `drain()` returning
[(kind, record)] sorted by kernel time, `pending()`, `lost_per_cpu()`, `counters()`, `close()`,
and `handle(pipeline, rec)` for kinds the pipeline does not know itself.
"""
from __future__ import annotations

from monitor import limits, wire

_KIND = {wire.RawExec: "exec", wire.RawFork: "fork", wire.RawExit: "exit"}


class BpfSource:
    name = "bpf"

    def __init__(self, perf_pages: int = limits.PERF_PAGES,
                 wakeup_events: int = limits.WAKEUP_EVENTS, record_to=None) -> None:
        from monitor.loader import Sensor  # noqa: PLC0415 - keeps bcc out of non-BPF paths
        self.sensor = Sensor(perf_pages=perf_pages, wakeup_events=wakeup_events)
        self.record_to = record_to  # file object: raw records as hex lines (monitor --record)

    def start(self) -> None:
        self.sensor.start()

    def poll(self, timeout_ms: int) -> None:
        self.sensor.poll(timeout_ms)

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
                out.append(("decode_error", None))
                continue
            out.append((_KIND[type(r)], r))
        # Per-CPU buffers are drained one CPU after another: restore kernel order.
        out.sort(key=lambda kr: kr[1].ts_ns if kr[1] is not None else 0)
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


def choose(args):
    """The sensor asked for, or with `auto` the best this host allows: (source, note)."""
    from monitor.loader import SensorUnavailable, check_privileges  # noqa: PLC0415

    wanted = args.sensor
    if wanted in ("auto", "bpf"):
        src = BpfSource(perf_pages=args.perf_pages or limits.PERF_PAGES,
                        wakeup_events=args.wakeup_events or limits.WAKEUP_EVENTS,
                        record_to=open(args.record, "w") if args.record else None)
        try:
            src.start()
            return src, ""
        except SensorUnavailable as e:
            if wanted == "bpf":
                try:
                    check_privileges()
                    perm = False
                except SensorUnavailable:
                    perm = True
                raise NoSensor(str(e), permission=perm) from None
            raise NoSensor(f"{e} (no fallback sensor is available yet)") from None
    raise NoSensor(f"sensor {wanted} is not available")


def dump_bpf() -> int:
    """Print the exact source and compiler flags the BPF sensor is built with (bcc's --ebpf)."""
    from monitor.loader import SensorUnavailable, build  # noqa: PLC0415
    try:
        b = build()
    except SensorUnavailable as e:
        print(f"procsentry: {e}")
        return 1
    print(f"// {b.source}\n// cflags: {' '.join(b.cflags)}")
    print((b.source.parent / "events.h").read_text())
    print(b.source.read_text())
    return 0
