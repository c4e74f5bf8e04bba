"""The JSON Schema of the event stream, built from monitor/events.py and the field docs below.

`python -m monitor.schema` prints it; the published copy is monitor/schema/events.schema.json
(a test checks the copy is current, and that README.md documents every field). The docs live
here, next to nothing else, so the schema and README cannot drift from the dataclasses.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

from monitor import events as ev

SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "events.schema.json"

DOCS: dict[str, str] = {
    "event": "Event type: exec, fork, exit, existing (running at start), missed (found by a sweep), lost, stats, alert (a detection rule matched), dropped (a destination will not receive a seq range), start (the agent started).",
    "seq": "Per-host event number: +1 for every event `watch` emits, to every output, persisted across restarts in --state-dir, so a collector sees gaps and duplicates. Null on `dropped` events (they go to one destination only). Present on every event of `watch`, absent from `snapshot`.",
    "host": "The host that emitted the event: name (hostname) and machine_id (/etc/machine-id, null if unreadable). Present on every event of `watch`.",
    "name": "Host name (uname nodename).",
    "machine_id": "/etc/machine-id of the host.",
    "time": "When it happened (kernel timestamp for sensor events), RFC 3339 UTC with nanoseconds.",
    "source": "Who saw it: bpf, connector or poll (the live sensor), sweep (a procfs sweep), or delivery (a dropped event); for an alert, the source of the process event it is about (replay when replayed offline).",
    "pid": "Process ID (the thread group ID: what userspace calls a PID).",
    "ppid": "Parent's PID (real parent at exec; the forking process for fork).",
    "exec_id": "Process identity, unique across PID reuse and reboots: boot id prefix, start_time, pid. The same whether the process was seen by the sensor or a sweep.",
    "parent_exec_id": "exec_id of the parent.",
    "uid": "Real user ID.",
    "euid": "Effective user ID.",
    "gid": "Real group ID.",
    "egid": "Effective group ID.",
    "user": "User name of uid on this host, if it has one.",
    "comm": "Kernel task name (at most 15 bytes).",
    "exe": "Absolute path of the executable that was mapped (for a #! script, the interpreter). A path deeper or longer than the kernel sensor's walk (capture exe_truncated) is read whole from procfs while the process still runs that image, else is its leaf end only, starting with .../ instead of /.",
    "argv": "Arguments exactly as the program saw them. Invalid UTF-8 bytes appear as \\xNN; see argv_raw.",
    "argv_truncated": "argv was longer than the capture limit (32 KiB); see argc and argv_size for the original.",
    "cwd": "Working directory at exec; starts with .../ when only its leaf end was captured (capture cwd_truncated).",
    "start_time": "Start time in clock ticks since boot, exactly procfs <pid>/stat field 22.",
    "container_id": "Container ID named by the cgroup path (docker, containerd/CRI, CRI-O, podman, Kubernetes pods). The path comes from the kernel's cgroup id at exec, so a process gone before procfs could be read has it too; null outside containers or when unknown (missing.container_id then says why).",
    "ns": "Namespace inode numbers (pid, mnt, net, user, uts, ipc, cgroup[, time]) as in procfs <pid>/ns.",
    "enrichment": "full: procfs was read for everything the --enrich level asks; kernel: --enrich minimal, procfs not read (proc is null); partial: some of it (see missing); gone: the process had exited before procfs could be read (kernel-captured fields are still complete).",
    "tid": "Thread that called execve (differs from pid when a non-leader thread execs).",
    "filename": "The path passed to execve, as given (may be relative, or /dev/fd/N).",
    "argc": "The original number of arguments.",
    "argv_size": "The original size of the argument area in bytes (NUL separators included).",
    "argv_raw": "base64 of the exact argv bytes, NUL-separated; present only when argv is not valid UTF-8.",
    "exe_deleted": "The executable had been unlinked (no links left) when it ran.",
    "exe_fileless": "The executable has no path on any filesystem (memfd_create).",
    "tty": "Controlling terminal name (e.g. pts3), null without one.",
    "loginuid": "Audit login uid (who logged in, across su/sudo); null if unset.",
    "sessionid": "Audit session id; null if unset.",
    "cgroup_id": "cgroup v2 id (the inode of the cgroup directory).",
    "capture": "Kernel capture flags: argv_truncated, argv_read_error, filename_truncated, exe_unlinked, exe_detached, exe_truncated, exe_read_error, cwd_detached, cwd_truncated, cwd_read_error, no_mm, stdio_read_error.",
    "missing": "Why a field is absent: field name -> gone | denied | kernel_thread | zombie | parse_error | unavailable | skipped_backlog | unknown | not_in_table (sockets only: the list lacks sockets opened after the socket table was read) | error (proc, and container_id when its resolution failed so too: reading procfs or the cgroup failed in a way the reader did not expect; counted in stats.enrichment.error).",
    "differs": "Values procfs reported at enrichment that disagree with what the kernel captured at exec (argv rewritten by the process, cwd changed, euid changed); the kernel values stay in the main fields. Checked at --enrich full only (standard and minimal do not read cmdline or status): null otherwise.",
    "ancestry": "Ancestors, nearest first (pid, exec_id, image_id of the image it runs now, exe, argv up to 256 bytes with argv_truncated), as far as the process table knows them (default depth 10).",
    "proc": "What procfs added: state, threads, memory, capabilities, saved/fs uid, fds, sockets, cgroup path, root, environment (opt-in, secrets redacted). Depends on --enrich for exec events: null at minimal; at standard (the default) state, threads, rss_bytes and vsz_bytes from <pid>/stat, cap_eff, suid and fsuid as the kernel captured them at exec, cgroup, while fd_count, fds, sockets and root are null (full reads them); full reads everything from procfs.",
    "schema": "Schema version of this record.",
    "exit_code": "Exit status passed to exit(), when the process exited normally.",
    "signal": "Signal that terminated the process, when it was killed.",
    "core_dumped": "The process dumped core.",
    "duration_ns": "Lifetime from fork to exit in nanoseconds.",
    "inferred": "True when a sweep found the process gone without a kernel exit record (exit_code and signal are then unknown).",
    "supersedes_inferred": "True on a sensor exit that arrived after a sweep had already inferred this process's exit: this one, with its exit status, is the real one.",
    "vpid": "The process ID as seen inside the process's own PID namespace (1 for a container's init); equals pid outside PID namespaces; null when unknown.",
    "image_id": "Identity of the program image: changes on every exec while exec_id (the process) stays. exec_id plus a keyed hash of the image's layout (mm->arg_start and mm->end_code, procfs <pid>/stat fields 48 and 27), so the sensor and a sweep derive the same id; the addresses themselves are never output. Null when the sensor cannot tell.",
    "parent_image_id": "image_id of the parent's program when it forked this process (null when unknown).",
    "cap_eff": "Effective capabilities of the new program, 16 hex digits as in procfs <pid>/status CapEff, captured by the kernel sensor at exec (cred->cap_effective after commit_creds, setuid and file capabilities applied); null when not captured (fork, exit, sweep events, other sensors).",
    "cap_prm": "Permitted capabilities at exec (cred->cap_permitted, status CapPrm), like cap_eff.",
    "stdio": "Descriptors 0, 1 and 2 as the program inherited them, captured by the kernel sensor at exec (after close-on-exec), so exact even for a process that exits at once: fd, kind (closed, file, dir, pipe, fifo, socket, tty, chr, blk, anon, other, unknown = unreadable), inode (the N of socket:[N] / pipe:[N] in procfs <pid>/fd), dev (major:minor of a device), and for a socket its family (unix, inet, inet6, netlink, ...), type (stream, dgram, ...) and protocol (tcp, udp, ... for inet). A shell whose stdin or stdout is an inet stream socket is a reverse shell's signature. Null when not captured (fork, exit, sweep events, other sensors).",
    "time_s": "Seconds (time.perf_counter, wall clock) the monitor spent since start: enrich (reading procfs to enrich the execs the kernel captured, keyed by event type: exec; sweeps, which read the existing and missed processes, are not in it), encode (serialising the events, per event type), detect (evaluating the rules and behaviours, per event type; empty without detection) and output (Sink.flush: writing the encoded events out, key all). Measured with time.perf_counter around those calls only.",
    "reconcile": "Periodic sweeps: sweeps run, deferred (processes the sensor may still report, left for the next sweep), missed_zombies_skipped (zombies unknown to the table while no loss was reported), late_exits (sensor exits that arrived after an inferred one).",
    "reconcile": "Periodic sweeps: sweeps run, deferred (processes that appeared after a sweep's watermark, left for the next sweep), suspects (what a sweep found, confirmed or dropped by the next sweep a second later), missed_zombies_skipped (zombies unknown to the table while no loss was reported), late_exits (sensor exits that arrived after an inferred one).",
    "cpu": "CPU whose buffer lost samples (-1 when the sensor cannot tell).",
    "count": "lost: samples lost; dropped: events in the range this destination will not receive.",
    "destination": "The --output URL the dropped events were meant for.",
    "reason": "Why they were dropped: spool_full (the destination was down longer than the spool holds; newest dropped), too_large (larger than the destination's max_size), refused (the destination rejected it).",
    "first_seq": "First seq of the dropped range.",
    "last_seq": "Last seq of the dropped range (every seq in between is dropped).",
    "delivery": "Per network destination (its --output URL): acknowledged, pending, spool_bytes, reconnects, dropped, too_large, resent, duplicates, connected, last_error.",
    "acknowledged": "Events the destination acknowledged (duplicates included).",
    "pending": "Events in the spool not yet acknowledged.",
    "spool_bytes": "Disk used by the destination's spool (acknowledged records stay until their segment is freed).",
    "reconnects": "Connections made again after a loss.",
    "dropped": "Events this destination will not receive, all reasons (each reported by a dropped event).",
    "too_large": "Events larger than the destination's max_size (dropped, reported).",
    "resent": "Events sent again after a reconnect or restart because their acknowledgement had not arrived: possible duplicates at the collector.",
    "duplicates": "Resent events the destination reported it already had (Redis streams).",
    "connected": "Connected to the destination now.",
    "last_error": "The last error talking to the destination, null if none yet.",
    "uptime_s": "Seconds since the monitor started.",
    "events": "Events emitted so far, per type.",
    "lost": "Lost samples in total.",
    "lost_per_cpu": "Lost samples per CPU.",
    "missed": "Processes the sensor missed and a sweep found.",
    "inferred_exits": "Exits inferred by sweeps.",
    "queue_depth": "Records waiting in the monitor's queue now.",
    "queue_peak": "Largest batch of records drained at once.",
    "table_size": "Processes in the process table.",
    "table_evictions": "Entries evicted because the table was full.",
    "kernel": "Counters kept by the BPF programs (exec, fork, exit, thread_create, thread_exit, submit_failed, scratch_missing).",
    "dropped_writes": "Events that could not be written (full disk, I/O error).",
    "decode_errors": "Sensor records that could not be decoded.",
    "output_buffer": "Encoded events held in memory before they are written: bound_bytes (--output-buffer; past it the monitor writes at once, and when the reader stalls it waits, so the kernel's buffers fill and their losses are reported as lost events instead of memory growing) and peak_bytes.",
    "cgroups": "cgroup id -> container resolution (userspace/cgroups.py): hits, misses, resolved, gone (cgroup removed before its id was resolved), unknown, walks, walk_rate_limited, walk_truncated, not_a_cgroup, denied, error, bad_id, unavailable, evicted_gone, evicted_full.",
    "socket_table": "The socket tables (sock_diag, one dump per network namespace, kept for a second, or 9 times as long as the dump took) that exec enrichment at --enrich full joins with each process's socket fds: dumps, and not_in_table (TCP, UDP and unix sockets a process held that its table lacked, opened after the dump; such an event says missing.sockets = not_in_table).",
    "cpu_time_s": "CPU time used by the monitor.",
    "rss_bytes": "Resident memory of the monitor now.",
    "peak_rss_bytes": "Peak resident memory of the monitor.",
    "detection": "Detection counters, null without detection: rules_loaded, rules_skipped, events_evaluated, rule_evaluations, alerts, alerts_per_rule (rule id -> count), evaluation_errors.",
    "rule": "The rule that matched: id, title, level, status, author (shown in every alert, as the Detection Rule License requires), tags (ATT&CK ids), references, source (sigma: from --rules; builtin: shipped with procsentry), file.",
    "matched": "The fields the rule tested that were true on this event, with the event's values (field names as the rule wrote them); for built-in behavioural rules, the evidence (sockets, pipe, files).",
    "trigger": "The process event type that was evaluated: exec, existing or missed.",
    "version": "procsentry version of the agent that started.",
    "sensor": "The live sensor it runs with: bpf, connector or poll.",
    "settings_hash": "Digest of the effective settings (configuration file and command line): equal hashes, equal settings.",
    "config": "The configuration file read, null without one.",
    "previous_end": "How the previous run with this state directory ended: clean (an orderly stop), crash (killed, crashed or the host went down without stopping it); null when none is recorded.",
    "previous_start": "When the previous run started, null when unknown.",
    "previous_stop": "When the previous run stopped, null after a crash or when unknown.",
}

RULE_DOCS: dict[str, str] = {
    "id": "Rule id (the Sigma rule's UUID; built-in rules use 5e27c0de-0000-4000-8000-0000000000NN).",
    "title": "What the rule detects, for a responder.",
    "level": "informational, low, medium, high or critical.",
    "status": "Sigma status: stable, test, experimental, deprecated, unsupported.",
    "author": "The rule's author.",
    "tags": "Tags as the rule gives them: ATT&CK tactics and techniques (attack.t1059.004), CVEs.",
    "references": "URLs the rule cites.",
    "source": "sigma (loaded with --rules) or builtin (shipped with procsentry).",
    "file": "The file the rule came from (for built-in rules, relative to the package).",
}

PROCESS_EVENTS = ("exec", "fork", "existing", "missed")


def _type_schema(tp) -> dict:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        inner = _type_schema(non_null[0]) if len(non_null) == 1 else {"anyOf": [_type_schema(a) for a in non_null]}
        if type(None) in args:
            return {"anyOf": [inner, {"type": "null"}]}
        return inner
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp in (str, bytes):
        return {"type": "string"}
    if tp is object:
        return {}
    if origin is tuple:
        return {"type": "array", "items": _type_schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1])}
    if dataclasses.is_dataclass(tp):
        return _object_schema(tp)
    raise TypeError(f"no JSON Schema mapping for {tp!r}")


def _object_schema(cls, event_values: tuple[str, ...] | None = None, envelope: bool = False) -> dict:
    hints = typing.get_type_hints(cls)
    props = {}
    for f in dataclasses.fields(cls):
        s = _type_schema(hints[f.name])
        docs = RULE_DOCS if cls is ev.RuleInfo else DOCS
        if f.name in docs:
            s = {"description": docs[f.name], **s}
        props[f.name] = s
    if envelope:
        # seq and host are spliced after every record's own fields by the watch sink
        # (monitor/delivery/fanout.py; events.Envelope); snapshot records do not have them.
        props.update(_object_schema(ev.Envelope)["properties"])
    if event_values is not None:
        props["event"] = {**props["event"], "enum": list(event_values)}
    return {"type": "object", "properties": props, "required": [f.name for f in dataclasses.fields(cls)],
            "additionalProperties": False}


def build_schema() -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://procsentry.invalid/events.schema.json",
        "title": f"procsentry event stream, schema version {ev.SCHEMA_VERSION}",
        "description": "One JSON object per line. Generated from monitor/events.py by `python -m monitor.schema`.",
        "oneOf": [
            _object_schema(ev.ProcessEvent, PROCESS_EVENTS, envelope=True),
            _object_schema(ev.ExitEvent, ("exit",), envelope=True),
            _object_schema(ev.LostEvent, ("lost",), envelope=True),
            _object_schema(ev.StatsEvent, ("stats",), envelope=True),
            _object_schema(ev.DroppedEvent, ("dropped",), envelope=True),
            _object_schema(ev.AlertEvent, ("alert",), envelope=True),
            _object_schema(ev.StartEvent, ("start",), envelope=True),
        ],
    }


def render() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"


def documented_fields() -> set[str]:
    names = set()
    for cls in (ev.ProcessEvent, ev.ExitEvent, ev.LostEvent, ev.StatsEvent, ev.AlertEvent, ev.DroppedEvent, ev.Envelope, ev.StartEvent):
        names |= {f.name for f in dataclasses.fields(cls)}
    return names


if __name__ == "__main__":
    sys.stdout.write(render())
