"""What `watch` needs to run as a host agent: its state files, the `start` event, the metrics
endpoint and `procsentry status`.

State directory (--state-dir, default /var/lib/procsentry; the unit's StateDirectory=):
  agent.lock   flock'ed by the running agent: one agent per state directory.
  run.json     the run marker: written `running` at start and `stopped` at an orderly exit, so
               the next start can tell a clean stop from a crash (SIGKILL, OOM kill, a crash of
               the interpreter, power loss: anything that did not reach the orderly exit).
  status.json  the last `stats` the agent computed, written (atomically) each time it emits
               one, for `procsentry status`.
Every file is opened relative to the checked directory descriptor, never through a symlink,
and created 0600; the directory itself must be ours and not writable by others.

Metrics (--metrics ADDR:PORT, off by default): the last `stats` event in Prometheus text format,
served by prometheus_client from a daemon thread. The collector reads the very StatsEvent the
pipeline emitted (never the live counters from another thread), so what is scraped equals the
stream's last `stats` event exactly; it is as fresh as --stats-interval.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import stat
import sys
import threading
import time
from typing import Any, Iterator

from monitor.events import StartEvent, StatsEvent
from monitor.trusted import Untrusted, open_own_dir, replace_own_file

DEFAULT_STATE_DIR = "/var/lib/procsentry"
STATE_ENV = "PROCSENTRY_STATE_DIR"


class AgentError(Exception):
    """One line for the user: the state directory or the metrics address cannot be used."""


def version() -> str:
    try:
        from importlib.metadata import version as v  # noqa: PLC0415
        return v("procsentry")
    except Exception:  # noqa: BLE001 - not installed as a distribution: a bare checkout
        return "unknown"


# -- options -----------------------------------------------------------------------------------
def _size(value: str) -> int:
    import argparse  # noqa: PLC0415

    from monitor.rotate import parse_size  # noqa: PLC0415
    try:
        return parse_size(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _backups(value: str) -> int:
    import argparse  # noqa: PLC0415
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return n


def metrics_address(value: str) -> str:
    """--metrics: checked and normalised to HOST:PORT (kept as text, so the effective settings
    print back as they were given)."""
    host, port = parse_address(value)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(value: str) -> tuple[str, int]:
    """'PORT', ':PORT', 'HOST:PORT' or '[V6]:PORT' -> (host, port); the host defaults to
    127.0.0.1 (the counters are not for the network unless the operator says so)."""
    import argparse  # noqa: PLC0415
    host, sep, port = str(value).rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not ADDRESS:PORT: {value!r}") from None
    if not 0 < p < 65536:
        raise argparse.ArgumentTypeError(f"port {p} out of range")
    return host, p


def add_options(w) -> None:
    """The host-agent options of `watch`. --state-dir is shared with delivery (issue 14): it is
    added here only when the parser does not have it yet, with the same default."""
    w.add_argument("--config", metavar="FILE",
                   help="settings file (TOML; default /etc/procsentry/procsentry.toml when it "
                        "exists, or $PROCSENTRY_CONFIG); options given here override it")
    w.add_argument("--max-size", type=_size, metavar="SIZE",
                   help="rotate the --output file before it grows past SIZE (e.g. 100m); "
                        "default: no rotation")
    w.add_argument("--max-backups", type=_backups, default=5, metavar="N",
                   help="rotated files to keep: FILE.1 (newest) .. FILE.N (default 5)")
    w.add_argument("--metrics", type=metrics_address, metavar="ADDR:PORT",
                   help="serve the stats counters in Prometheus text format at "
                        "http://ADDR:PORT/metrics (ADDR defaults to 127.0.0.1; default: off)")
    if "--state-dir" not in w._option_string_actions:
        w.add_argument("--state-dir", metavar="DIR",
                       default=os.environ.get(STATE_ENV, DEFAULT_STATE_DIR),
                       help="the agent's state: run marker and status (default "
                            "/var/lib/procsentry, or $PROCSENTRY_STATE_DIR)")


# -- the state directory -----------------------------------------------------------------------
def _checked_dir(path: str, create: bool) -> int:
    if create:
        try:
            os.makedirs(path, 0o700, exist_ok=True)
        except OSError as e:
            raise AgentError(f"{path}: cannot create ({e.strerror})") from None
    try:
        return open_own_dir(path, create=False)
    except Untrusted as e:
        raise AgentError(str(e)) from None


def _read_json(dir_fd: int, name: str) -> dict | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _write_json(dir_fd: int, name: str, data: dict) -> None:
    replace_own_file(dir_fd, name, json.dumps(data, default=_plain, sort_keys=True).encode() + b"\n")


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)


def read_status(state_dir: str) -> dict | None:
    try:
        fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_json(fd, "status.json")
    finally:
        os.close(fd)


def _procfs():
    from userspace.procfs import ProcFS, default_root  # noqa: PLC0415
    return ProcFS(default_root())


def _start_ticks(pid: int) -> int | None:
    """The process's start time (stat field 22): with the pid, it names one process."""
    from userspace.procfs import ProcFSError  # noqa: PLC0415
    from userspace.process import read_stat  # noqa: PLC0415
    try:
        return read_stat(_procfs(), pid).starttime
    except ProcFSError:
        return None


class AgentState:
    """The locked state directory of one running agent."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = _checked_dir(path, create=True)
        try:
            self._lock = os.open("agent.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o600, dir_fd=self.fd)
        except OSError as e:
            os.close(self.fd)
            raise AgentError(f"{path}/agent.lock: cannot open ({e.strerror})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lock)
            os.close(self.fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AgentError(f"{path}: another procsentry is running with this state "
                                 "directory (give another with --state-dir)") from None
            raise AgentError(f"{path}/agent.lock: cannot lock ({e.strerror})") from None
        self.previous = _read_json(self.fd, "run.json")
        self.started = _now()
        self.boot_id = _boot_id()
        self._last_loss: int | None = None
        self._write_run("running")

    def _write_run(self, state: str, stopped: str | None = None) -> None:
        _write_json(self.fd, "run.json", {
            "state": state, "pid": os.getpid(), "started": self.started, "stopped": stopped,
            "boot_id": self.boot_id, "version": version()})

    def previous_end(self) -> tuple[str | None, str | None, str | None]:
        """(how the previous run ended, when it started, when it stopped)."""
        p = self.previous
        if not p or p.get("state") not in ("running", "stopped"):
            return None, None, None
        end = "clean" if p["state"] == "stopped" else "crash"
        return end, p.get("started"), p.get("stopped")

    def write_status(self, stats: StatsEvent, extra: dict) -> None:
        loss = losses(stats)
        data = {"pid": os.getpid(), "start_ticks": _start_ticks(os.getpid()),
                "updated": time.time(), "started": self.started, "version": version(),
                "loss": loss, "loss_before": self._last_loss, "stats": stats, **extra}
        self._last_loss = loss
        try:
            _write_json(self.fd, "status.json", data)
        except OSError as e:
            print(f"procsentry: cannot write {self.path}/status.json ({e.strerror})", file=sys.stderr)

    def stopped(self) -> None:
        """The orderly exit: the next start reports a clean stop."""
        try:
            self._write_run("stopped", _now())
        except OSError as e:
            print(f"procsentry: cannot write {self.path}/run.json ({e.strerror})", file=sys.stderr)

    def close(self) -> None:
        for fd in (self._lock, self.fd):
            os.close(fd)


def losses(stats: StatsEvent) -> int:
    """Everything the agent counts as lost: samples lost in the kernel, events that could not be
    written, and what delivery dropped (once destinations exist)."""
    total = stats.lost + stats.dropped_writes
    for figures in (getattr(stats, "delivery", None) or {}).values():
        total += getattr(figures, "dropped", 0) or 0
    return total


def _now() -> str:
    ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def _boot_id() -> str | None:
    from userspace.procfs import ProcFSError  # noqa: PLC0415
    try:
        return _procfs().boot_id()
    except ProcFSError:
        return None


def start_event(state: AgentState, sensor: str, settings_hash: str, config_path: str | None) -> StartEvent:
    end, prev_start, prev_stop = state.previous_end()
    return StartEvent(event="start", time=state.started, source=sensor, version=version(),
                      sensor=sensor, settings_hash=settings_hash, config=config_path,
                      previous_end=end, previous_start=prev_start, previous_stop=prev_stop)


# -- metrics -----------------------------------------------------------------------------------
GAUGES = frozenset({"uptime_s", "queue_depth", "queue_peak", "table_size", "rss_bytes",
                    "peak_rss_bytes", "pending", "spool_bytes", "connected", "output_buffer"})
LABELS = {"events": "type", "lost_per_cpu": "cpu", "enrichment": "outcome", "reconcile": "what",
          "kernel": "counter", "delivery": "destination", "output_buffer": "what",
          "cgroups": "what", "socket_table": "what"}
RENAME = {"lost": "lost_samples", "missed": "missed_processes", "cpu_time_s": "cpu_seconds",
          "uptime_s": "uptime_seconds", "rss_bytes": "resident_memory_bytes",
          "peak_rss_bytes": "peak_resident_memory_bytes", "events": "events",
          "kernel": "kernel_events"}
SKIP = frozenset({"event", "time", "source", "schema", "seq", "host"})


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


class StatsCollector:
    """prometheus_client collector over the last StatsEvent. Every numeric field becomes a
    metric, a dict of numbers a labelled one, a dict of records (delivery's per-destination
    figures) one metric per numeric member: fields added to `stats` later are exported too."""

    def __init__(self) -> None:
        self.last: StatsEvent | None = None

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415
        from monitor.schema import DOCS  # noqa: PLC0415

        stats = self.last
        if stats is None:
            return
        for f in dataclasses.fields(stats):
            if f.name in SKIP:
                continue
            value = getattr(stats, f.name)
            name = "procsentry_" + RENAME.get(f.name, f.name)
            doc = DOCS.get(f.name, f.name)
            gauge = f.name in GAUGES
            if isinstance(value, dict):
                label = LABELS.get(f.name, "key")
                items = list(value.items())
                if items and dataclasses.is_dataclass(items[0][1]):
                    for member in dataclasses.fields(items[0][1]):
                        fam = (GaugeMetricFamily if member.name in GAUGES else CounterMetricFamily)(
                            f"{name}_{member.name}", f"{doc} ({member.name})", labels=[label])
                        for key, rec in items:
                            n = _number(getattr(rec, member.name))
                            if n is not None:
                                fam.add_metric([str(key)], n)
                        yield fam
                    continue
                fam = (GaugeMetricFamily if gauge else CounterMetricFamily)(name, doc, labels=[label])
                for key, v in items:
                    n = _number(v)
                    if n is not None:
                        fam.add_metric([str(key)], n)
                    elif isinstance(v, dict):  # one level down (e.g. alerts per rule)
                        sub = CounterMetricFamily(f"{name}_{key}", f"{doc} ({key})", labels=["key"])
                        for k2, v2 in v.items():
                            n2 = _number(v2)
                            if n2 is not None:
                                sub.add_metric([str(k2)], n2)
                        yield sub
                yield fam
            else:
                n = _number(value)
                if n is not None:
                    yield (GaugeMetricFamily if gauge else CounterMetricFamily)(name, doc, value=n)


# The endpoint is reachable by every local user (127.0.0.1), and prometheus_client's own server
# gives each connection a thread and a descriptor for as long as the client likes, and reads up
# to 100 header lines of 64 KiB each: one user holding 1,000 idle connections used up the
# agent's 1024 descriptors (the sensor could no longer open /proc: a process ran unseen; the
# accept loop spun on EMFILE at 94 % CPU; status.json could not be written), and 100
# connections sending big headers took 1.6 GB. So the server here bounds all three: at most
# METRICS_CLIENTS connections at once (a new one shuts down the oldest, so clients that hold a
# connection open cannot keep a scraper out), METRICS_DEADLINE seconds for a whole exchange,
# and METRICS_REQUEST_BYTES read per request (a scrape sends a few hundred).
METRICS_CLIENTS = 8
METRICS_DEADLINE = 10.0
METRICS_REQUEST_BYTES = 64 << 10
# Requests served per second, on average (a bucket of as many): the answer only changes once a
# --stats-interval, and 8 clients scraping in a loop (1,267 scrapes/s) took a whole CPU of the
# agent's, the interpreter lock the pipeline needs. Beyond it the accept loop waits.
METRICS_RATE = 20.0


class _Capped:
    """The request stream, cut after `left` bytes (EOF: the request ends there)."""

    def __init__(self, f, left: int) -> None:
        self._f = f
        self._left = left

    def _take(self, read, size) -> bytes:
        n = self._left if size is None or size < 0 else min(size, self._left)
        data = read(n) if n else b""
        self._left -= len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._take(self._f.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._take(self._f.readline, size)

    def close(self) -> None:
        self._f.close()


def _metrics_server(address: tuple[str, int], app):
    import socket  # noqa: PLC0415
    from socketserver import ThreadingMixIn  # noqa: PLC0415
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server  # noqa: PLC0415

    class Handler(WSGIRequestHandler):
        timeout = METRICS_DEADLINE  # each recv and send; the whole exchange: service_actions

        def setup(self) -> None:
            super().setup()
            self.rfile = _Capped(self.rfile, METRICS_REQUEST_BYTES)

        def log_message(self, *args) -> None:
            pass  # a request is no news

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        request_queue_size = 64  # socketserver's 5 overflowed under a burst: SYNs dropped, 1 s waits
        address_family = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM,
                                            flags=socket.AI_PASSIVE)[0][0]

        def server_activate(self) -> None:
            self.clients: dict = {}  # connection -> its deadline (monotonic), oldest first
            self.lock = threading.Lock()
            self.tokens, self.refilled = METRICS_RATE, time.monotonic()
            super().server_activate()

        def process_request(self, request, client_address) -> None:
            now = time.monotonic()  # only this (the accept loop's) thread touches the bucket
            self.tokens = min(METRICS_RATE, self.tokens + (now - self.refilled) * METRICS_RATE)
            self.refilled = now
            if self.tokens < 1:
                # Wait for the next token before taking more: meanwhile connections queue in
                # the listen backlog (then the kernel drops SYNs), which costs the agent nothing.
                # Closing each one at once still cost a quarter of a CPU under a flood.
                time.sleep((1 - self.tokens) / METRICS_RATE)
                self.tokens = 1.0
                self.refilled = time.monotonic()
            self.tokens -= 1
            with self.lock:
                live = len(self.clients)
                if live >= 2 * METRICS_CLIENTS:  # the evicted ones have not ended yet
                    request.close()
                    return
                if live >= METRICS_CLIENTS:
                    oldest = next((r for r, d in self.clients.items() if d), None)
                    if oldest is not None:
                        self._end(oldest)
                self.clients[request] = time.monotonic() + METRICS_DEADLINE
            super().process_request(request, client_address)

        def _end(self, request) -> None:
            """Wake the connection's thread (its recv or send returns); it closes it. Called
            with the lock held, and only for connections not yet closed: shutdown_request
            takes them out of self.clients under the same lock before it closes them, so the
            descriptor cannot have been reused by another file."""
            self.clients[request] = 0.0
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def service_actions(self) -> None:  # serve_forever calls it every 0.5 s
            now = time.monotonic()
            with self.lock:
                for request, deadline in list(self.clients.items()):
                    if 0.0 < deadline < now:
                        self._end(request)

        def shutdown_request(self, request) -> None:
            with self.lock:
                self.clients.pop(request, None)
                super().shutdown_request(request)

        def handle_error(self, request, client_address) -> None:
            pass  # a client that went away or was cut off: not the agent's error to print

    return make_server(address[0], address[1], app, Server, handler_class=Handler)


def serve_metrics(address: tuple[str, int], collector: StatsCollector):
    """Start the endpoint (a daemon thread); returns the server. AgentError if it cannot bind."""
    from prometheus_client import CollectorRegistry, make_wsgi_app  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server = _metrics_server(address, make_wsgi_app(registry))
    except OSError as e:
        raise AgentError(f"--metrics {address[0]}:{address[1]}: cannot listen ({e.strerror})") from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class Agent:
    """Ties the pieces to a running pipeline: every stats event the pipeline computes goes to
    the metrics collector and to status.json; the orderly exit marks the run stopped."""

    def __init__(self, state: AgentState, metrics: str | None, stats_interval: float,
                 sensor: str) -> None:
        self.state = state
        self.collector = StatsCollector()
        self.server = serve_metrics(parse_address(metrics), self.collector) if metrics else None
        self.metrics = metrics
        self.stats_interval = stats_interval
        self.sensor = sensor
        self._lock = threading.Lock()

    def observe(self, pipeline) -> None:
        """Wrap pipeline.stats (which the pipeline thread calls for every stats event it emits,
        the final one included) so each result is also published: no edit to the loop."""
        compute = pipeline.stats

        def stats() -> StatsEvent:
            ev = compute()
            self.publish(ev)
            return ev

        pipeline.stats = stats

    def publish(self, ev: StatsEvent) -> None:
        self.collector.last = ev
        self.state.write_status(ev, {"stats_interval": self.stats_interval, "sensor": self.sensor,
                                     "metrics": self.metrics})

    def close(self, clean: bool) -> None:
        if clean:
            self.state.stopped()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.state.close()


# -- procsentry status -------------------------------------------------------------------------
# LSB's status codes: 3 "program is not running", 4 "program or service status is unknown"
EX_OK, EX_LOSING, EX_NOT_RUNNING, EX_UNKNOWN = 0, 1, 3, 4


def status(state_dir: str, fmt: str = "text") -> int:
    if os.path.isdir(state_dir) and not os.access(state_dir, os.R_OK | os.X_OK):
        print(f"procsentry: cannot read {state_dir}: permission denied (run it as root)",
              file=sys.stderr)
        return EX_UNKNOWN
    st = read_status(state_dir)
    if st is None:
        print(f"procsentry is not running (no status in {state_dir})")
        return EX_NOT_RUNNING
    pid = st.get("pid")
    alive = isinstance(pid, int) and _start_ticks(pid) is not None and _start_ticks(pid) == st.get("start_ticks")
    age = time.time() - float(st.get("updated", 0))
    interval = float(st.get("stats_interval") or 60)
    stale = age > 2 * interval + 10
    loss, before = st.get("loss") or 0, st.get("loss_before")
    losing = before is not None and loss > before
    stats = st.get("stats") or {}
    verdict = ("not running" if not alive else "stalled" if stale else
               "losing events" if losing else "running")
    if fmt == "json":
        print(json.dumps({"state": verdict, "pid": pid, "age_s": round(age, 1), "loss": loss,
                          "loss_before": before, "stats": stats}))
    else:
        print(f"procsentry {verdict}: pid {pid}, sensor {st.get('sensor')}, version {st.get('version')}, "
              f"up {stats.get('uptime_s')} s, last stats {age:.0f} s ago")
        ev = stats.get("events") or {}
        print("events: " + " ".join(f"{k}={v}" for k, v in sorted(ev.items())))
        print(f"lost={stats.get('lost')} dropped_writes={stats.get('dropped_writes')} "
              f"missed={stats.get('missed')} inferred_exits={stats.get('inferred_exits')} "
              f"queue_depth={stats.get('queue_depth')} table_size={stats.get('table_size')} "
              f"rss={stats.get('rss_bytes')} cpu={stats.get('cpu_time_s')}s")
        if losing:
            print(f"losing events: {loss - before} lost or dropped since the stats before")
        if st.get("metrics"):
            print(f"metrics: http://{st['metrics']}/metrics")
    if not alive:
        return EX_NOT_RUNNING
    return EX_LOSING if stale or losing else EX_OK
