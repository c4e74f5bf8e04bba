"""procsentry: a process monitor for host intrusion detection.

Every exec, fork and exit on the host, from eBPF tracepoints, enriched from procfs, as JSON lines.
"""
from __future__ import annotations

import argparse
import dataclasses
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
  sudo procsentry watch --output relp://collector:2514 --output /var/log/procsentry.jsonl
  sudo procsentry watch --output relp+tls://collector:2514 --tls-ca /etc/ssl/fleet-ca.pem
  sudo procsentry watch --output 'redis://10.0.0.5:6379/procsentry:web1'
  sudo procsentry watch --sensor connector   # without BPF: the netlink process connector
  sudo procsentry watch --dump-bpf           # print the BPF C and the compiler flags, then exit
  sudo procsentry snapshot --format text     # one sweep of procfs, like ps
  procsentry doctor                          # can this host run the BPF sensor?
  sudo procsentry watch --rules sigma/rules/linux/process_creation --events alert
  procsentry rules check my-rules/           # which rules load, which are skipped and why
  procsentry detect --rules my-rules/ < recorded.jsonl   # replay a recorded stream offline

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
    w.add_argument("--output", metavar="DEST", action="append",
                   help="where events go (repeatable): FILE or file:FILE (appended, created 0600), "
                        "- (stdout), relp://HOST:PORT, relp+tls://HOST:PORT, redis://HOST:PORT/KEY "
                        "(?mode=list for RPUSH), rediss://HOST:PORT/KEY, syslog+tls://HOST:PORT "
                        "(no acknowledgement); network URLs take ?max_size=SIZE. Default: stdout. "
                        "A file that is a symlink, not a regular file or another user's is refused")
    w.add_argument("--tls-ca", metavar="FILE", help="CA certificate(s) that sign the collectors' certificates "
                   "(default: the system's CAs)")
    w.add_argument("--tls-cert", metavar="FILE", help="client certificate for TLS destinations")
    w.add_argument("--tls-key", metavar="FILE", help="key of --tls-cert")
    w.add_argument("--state-dir", metavar="DIR", default=None,
                   help="the persisted seq and the delivery spools (default $PROCSENTRY_STATE_DIR, "
                        "else /var/lib/procsentry as root, ~/.local/state/procsentry otherwise)")
    w.add_argument("--spool-size", metavar="SIZE", default="256m",
                   help="disk spool per network destination, e.g. 64m (default 256m); when full, "
                        "new events are dropped, counted and reported by a `dropped` event")
    w.add_argument("--drain-rate", type=float, default=10000.0, metavar="N",
                   help="events per second at most to each destination, so a recovering "
                        "collector is not flooded by the backlog (0: no cap; default 10000)")
    w.add_argument("--retry-max", type=_positive(float), default=30.0, metavar="S",
                   help="longest wait between reconnection attempts (exponential backoff "
                        "with jitter from 0.5 s; default 30)")
    w.add_argument("--ack-timeout", type=_positive(float), default=10.0, metavar="S",
                   help="connect, handshake and acknowledgement timeout (default 10)")
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
                   help="wake the reader every N samples per CPU (default 16; on x86-64 the first "
                        "sample after a quiet spell wakes it at once)")
    w.add_argument("--backlog", type=_positive(int), default=1024, metavar="N",
                   help="records in one batch beyond which procfs enrichment is skipped")
    w.add_argument("--enrich", choices=("minimal", "standard", "full"), default="full",
                   help="procfs read per exec the kernel captured: minimal none, standard "
                        "<pid>/stat, full (default) also status, cmdline, every fd and socket")
    w.add_argument("--enrich-delay", type=float, default=5.0, metavar="MS",
                   help="hold records this long before acting on them: execs whose process "
                        "exits within it are not read from procfs (default 5)")
    w.add_argument("--output-buffer", type=_positive(int), default=4 << 20, metavar="BYTES",
                   help="encoded events held in memory before they are written (default 4 MiB); "
                        "a reader that stalls longer makes the kernel's buffers drop (and count) records")
    w.add_argument("--proc-root", metavar="DIR", help="procfs to read (default: the host procfs, or its copy under $HOST_ROOT)")
    _detection_args(w)
    from monitor import agent  # noqa: PLC0415
    agent.add_options(w)  # --config, --max-size, --max-backups, --metrics, --state-dir
    w.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)
    w.add_argument("--record", metavar="FILE", help=argparse.SUPPRESS)

    s = sub.add_parser("snapshot", help="one sweep of procfs")
    s.add_argument("--format", choices=("json", "text"), default=None)
    s.add_argument("--pid", type=int, action="append", help="only this PID (repeatable)")
    s.add_argument("--depth", choices=("cheap", "full"), default="full")
    s.add_argument("--environ", action="store_true")
    s.add_argument("--proc-root", metavar="DIR")

    r = sub.add_parser("rules", help="Sigma rules: check which load")
    rsub = r.add_subparsers(dest="rules_command", required=True)
    rc = rsub.add_parser("check", help="load rule files and list each rule: loaded, or skipped with the reason")
    rc.add_argument("paths", nargs="+", metavar="PATH", help="rule files or directories")
    rc.add_argument("--format", choices=("text", "json"), default="text")

    dt = sub.add_parser("detect", help="replay a recorded JSON-lines stream (stdin) through the rules; print alerts")
    _detection_args(dt)
    dt.add_argument("--format", choices=("json", "text"), default="json")

    c = sub.add_parser("config", help="the settings file of watch: check it, or print a default one")
    csub = c.add_subparsers(dest="config_command", required=True)
    cc = csub.add_parser("check", help="validate FILE and print the effective settings")
    cc.add_argument("file", nargs="?", metavar="FILE",
                    help="default: $PROCSENTRY_CONFIG, else /etc/procsentry/procsentry.toml")
    csub.add_parser("default", help="print a commented default file")

    st = sub.add_parser("status", help="the running agent's last stats; exit 0 only if it "
                                       "is running and not losing events (3: not running)")
    st.add_argument("--state-dir", metavar="DIR", default=os.environ.get(
        "PROCSENTRY_STATE_DIR", "/var/lib/procsentry"))
    st.add_argument("--format", choices=("text", "json"), default="text")

    d = sub.add_parser("doctor", help="check that this host can run the BPF sensor")
    d.add_argument("--format", choices=("text", "json"), default="text")
    d.add_argument("--no-load", action="store_true", help="skip the trial load of the programs")
    return p


def _detection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", action="append", metavar="PATH", default=[],
                   help="Sigma rule file or directory (repeatable); alerts join the stream")
    p.add_argument("--no-builtin-rules", action="store_true",
                   help="do not load procsentry's built-in detections")


def _detector(args, probe=None):
    """The Detector for --rules/--no-builtin-rules, None when there is nothing to evaluate.
    A bad path is a usage error: one line on stderr, exit status 2 (SystemExit)."""
    if args.no_builtin_rules and not args.rules:
        return None
    from monitor.detect.engine import Detector  # noqa: PLC0415 - pySigma is a heavy import
    from monitor.detect.loader import RulesPathError  # noqa: PLC0415
    try:
        det = Detector.from_paths(args.rules, builtin=not args.no_builtin_rules, probe=probe)
    except RulesPathError as e:
        print(f"procsentry: --rules {e}", file=sys.stderr)
        raise SystemExit(EX_USAGE) from None
    return det


def _report_rules(det) -> None:
    """Each skipped rule once, with its id and reason, then a summary line (stderr)."""
    if det is None:
        return
    det.report_skipped(sys.stderr)
    print(f"procsentry: detection: {len(det.rules) + len(det.behaviours)} rules loaded, "
          f"{len(det.skipped)} skipped", file=sys.stderr)


def cmd_rules(args) -> int:
    from monitor.detect import replay  # noqa: PLC0415
    return replay.check(args.paths, args.format)


def cmd_detect(args) -> int:
    from monitor.detect import replay  # noqa: PLC0415
    det = _detector(args)
    if det is None:
        print("procsentry: no rules: --no-builtin-rules without --rules", file=sys.stderr)
        return EX_USAGE
    _report_rules(det)
    return replay.replay(det, sys.stdin.buffer, args.format)


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
    )


def delivery_options(args):
    """--output and the delivery options, checked before anything loads: (destinations,
    Options). Raises monitor.delivery.urls.UsageError with one line."""
    from monitor.delivery import urls  # noqa: PLC0415
    from monitor.delivery.worker import Options  # noqa: PLC0415

    dests = urls.parse_all(args.output, args.tls_ca, args.tls_cert, args.tls_key)
    spool = urls.parse_size(args.spool_size, "--spool-size")
    if spool < 64 << 10:
        raise urls.UsageError(f"--spool-size {args.spool_size}: at least 64k")
    if args.drain_rate < 0:
        raise urls.UsageError("--drain-rate must be 0 (no cap) or positive")
    return dests, Options(spool_size=spool, drain_rate=args.drain_rate, retry_max=args.retry_max,
                          timeout=args.ack_timeout)


def cmd_watch(args) -> int:
    from monitor import sensors  # noqa: PLC0415
    from monitor.delivery.fanout import FanOut  # noqa: PLC0415
    from monitor.delivery.state import StateError, default_state_dir  # noqa: PLC0415
    from monitor.delivery.urls import UsageError  # noqa: PLC0415
    from monitor.output import OutputRefused  # noqa: PLC0415
    from monitor.pipeline import Config, Filters, Pipeline  # noqa: PLC0415
    from userspace.procfs import ProcFS, default_root  # noqa: PLC0415

    try:
        dests, delivery = delivery_options(args)
    except UsageError as e:
        print(f"procsentry watch: {e}", file=sys.stderr)
        return EX_USAGE
    if args.dump_bpf:
        return sensors.dump_bpf()
    # Everything the user asked for is checked before anything loads: a mistake in the options
    # is a usage error, never a reason to fall back to a weaker sensor; a path that cannot be
    # written, or rules that cannot be read, are the user's to fix, found before anything is
    # compiled or loaded.
    settings = sensor_settings(args)
    problem = settings.problem()
    if problem is not None:
        print(f"procsentry: {problem}", file=sys.stderr)
        return EX_USAGE
    from monitor.detect.probe import LiveProbe  # noqa: PLC0415
    fs = ProcFS(args.proc_root or default_root())
    detector = _detector(args, probe=LiveProbe(fs))  # a bad rules path exits 2
    from monitor import agent  # noqa: PLC0415
    from monitor.rotate import Rotation, request_reopen  # noqa: PLC0415
    rotation = Rotation(args.max_size, args.max_backups) if args.max_size else None
    state_dir = args.state_dir or default_state_dir()
    try:
        sink = FanOut(dests, args.format or "auto", state_dir, delivery, rotation=rotation)
    except OutputRefused as e:
        print(f"procsentry: --output: {e}", file=sys.stderr)
        return EX_USAGE
    except StateError as e:
        print(f"procsentry: {e}", file=sys.stderr)
        return EX_ERROR
    except OSError as e:
        print(f"procsentry: cannot open {e.filename or 'an output'}: {e.strerror}", file=sys.stderr)
        return EX_ERROR
    if args.record:
        from monitor.output import open_output  # noqa: PLC0415
        try:
            record_fd = open_output(args.record)
            os.ftruncate(record_fd, 0)  # a recording of this run only
            settings = dataclasses.replace(settings, record_to=os.fdopen(record_fd, "w"))
        except OutputRefused as e:
            sink.close()
            print(f"procsentry: --record: {e}", file=sys.stderr)
            return EX_USAGE
    try:
        source, note = sensors.choose(settings)
    except sensors.NoSensor as e:
        sink.close()
        print(f"procsentry: {e}", file=sys.stderr)
        return EX_NOPERM if e.permission else EX_ERROR
    try:
        host_agent = agent.Agent(agent.AgentState(state_dir), args.metrics,
                                 args.stats_interval, source.name)
    except agent.AgentError as e:
        source.close()
        sink.close()
        print(f"procsentry: {e}", file=sys.stderr)
        return EX_ERROR
    print(f"procsentry: sensor {source.name}{' (' + note + ')' if note else ''}", file=sys.stderr)
    _report_rules(detector)
    sink.start()
    cfg = Config(
        sweep_interval_s=args.sweep_interval, stats_interval_s=args.stats_interval,
        duration_s=args.duration, count=args.count, ancestry_depth=args.ancestry_depth,
        backlog=args.backlog, environ=args.environ, output_buffer_bytes=args.output_buffer,
        enrich=args.enrich,
        enrich_delay_ns=int(max(0.0, args.enrich_delay) * 1_000_000),
        filters=Filters(pid=args.pid, uid=args.uid, comm=args.comm, exe=args.exe,
                        events=args.events, container=args.container))
    pipeline = Pipeline(source, sink, fs, cfg, detector=detector)
    host_agent.observe(pipeline)
    pipeline.emit_other(agent.start_event(host_agent.state, source.name, args.settings_hash,
                                          args.config))

    def stop(signum, frame):
        pipeline.stop_requested = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, request_reopen)  # logrotate: reopen --output by name
    clean = False
    try:
        try:
            pipeline.run()
        finally:
            if not isinstance(sys.exc_info()[1], BrokenPipeError):
                pipeline.finish()
        clean = True
    except BrokenPipeError:
        # The reader went away (`| head -3`): that is how a pipeline says stop. Point stdout at
        # /dev/null so the interpreter's final flush does not complain, and exit 0.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        clean = True
        return EX_OK
    finally:
        host_agent.close(clean)
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


def with_config(parser, args, argv) -> int | None:
    """Merge the settings file into `watch`'s parsed options (the command line wins), before
    cmd_watch sees them. EX_USAGE with one line when the file is unusable."""
    from monitor import config  # noqa: PLC0415
    try:
        config.apply(parser, args, argv)
    except config.ConfigError as e:
        print(f"procsentry: config: {e}", file=sys.stderr)
        return EX_USAGE
    if args.max_size and not args.output:
        print("procsentry: --max-size rotates the --output file: give --output FILE", file=sys.stderr)
        return EX_USAGE
    args.settings_hash = config.settings_hash(config.watch_parser(parser), args)
    return None


def cmd_config(parser, args) -> int:
    from monitor import config  # noqa: PLC0415
    w = config.watch_parser(parser)
    if args.config_command == "default":
        sys.stdout.write(config.render_default(w))
        return EX_OK
    path, _ = config.chosen_path(args.file)
    if path is None:
        print("procsentry: config: no file to check ($PROCSENTRY_CONFIG is empty)", file=sys.stderr)
        return EX_USAGE
    wargs = w.parse_args([])
    wargs.config = path
    try:
        config.apply(parser, wargs, ["watch"])
    except config.ConfigError as e:
        print(f"procsentry: config: {e}", file=sys.stderr)
        return EX_USAGE
    sys.stdout.write(f"# {path}: valid; the effective settings of `procsentry watch --config {path}`\n")
    sys.stdout.write(config.render_effective(w, wargs))
    return EX_OK


def cmd_status(args) -> int:
    from monitor import agent  # noqa: PLC0415
    return agent.status(args.state_dir, args.format)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("PROCSENTRY_LOG", "WARNING"),
                        format="procsentry: %(levelname)s %(name)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "config":
        return cmd_config(parser, args)
    if args.command == "watch" and (rc := with_config(parser, args, argv)) is not None:
        return rc
    handler = {"watch": cmd_watch, "snapshot": cmd_snapshot, "doctor": cmd_doctor,
               "rules": cmd_rules, "detect": cmd_detect, "status": cmd_status}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EX_OK


if __name__ == "__main__":
    sys.exit(main())
