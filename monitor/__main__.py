"""procsentry: a process monitor for host intrusion detection.

Every exec, fork and exit on the host, from eBPF tracepoints, enriched from procfs, as JSON lines.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

EX_OK = 0
EX_ERROR = 1
EX_USAGE = 2
EX_NOPERM = 77  # sysexits.h, as bcc's tools use it: privileges missing

EXAMPLES = """\
examples:
  sudo procsentry watch                      # every process event, JSON lines (text on a terminal)
  sudo procsentry watch --events exec --format text
  sudo procsentry watch --exe '/usr/bin/*sh' --uid www-data   # shells run by www-data
  sudo procsentry watch --output /var/log/procsentry.jsonl --stats-interval 60
  sudo procsentry watch --sensor connector   # without BPF: the netlink process connector
  sudo procsentry watch --dump-bpf           # print the BPF C and the compiler flags, then exit
  sudo procsentry snapshot --format text     # one sweep of procfs, like ps
  procsentry doctor                          # can this host run the BPF sensor?

exit status: 0 ok (also after SIGINT/SIGTERM or a closed pipe), 1 error, 2 usage,
77 missing privileges.
"""


def _csv(value: str) -> frozenset[str]:
    from monitor.events import EVENT_TYPES  # noqa: PLC0415
    items = frozenset(v.strip() for v in value.split(",") if v.strip())
    bad = items - set(EVENT_TYPES)
    if bad:
        raise argparse.ArgumentTypeError(f"unknown event type(s): {', '.join(sorted(bad))}; "
                                         f"choose from {', '.join(EVENT_TYPES)}")
    return items


def _user(value: str) -> int:
    """--uid: a number, or a user name looked up like `ps -u` does (digits are a number)."""
    if value.isdigit():
        return int(value)
    import pwd  # noqa: PLC0415
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no user named {value!r} on this host") from None


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (and status 2): the mistake and where to read more, not the
    whole usage block."""

    def error(self, message: str):
        self.exit(EX_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(kind):
    def parse(value: str):
        v = kind(value)
        if v <= 0:
            raise argparse.ArgumentTypeError("must be positive")
        return v
    return parse


def _power_of_two(value: str) -> int:
    v = int(value)
    if v <= 0 or v & (v - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two, not {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="procsentry", description=__doc__, epilog=EXAMPLES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("watch", help="stream process events", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--format", choices=("json", "text"), default=None,
                   help="default: text on a terminal, JSON lines otherwise")
    w.add_argument("--output", metavar="FILE", help="append events to FILE (created 0600; a symlink, a non-regular file or "
                        "another user's file is refused)")
    w.add_argument("--pid", type=int, help="only events of this process")
    w.add_argument("--uid", type=_user, metavar="USER",
                   help="only processes with this real or effective user (name or uid)")
    w.add_argument("--comm", help="only processes with this comm")
    w.add_argument("--exe", metavar="GLOB", help="only executables matching GLOB")
    w.add_argument("--events", type=_csv, metavar="LIST", help="e.g. exec,exit")
    w.add_argument("--container", metavar="ID", help="only processes in this container (id prefix)")
    w.add_argument("--sensor", choices=("auto", "bpf", "connector", "poll"), default="auto")
    w.add_argument("--sweep-interval", type=float, default=30.0, metavar="S",
                   help="reconciliation sweep period (0 disables; default 30)")
    w.add_argument("--poll-interval", type=_positive(float), default=0.1, metavar="S",
                   help="period of --sensor poll (default 0.1)")
    w.add_argument("--stats-interval", type=_positive(float), default=60.0, metavar="S")
    w.add_argument("--duration", type=_positive(float), metavar="S", help="stop after S seconds")
    w.add_argument("--count", type=_positive(int), metavar="N", help="stop after N process events")
    w.add_argument("--ancestry-depth", type=int, default=10, metavar="N")
    w.add_argument("--environ", action="store_true",
                   help="add environment variables (secret-looking values redacted)")
    w.add_argument("--perf-pages", type=_power_of_two, default=None, metavar="N",
                   help="perf buffer pages per CPU, a power of two (default 256)")
    w.add_argument("--wakeup-events", type=_positive(int), default=None, metavar="N",
                   help="wake the reader every N samples (default 1)")
    w.add_argument("--backlog", type=_positive(int), default=1024, metavar="N",
                   help="records in one batch beyond which procfs enrichment is skipped")
    w.add_argument("--enrich", choices=("minimal", "standard", "full"), default="standard",
                   help="procfs read per exec the kernel captured: minimal none, standard "
                        "<pid>/stat (default), full also status, cmdline, every fd and socket")
    w.add_argument("--enrich-delay", type=float, default=5.0, metavar="MS",
                   help="hold records this long before acting on them: execs whose process "
                        "exits within it are not read from procfs (default 5)")
    w.add_argument("--output-buffer", type=_positive(int), default=4 << 20, metavar="BYTES",
                   help="encoded events held in memory before they are written (default 4 MiB); "
                        "a reader that stalls longer makes the kernel's buffers drop (and count) records")
    w.add_argument("--proc-root", metavar="DIR", help="procfs to read (default: the host procfs, or its copy under $HOST_ROOT)")
    w.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)
    w.add_argument("--record", metavar="FILE", help=argparse.SUPPRESS)

    s = sub.add_parser("snapshot", help="one sweep of procfs")
    s.add_argument("--format", choices=("json", "text"), default=None)
    s.add_argument("--pid", type=int, action="append", help="only this PID (repeatable)")
    s.add_argument("--depth", choices=("cheap", "full"), default="full")
    s.add_argument("--environ", action="store_true")
    s.add_argument("--proc-root", metavar="DIR")

    d = sub.add_parser("doctor", help="check that this host can run the BPF sensor")
    d.add_argument("--format", choices=("text", "json"), default="text")
    d.add_argument("--no-load", action="store_true", help="skip the trial load of the programs")
    return p


def cmd_doctor(args) -> int:
    from monitor import doctor  # noqa: PLC0415
    return doctor.main(args.format, load=not args.no_load)


def cmd_snapshot(args) -> int:
    from monitor.output import Sink  # noqa: PLC0415
    from monitor.pipeline import Config, Pipeline  # noqa: PLC0415
    from monitor.sensors import NullSource  # noqa: PLC0415
    from userspace.procfs import ProcFS, default_root  # noqa: PLC0415
    from userspace.types import Depth  # noqa: PLC0415

    fs = ProcFS(args.proc_root or default_root())
    sink = Sink("ps" if args.format == "text" or (args.format is None and sys.stdout.isatty()) else "json")
    depth = Depth.FULL if args.depth == "full" else Depth.CHEAP
    pipeline = Pipeline(NullSource("sweep"), sink, fs, Config(environ=args.environ), depth=depth)
    pipeline.sweep_existing(pids=args.pid)
    sink.close()
    return EX_OK


def sensor_settings(args):
    from monitor.sensors import SensorSettings  # noqa: PLC0415
    from monitor.sensors.bpf import limits  # noqa: PLC0415
    return SensorSettings(
        sensor=args.sensor, perf_pages=args.perf_pages or limits.PERF_PAGES,
        wakeup_events=args.wakeup_events or limits.WAKEUP_EVENTS,
        poll_interval_s=args.poll_interval, backlog=args.backlog, proc_root=args.proc_root,
        record_path=args.record)


def cmd_watch(args) -> int:
    from monitor import sensors  # noqa: PLC0415
    from monitor.output import OutputRefused, Sink  # noqa: PLC0415
    from monitor.pipeline import Config, Filters, Pipeline  # noqa: PLC0415
    from userspace.procfs import ProcFS, default_root  # noqa: PLC0415

    if args.dump_bpf:
        return sensors.dump_bpf()
    # Everything the user asked for is checked before anything loads: a mistake in the options
    # is a usage error, never a reason to fall back to a weaker sensor; a path that cannot be
    # written is the user's to fix, found before anything is compiled or loaded.
    settings = sensor_settings(args)
    problem = settings.problem()
    if problem is not None:
        print(f"procsentry: {problem}", file=sys.stderr)
        return EX_USAGE
    try:
        sink = Sink(args.format or "auto", args.output)
    except OutputRefused as e:
        print(f"procsentry: --output: {e}", file=sys.stderr)
        return EX_USAGE
    try:
        source, note = sensors.choose(settings)
    except sensors.NoSensor as e:
        sink.close()
        print(f"procsentry: {e}", file=sys.stderr)
        return EX_NOPERM if e.permission else EX_ERROR
    print(f"procsentry: sensor {source.name}{' (' + note + ')' if note else ''}", file=sys.stderr)
    fs = ProcFS(args.proc_root or default_root())
    cfg = Config(
        sweep_interval_s=args.sweep_interval, stats_interval_s=args.stats_interval,
        duration_s=args.duration, count=args.count, ancestry_depth=args.ancestry_depth,
        backlog=args.backlog, environ=args.environ, output_buffer_bytes=args.output_buffer,
        enrich=args.enrich,
        enrich_delay_ns=int(max(0.0, args.enrich_delay) * 1_000_000),
        filters=Filters(pid=args.pid, uid=args.uid, comm=args.comm, exe=args.exe,
                        events=args.events, container=args.container))
    pipeline = Pipeline(source, sink, fs, cfg)

    def stop(signum, frame):
        pipeline.stop_requested = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        try:
            pipeline.run()
        finally:
            if not isinstance(sys.exc_info()[1], BrokenPipeError):
                pipeline.finish()
    except BrokenPipeError:
        # The reader went away (`| head -3`): that is how a pipeline says stop. Point stdout at
        # /dev/null so the interpreter's final flush does not complain, and exit 0.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EX_OK
    finally:
        source.close()
        try:
            sink.close()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        if sink.dropped_writes:
            print(f"procsentry: {sink.dropped_writes} events dropped: the output could not be "
                  "written", file=sys.stderr)
    return EX_OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("PROCSENTRY_LOG", "WARNING"),
                        format="procsentry: %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    handler = {"watch": cmd_watch, "snapshot": cmd_snapshot, "doctor": cmd_doctor}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EX_OK


if __name__ == "__main__":
    sys.exit(main())
