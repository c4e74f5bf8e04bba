"""The contenders: no monitor, ps polling, procsentry's three sensors, forkstat, auditd, bpftrace.

Each one starts its tool the way a user would, exposes the tool's output as (arrival, line)
pairs through a LineCollector, turns those lines into `Event`s after the fact (parsing is kept
off the measured window), names the PIDs whose CPU and memory count as the monitor's, and reads
the tool's own lost/dropped counters where it has any.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from measure import PROC, Event, LineCollector


class NotAvailable(Exception):
    """The contender cannot run on this host; the message says why."""


class Context:
    def __init__(self, repo: Path, python: str, workdir: Path, prefix: str) -> None:
        self.repo = repo
        self.python = python
        self.workdir = workdir
        self.prefix = prefix  # every token of this benchmark run starts with it


def _stderr_tail(path: Path, n: int = 300) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[-n:]


class Contender:
    name = "?"
    label = "?"
    has_argv = True  # reports the argument vector (or the space-joined command line)
    has_ppid = True
    event_based = True  # False for pollers: no start-to-first-event
    stop_signal = signal.SIGINT
    note = ""  # shown under the tables

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.proc: subprocess.Popen | None = None
        self.collector: LineCollector | None = None
        self.started_ns = 0
        self.markers: tuple[bytes, ...] = ()  # bytes that make a line relevant to the level
        self.last_relevant_ns = 0
        self.stderr_path = ctx.workdir / f"{self.name}.stderr"

    # -- lifecycle ------------------------------------------------------------------------------
    def unavailable(self) -> str | None:
        return None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.started_ns = time.time_ns()
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     stderr=open(self.stderr_path, "wb"), cwd=self.ctx.repo,
                                     start_new_session=True)
        self.collector = LineCollector(self.proc.stdout.fileno(), self._route)

    def _route(self, t: int, line: bytes) -> bool:
        if not self.keep(t, line):
            return False
        if self.markers and any(m in line for m in self.markers):
            self.last_relevant_ns = t
        return True

    def keep(self, t: int, line: bytes) -> bool:
        """Cheap pre-filter run in the reader thread (bytes only, no parsing)."""
        return True

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.collector is not None:
            self.collector.stop()

    def died_reason(self) -> str:
        code = self.proc.returncode if self.proc is not None else None
        tail = _stderr_tail(self.stderr_path)
        return f"exited with status {code}" + (f": {tail}" if tail else "")

    # -- readiness ------------------------------------------------------------------------------
    def probe_seen(self, line: bytes, pid: int, token: bytes) -> bool:
        return token in line

    def wait_ready(self, timeout: float) -> float | None:
        """Run probe execs until the tool reports one; return start-to-first-event seconds.

        A probe is `sh -c 'sleep 0.3; :' <token>`: it lives long enough for tools that read
        /proc after the event (forkstat) to see its argv (the trailing `:` keeps the shell from
        exec'ing sleep in its place)."""
        deadline = time.monotonic() + timeout
        probes: list[tuple[int, bytes]] = []
        k = 0
        index = 0
        pending: list[subprocess.Popen] = []
        try:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise NotAvailable(self.died_reason())
                token = f"{self.ctx.prefix}ready{k}z"
                k += 1
                p = subprocess.Popen(["/bin/sh", "-c", "sleep 0.3; :", token])
                pending.append(p)
                probes.append((p.pid, token.encode()))
                time.sleep(0.05)
                lines = self.collector.peek_since(index)
                index += len(lines)
                for t, line in lines:
                    if any(self.probe_seen(line, pid, tok) for pid, tok in probes):
                        return (t - self.started_ns) / 1e9
            raise NotAvailable(f"no event for a probe exec within {timeout:.0f} s of starting")
        finally:
            for p in pending:
                p.wait()

    # -- measurement ----------------------------------------------------------------------------
    def counters(self, after_ns: int) -> dict[str, int] | None:
        """Cumulative lost/dropped counts the tool itself reports (None: it reports none)."""
        return None

    def parse(self, lines: list[tuple[int, bytes]]) -> list[Event]:
        raise NotImplementedError


class Baseline(Contender):
    name = "baseline"
    label = "no monitor (baseline)"
    event_based = False

    def start(self) -> None:
        self.started_ns = time.time_ns()

    def wait_ready(self, timeout: float) -> float | None:
        return None

    def roots(self) -> list[int]:
        return []

    def take(self) -> list:
        return []

    def parse(self, lines):
        return []


class PsPoll(Contender):
    event_based = False
    note = "ps: the command line is one space-joined string, so 'exact argv' compares it with argv joined by spaces."

    def __init__(self, ctx: Context, interval: float) -> None:
        self.interval = interval
        self.name = f"ps-{'1s' if interval >= 1 else f'{int(interval * 1000)}ms'}"
        self.label = f"`ps -ef` every {'1 s' if interval >= 1 else f'{int(interval * 1000)} ms'}"
        super().__init__(ctx)

    def command(self) -> list[str]:
        return ["/bin/sh", "-c", f"while :; do ps -ef; sleep {self.interval}; done"]

    def keep(self, t, line):
        return self.ctx.prefix.encode() in line or b"stress-ng" in line

    def wait_ready(self, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while self.collector.first_ns is None:
            if not self.alive():
                raise NotAvailable(self.died_reason())
            if time.monotonic() > deadline:
                raise NotAvailable("ps printed nothing")
            time.sleep(0.02)
        return None

    def stop(self) -> None:
        # The loop's current `ps` or `sleep` is in the same session: end the group we created.
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        if self.collector is not None:
            self.collector.stop()

    def parse(self, lines):
        out = []
        for t, line in lines:
            parts = line.decode("utf-8", "backslashreplace").split(None, 7)
            if len(parts) < 8 or not parts[1].isdigit():
                continue
            out.append(Event(t, int(parts[1]), int(parts[2]), cmd=parts[7]))
        return out


class Procsentry(Contender):
    def __init__(self, ctx: Context, sensor: str, variant: tuple[str, str, tuple[str, ...]] | None = None) -> None:
        """variant: (name suffix, label, watch options) for a variant of the defaults: another
        detection (run.py --detection: none, or the built-in pack plus a rules directory), or
        another enrichment depth or event filter (VARIANTS)."""
        self.sensor = sensor
        self.name = f"procsentry-{sensor}"
        self.label = f"procsentry `--sensor {sensor}`"
        self.extra: tuple[str, ...] = ()
        if variant is not None:
            suffix, label, self.extra = variant
            self.name += f"-{suffix}"
            self.label += f", {label}"
        self.last_stats: tuple[int, bytes] | None = None
        super().__init__(ctx)

    def command(self) -> list[str]:
        # Default settings, default enrichment and every event type; only the stats period is
        # shortened so that lost counts can be read per level.
        return [self.ctx.python, "-m", "monitor", "watch", "--sensor", self.sensor,
                "--format", "json", "--stats-interval", "1", *self.extra]

    def keep(self, t, line):
        if b'"stats"' in line[:40]:
            self.last_stats = (t, line)
            return False
        return b'"exec"' in line and (self.ctx.prefix.encode() in line or b"stress-ng" in line)

    def counters(self, after_ns: int) -> dict[str, int] | None:
        deadline = time.monotonic() + 3.0
        while (self.last_stats is None or self.last_stats[0] < after_ns) and time.monotonic() < deadline:
            if not self.alive():
                break
            time.sleep(0.02)
        if self.last_stats is None:
            return None
        try:
            s = json.loads(self.last_stats[1])
        except ValueError:
            return None
        kernel = s.get("kernel") or {}
        return {"lost": int(s.get("lost") or 0),
                "dropped": int(s.get("dropped_writes") or 0) + int(kernel.get("submit_failed") or 0)
                + int(s.get("decode_errors") or 0)}

    def parse(self, lines):
        out = []
        loads = json.loads
        try:
            import orjson  # noqa: PLC0415
            loads = orjson.loads
        except ImportError:
            pass
        for t, line in lines:
            try:
                r = loads(line)
            except ValueError:
                continue
            if r.get("event") != "exec":
                continue
            out.append(Event(t, r.get("pid"), r.get("ppid"), argv=r.get("argv"), exe=r.get("exe")))
        return out


class Forkstat(Contender):
    name = "forkstat"
    label = "forkstat (proc connector)"
    has_ppid = False
    note = ("forkstat: reads the command line from /proc after the event, so a process that has "
            "already exited shows its comm only; 'exact argv' compares the space-joined string.")

    def unavailable(self):
        return None if shutil.which("forkstat") else "forkstat is not installed"

    def command(self):
        return ["forkstat", "-l", "-e", "exec"]

    def keep(self, t, line):
        return b" exec " in line

    def parse(self, lines):
        out = []
        for t, line in lines:
            parts = line.decode("utf-8", "backslashreplace").split(None, 3)
            if len(parts) < 4 or parts[1] != "exec" or not parts[2].isdigit():
                continue
            out.append(Event(t, int(parts[2]), None, cmd=parts[3].strip()))
        return out


BPFTRACE_PROGRAM = ('tracepoint:sched:sched_process_exec { printf("%d %d %s\\n", pid, '
                    'curtask->real_parent->tgid, str(args->filename)); }')


class Bpftrace(Contender):
    name = "bpftrace"
    label = "bpftrace (`sched_process_exec`)"
    has_argv = False
    note = ("bpftrace: the one-liner prints PID, parent and filename but no argv, so it is matched "
            "by PID alone ('seen'); it is the floor for what an exec hook costs.")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.lost = 0

    def unavailable(self):
        return None if shutil.which("bpftrace") else "bpftrace is not installed"

    def command(self):
        return ["bpftrace", "-B", "line", "-e", BPFTRACE_PROGRAM]

    def keep(self, t, line):
        if line.startswith(b"Lost "):
            m = re.match(rb"Lost (\d+) events", line)
            if m:
                self.lost += int(m.group(1))
            return False
        return line[:1].isdigit()

    def probe_seen(self, line, pid, token):
        return line.startswith(b"%d " % pid)

    def counters(self, after_ns):
        time.sleep(0.05)
        lost = self.lost
        try:  # bpftrace may also say it on stderr
            for m in re.finditer(r"Lost (\d+) events", self.stderr_path.read_text(errors="replace")):
                lost += int(m.group(1))
        except OSError:
            pass
        return {"lost": lost, "dropped": 0}

    def parse(self, lines):
        out = []
        for t, line in lines:
            parts = line.decode("utf-8", "backslashreplace").split(None, 2)
            if len(parts) < 3 or not parts[0].isdigit() or not parts[1].isdigit():
                continue
            out.append(Event(t, int(parts[0]), int(parts[1]), exe=parts[2]))
        return out


def _auditctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["auditctl", *args], capture_output=True, text=True)


def _audit_status() -> dict[str, str]:
    p = _auditctl("-s")
    if p.returncode != 0:
        raise NotAvailable(f"auditctl -s failed: {(p.stderr or p.stdout).strip()}")
    return dict(line.split(None, 1) for line in p.stdout.splitlines() if len(line.split(None, 1)) == 2)


def _audit_arg(value: str) -> str:
    """An EXECVE aN value: "quoted" text, or hex when it holds a space or a special byte."""
    if value.startswith('"') and value.endswith('"'):
        return value[1:-1]
    try:
        return bytes.fromhex(value).decode("utf-8", "backslashreplace")
    except ValueError:
        return value


class Auditd(Contender):
    name = "auditd"
    label = "auditd (execve rule)"
    stop_signal = signal.SIGTERM
    note = ("auditd: started by hand (`auditd -n`) with the distribution's auditd.conf writing to a "
            "private log, the Debian default rule settings (-b 8192 --backlog_wait_time 60000 -f 1) "
            "and `-a always,exit -F arch=b64 -S execve`; the log is tailed every 5 ms. Its CPU "
            "includes the kauditd kernel thread.")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.saved: dict[str, str] | None = None
        self.kauditd: int | None = None
        self.log_fd: int | None = None
        self.dir = ctx.workdir / "auditd"

    def unavailable(self):
        for tool in ("auditd", "auditctl"):
            if not shutil.which(tool):
                return f"{tool} is not installed"
        if not (PROC / "self" / "loginuid").exists():
            return "the kernel has no syscall auditing (CONFIG_AUDITSYSCALL)"
        try:
            st = _audit_status()
        except NotAvailable as e:
            return str(e)
        if st.get("pid", "0") != "0":
            return f"another audit daemon (pid {st['pid']}) owns the kernel's audit stream"
        if st.get("enabled") == "2":
            return "audit configuration is locked (enabled 2)"
        return None

    def start(self):
        self.saved = _audit_status()
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir / "audit.log"
        log.unlink(missing_ok=True)
        conf = Path("/etc/audit/auditd.conf").read_text() if Path("/etc/audit/auditd.conf").exists() else ""
        lines = [ln for ln in conf.splitlines()
                 if not re.match(r"\s*(log_file|max_log_file_action)\s*=", ln)]
        # A private log that is never rotated mid-run; everything else as the distribution ships it.
        lines += [f"log_file = {log}", "max_log_file_action = IGNORE"]
        (self.dir / "auditd.conf").write_text("\n".join(lines) + "\n")
        (self.dir / "auditd.conf").chmod(0o640)
        self.started_ns = time.time_ns()
        self.proc = subprocess.Popen(["auditd", "-n", "-c", str(self.dir)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.stderr_path, "wb"),
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while not log.exists():
            if self.proc.poll() is not None:
                raise NotAvailable(self.died_reason())
            if time.monotonic() > deadline:
                raise NotAvailable("auditd did not create its log")
            time.sleep(0.02)
        for args in (("-b", "8192"), ("--backlog_wait_time", "60000"), ("-f", "1"),
                     ("-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-k", "psbench")):
            p = _auditctl(*args)
            if p.returncode != 0:
                raise NotAvailable(f"auditctl {' '.join(args)}: {(p.stderr or p.stdout).strip()}")
        self.log_fd = os.open(log, os.O_RDONLY)
        self.collector = LineCollector(self.log_fd, self._route, tail=True)
        for pid in os.listdir(PROC):
            if pid.isdigit():
                try:
                    if (PROC / pid / "comm").read_text().strip() == "kauditd":
                        self.kauditd = int(pid)
                        break
                except OSError:
                    pass

    def keep(self, t, line):
        return (line.startswith(b"type=EXECVE")
                or (line.startswith(b"type=SYSCALL") and b" syscall=59 " in line))

    def roots(self):
        out = super().roots()
        if self.kauditd is not None:
            out.append(self.kauditd)
        return out

    def counters(self, after_ns):
        try:
            st = _audit_status()
        except NotAvailable:
            return None
        return {"lost": int(st.get("lost", "0")), "dropped": 0}

    def stop(self):
        try:
            _auditctl("-D")
            super().stop()
        finally:
            if self.log_fd is not None:
                os.close(self.log_fd)
                self.log_fd = None
            if self.saved is not None:  # leave the kernel's audit state as we found it
                _auditctl("-b", self.saved.get("backlog_limit", "64"))
                _auditctl("--backlog_wait_time", self.saved.get("backlog_wait_time", "15000"))
                _auditctl("-f", self.saved.get("failure", "1"))
                _auditctl("-e", self.saved.get("enabled", "0"))
                self.saved = None

    def parse(self, lines):
        serial_re = re.compile(r"msg=audit\(([0-9.:]+)\)")
        syscalls: dict[str, tuple[int, int, int]] = {}
        execves: dict[str, tuple[int, list[str]]] = {}
        for t, raw in lines:
            line = raw.decode("utf-8", "backslashreplace").split("\x1d", 1)[0]
            m = serial_re.search(line)
            if not m:
                continue
            serial = m.group(1)
            fields = dict(kv.split("=", 1) for kv in line[m.end():].split() if "=" in kv)
            if line.startswith("type=SYSCALL"):
                try:
                    syscalls[serial] = (t, int(fields["pid"]), int(fields["ppid"]))
                except (KeyError, ValueError):
                    continue
            else:
                try:
                    argc = int(fields.get("argc", "0"))
                except ValueError:
                    continue
                argv = [_audit_arg(fields.get(f"a{i}", "")) for i in range(argc)]
                execves[serial] = (t, argv)
        out = []
        for serial, (t, pid, ppid) in syscalls.items():
            if serial in execves:
                t2, argv = execves[serial]
                out.append(Event(max(t, t2), pid, ppid, argv=argv))
        return out


class ProcsentryTree(Procsentry):
    """procsentry --sensor bpf from another checkout (run.py --compare-tree): a before/after
    comparison in the same run, interleaved like every other contender."""

    def __init__(self, ctx: Context, tree: Path,
                 variant: tuple[str, str, tuple[str, ...]] | None = None) -> None:
        super().__init__(ctx, "bpf", variant)
        self.tree = tree
        self.name = "procsentry-bpf-before" + (f"-{variant[0]}" if variant else "")
        self.label = f"procsentry `--sensor bpf`, before ({tree.name})" + (f", {variant[1]}" if variant else "")

    def start(self) -> None:
        repo = self.ctx.repo
        self.ctx.repo = self.tree  # python -m monitor imports the checkout it runs in
        try:
            super().start()
        finally:
            self.ctx.repo = repo


# The defaults' documented alternatives, to show what each costs beside the defaults in the same
# run: the lighter enrichment depths, and issue 12's own harness (only exec events written, as
# its first measurements were taken), under which fork and exit records are counted, not built.
VARIANTS = (("standard", "`--enrich standard`", ("--enrich", "standard")),
            ("minimal", "`--enrich minimal`", ("--enrich", "minimal")),
            ("execonly", "`--events exec,lost`", ("--events", "exec,lost")))


def all_contenders(ctx: Context, compare_tree: Path | None = None,
                   detection_rules: Path | None = None) -> list[Contender]:
    # before, with its defaults and in issue 12's harness (VARIANTS' execonly)
    before = [ProcsentryTree(ctx, compare_tree), ProcsentryTree(ctx, compare_tree, VARIANTS[2])] \
        if compare_tree else []
    # The cost of detection (issue 13): the default (built-in pack) against no detection and
    # against the built-in pack plus a rules directory, in the same run.
    detect = [Procsentry(ctx, "bpf", ("nodetect", "no detection", ("--no-builtin-rules",))),
              Procsentry(ctx, "bpf", ("rules", f"built-in pack + {detection_rules.name}/",
                                      ("--rules", str(detection_rules))))] if detection_rules else []
    return [Baseline(ctx), PsPoll(ctx, 1.0), PsPoll(ctx, 0.1),
            Procsentry(ctx, "poll"), Procsentry(ctx, "connector"), *before, Procsentry(ctx, "bpf"),
            *detect, *(Procsentry(ctx, "bpf", v) for v in VARIANTS),
            Forkstat(ctx), Auditd(ctx), Bpftrace(ctx)]
