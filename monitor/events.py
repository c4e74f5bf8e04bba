"""The output schema: every record procsentry emits is one of these dataclasses.

orjson serialises dataclasses natively, in field order. What a process chose (comm, exe, argv,
paths) arrives as bytes and is decoded once, by monitor/output.py's text() policy, before it
reaches a record.

Records are plain dataclasses, neither slotted nor frozen, for speed on the per-event path
(measured here with CPython 3.11 and orjson 3.13): orjson serialises through __dict__, and a
slotted 20-field record took 1.9 us against 0.6 us; a frozen dataclass's __init__ sets each
of these ~40 fields through object.__setattr__, 3.9 us against 1.0 us. They are still values:
the pipeline builds each once and hands it straight to the sink.
The JSON Schema that users and the tests validate against is monitor/schema/events.schema.json;
README.md documents every field. Change the three together and bump SCHEMA_VERSION.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# 2: vpid, image_id, parent_image_id, supersedes_inferred; alert events; stats.reconcile,
# output_buffer, cgroups and detection. 3: stdio, cap_eff, cap_prm, enrichment "kernel",
# stats.time_s, stats.socket_table, missing reason not_in_table.
SCHEMA_VERSION = 3

EVENT_TYPES = ("exec", "fork", "exit", "existing", "missed", "lost", "stats", "alert", "dropped", "start")
SOURCES = ("bpf", "sweep", "connector", "poll", "delivery")
ENRICHMENT = ("full", "partial", "gone", "kernel")


@dataclass
class Ancestor:
    pid: int
    exec_id: str
    exe: str | None
    argv: tuple[str, ...] | None  # at most 256 bytes of it: the ancestor's own exec has it all
    argv_truncated: bool = False
    image_id: str | None = None


@dataclass
class Socket:
    fd: int
    protocol: str
    state: str
    local: str
    remote: str
    inode: int


@dataclass
class Stdio:
    """Descriptor 0, 1 or 2 as the program inherited it at exec (kernel-captured)."""

    fd: int
    kind: str  # closed file dir pipe fifo socket tty chr blk anon other unknown
    inode: int | None = None
    dev: str | None = None  # "major:minor" of a device
    family: str | None = None  # sockets: unix inet inet6 netlink ...
    type: str | None = None  # sockets: stream dgram raw seqpacket ...
    protocol: str | None = None  # inet sockets: tcp udp ...


@dataclass
class ProcDetails:
    """What procfs added at enrichment time (never overrides a kernel-captured field)."""

    state: str | None = None
    threads: int | None = None
    rss_bytes: int | None = None
    vsz_bytes: int | None = None
    cap_eff: str | None = None  # hex, as in status
    suid: int | None = None
    fsuid: int | None = None
    fd_count: int | None = None
    fds: tuple[str, ...] | None = None  # targets of the first fds (bounded)
    sockets: tuple[Socket, ...] | None = None
    cgroup: str | None = None
    root: str | None = None
    environ: dict[str, str] | None = None


@dataclass
class ProcessEvent:
    """exec, fork, existing and missed events (and the base of exit)."""

    event: str
    time: str  # RFC 3339 UTC with nanoseconds
    source: str
    pid: int  # tgid
    ppid: int | None
    exec_id: str
    parent_exec_id: str | None
    uid: int | None
    euid: int | None
    gid: int | None
    egid: int | None
    user: str | None
    comm: str | None
    exe: str | None
    argv: tuple[str, ...] | None
    argv_truncated: bool
    cwd: str | None
    start_time: int  # clock ticks since boot, as procfs <pid>/stat field 22
    container_id: str | None
    ns: dict[str, int | None] | None
    enrichment: str  # full | partial | gone
    tid: int | None = None
    filename: str | None = None  # as passed to execve
    argc: int | None = None  # the original argument count
    argv_size: int | None = None  # the original argument area in bytes
    argv_raw: str | None = None  # base64 of the exact argv bytes, only when argv is not UTF-8
    exe_deleted: bool = False
    exe_fileless: bool = False  # memfd or otherwise without a path on disk
    tty: str | None = None
    loginuid: int | None = None
    sessionid: int | None = None
    cgroup_id: int | None = None
    capture: tuple[str, ...] = ()  # kernel capture flags: truncations and read errors
    missing: dict[str, str] = field(default_factory=dict)
    differs: dict[str, object] | None = None  # procfs values that disagree with the kernel's
    ancestry: tuple[Ancestor, ...] | None = None
    proc: ProcDetails | None = None
    vpid: int | None = None  # pid in its own PID namespace
    image_id: str | None = None  # the program image: changes on every exec, exec_id does not
    parent_image_id: str | None = None  # the parent's image when it forked this process
    cap_eff: str | None = None  # effective capabilities at exec, hex (kernel-captured)
    cap_prm: str | None = None  # permitted capabilities at exec, hex
    stdio: tuple[Stdio, ...] | None = None  # fds 0, 1, 2 at exec (kernel-captured)
    schema: int = SCHEMA_VERSION


@dataclass
class ExitEvent(ProcessEvent):
    exit_code: int | None = None  # the value passed to exit(), when it exited normally
    signal: int | None = None  # the terminating signal, when killed
    core_dumped: bool = False
    duration_ns: int | None = None
    inferred: bool = False  # true when a sweep found it gone without a kernel exit record
    supersedes_inferred: bool = False  # the sensor's exit, after a sweep had inferred one


@dataclass
class LostEvent:
    event: str
    time: str
    source: str
    cpu: int
    count: int
    schema: int = SCHEMA_VERSION


@dataclass
class Host:
    """Which host an event comes from, so a collector receiving many hosts can tell them apart."""

    name: str  # the hostname (uname nodename)
    machine_id: str | None  # /etc/machine-id: stable across renames and DHCP; null if unreadable


@dataclass
class Envelope:
    """Fields the sink adds to every record of `watch` as it writes it (monitor/delivery/fanout.py
    splices them into the encoded JSON, so records are built without them). Listed here so the
    schema and README document them with every event type."""

    seq: int | None  # per host, +1 for every event emitted, persisted across restarts
    host: Host


@dataclass
class DestinationStats:
    """One destination's figures in a `stats` event (monitor/delivery/worker.py keeps them)."""

    acknowledged: int
    pending: int
    spool_bytes: int
    reconnects: int
    dropped: int
    too_large: int
    resent: int
    duplicates: int
    connected: bool
    last_error: str | None


@dataclass
class DroppedEvent:
    """Events one destination will never receive: the spool was full (drop-newest policy), the
    event was larger than the destination accepts, or the destination refused it. Delivered
    to that destination only, in seq order, once it accepts events again."""

    event: str
    time: str
    source: str
    destination: str
    reason: str  # spool_full | too_large | refused
    first_seq: int
    last_seq: int
    count: int
    schema: int = SCHEMA_VERSION


@dataclass
class StatsEvent:
    event: str
    time: str
    source: str
    uptime_s: float
    events: dict[str, int]
    lost: int
    lost_per_cpu: dict[str, int]
    missed: int
    inferred_exits: int
    reconcile: dict[str, int]  # sweeps, deferred judgements, ...: see schema.py
    enrichment: dict[str, int]
    queue_depth: int
    queue_peak: int
    table_size: int
    table_evictions: int
    kernel: dict[str, int]
    dropped_writes: int
    decode_errors: int
    output_buffer: dict[str, int]  # bound_bytes, peak_bytes: see schema.py
    cgroups: dict[str, int]  # cgroup id resolution: see schema.py
    socket_table: dict[str, int]  # the enricher's socket tables: see schema.py
    time_s: dict[str, dict[str, float]]  # where the monitor's time goes: see schema.py
    cpu_time_s: float
    rss_bytes: int
    peak_rss_bytes: int
    # Detection counters (monitor/detect/engine.py Detector.counters), null without rules.
    detection: dict[str, object] | None = None
    schema: int = SCHEMA_VERSION
    # Filled by the delivery sink as it writes this record (the pipeline does not know the
    # destinations): destination -> figures. Empty with stdout or file output only.
    delivery: dict[str, DestinationStats] = field(default_factory=dict)


@dataclass
class RuleInfo:
    """The rule behind an alert. `author` is shown in every alert: SigmaHQ's Detection Rule
    License requires the rule's author to be shown wherever its matches are shown."""

    id: str
    title: str
    level: str  # informational | low | medium | high | critical
    status: str | None
    author: str | None
    tags: tuple[str, ...]  # ATT&CK ids and the like, as the rule gives them (attack.t1059.004)
    references: tuple[str, ...]
    source: str  # sigma (a rule file given with --rules) | builtin (shipped with procsentry)
    file: str | None  # the file the rule came from


@dataclass
class AlertEvent:
    """A rule matched a process event. The process fields are those of the process the rule is
    about (for a stateful detection, possibly an earlier event than the one that completed it)."""

    event: str  # "alert"
    time: str  # the time of the process event that matched
    source: str  # the source of that process event (bpf, sweep, connector, poll; replay offline)
    rule: RuleInfo
    pid: int
    exec_id: str
    image_id: str | None  # the program image that matched (null where the sensor cannot tell)
    exe: str | None
    argv: tuple[str, ...] | None
    user: str | None
    uid: int | None
    ancestry: tuple[Ancestor, ...] | None
    matched: dict[str, object]  # field name (as the rule names it) -> the event's value
    trigger: str  # the event type evaluated: exec, existing or missed
    schema: int = SCHEMA_VERSION
    # Filled by the delivery sink as it writes this record (the pipeline does not know the
    # destinations): destination -> figures. Empty with stdout or file output only.
    delivery: dict[str, DestinationStats] = field(default_factory=dict)


@dataclass
class StartEvent:
    """The first record of every run (monitor/agent.py): which agent started, with what, and
    how the run before it ended."""

    event: str
    time: str
    source: str
    version: str
    sensor: str
    settings_hash: str
    config: str | None
    previous_end: str | None  # clean | crash; null when no earlier run is recorded
    previous_start: str | None
    previous_stop: str | None
    schema: int = SCHEMA_VERSION


def split_wait_status(status: int) -> tuple[int | None, int | None, bool]:
    """wait(2) status -> (exit_code, signal, core_dumped), as WIFEXITED/WTERMSIG decode it."""
    sig = status & 0x7F
    if sig == 0:
        return (status >> 8) & 0xFF, None, False
    return None, sig, bool(status & 0x80)
