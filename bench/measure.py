"""Measuring instruments of the benchmark: line collectors, process-tree CPU and RSS, the
workload runner and the ground-truth matcher.

Nothing here knows a particular contender; bench/contenders.py does.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------------------ line collection

class LineCollector:
    """Reads a pipe (or tails a file) in a thread and keeps (arrival_ns, line) for the lines that
    `route(t, line)` accepts. Arrival is CLOCK_REALTIME when the chunk holding the line's end was
    read: the moment the harness, as a consumer of the tool's output, could act on it."""

    def __init__(self, fd: int, route, tail: bool = False, tail_sleep_s: float = 0.005) -> None:
        self.fd = fd
        self.route = route
        self.tail = tail  # a regular file: poll at EOF instead of stopping
        self.tail_sleep_s = tail_sleep_s
        self.lines: list[tuple[int, bytes]] = []
        self.first_ns: int | None = None  # arrival of the first line of any kind
        self.last_kept_ns: int | None = None
        self.nlines = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = b""
        read = os.read
        fd = self.fd
        while True:
            try:
                chunk = read(fd, 1 << 20)
            except OSError:
                break
            if not chunk:
                if self.tail and not self._stop.is_set():
                    time.sleep(self.tail_sleep_s)
                    continue
                break
            t = time.time_ns()
            if self.first_ns is None:
                self.first_ns = t
            buf += chunk
            parts = buf.split(b"\n")
            buf = parts.pop()
            kept = [(t, line) for line in parts if self.route(t, line)]
            self.nlines += len(parts)
            if kept:
                with self._lock:
                    self.lines.extend(kept)
                self.last_kept_ns = t

    def take(self) -> list[tuple[int, bytes]]:
        """The kept lines so far; the collector starts a new list (so memory stays per level)."""
        with self._lock:
            out, self.lines = self.lines, []
        return out

    def peek_since(self, index: int) -> list[tuple[int, bytes]]:
        with self._lock:
            return self.lines[index:]

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.thread.join(timeout)


# ------------------------------------------------------------------------------ process trees

def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the comm (index 0 is field 3, `state`)."""
    raw = _read(PROC / str(pid) / "stat")
    if raw is None:
        return None
    return raw[raw.rfind(b")") + 2:].split()


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(PROC / str(pid) / "task")
    except OSError:
        return out
    for tid in tids:
        raw = _read(PROC / str(pid) / "task" / tid / "children")
        if raw:
            out.extend(int(x) for x in raw.split())
    return out


def tree(roots: list[int]) -> list[int]:
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(children(pid))
    return seen


def tree_cpu_ticks(roots: list[int]) -> int:
    """utime+stime+cutime+cstime over the tree: a child that ends inside the window moves its
    time into its parent's cutime when reaped, so the sum stays continuous."""
    total = 0
    for pid in tree(roots):
        f = stat_fields(pid)
        if f is not None:
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total


def tree_rss_bytes(roots: list[int]) -> int:
    total = 0
    for pid in tree(roots):
        raw = _read(PROC / str(pid) / "statm")
        if raw:
            total += int(raw.split()[1]) * PAGE
    return total


def vm_hwm_bytes(pid: int) -> int:
    raw = _read(PROC / str(pid) / "status") or b""
    for line in raw.splitlines():
        if line.startswith(b"VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def host_forks() -> int:
    """Forks since boot (the `processes` line of /proc/stat): other load on the host."""
    for line in (_read(PROC / "stat") or b"").splitlines():
        if line.startswith(b"processes "):
            return int(line.split()[1])
    return 0


class TreeSampler:
    """Samples CPU ticks and RSS of a monitor's process tree every `period` seconds."""

    def __init__(self, roots_fn, period: float = 0.1) -> None:
        self.roots_fn = roots_fn
        self.period = period
        self.samples: list[tuple[int, int]] = []  # (time_ns, cpu ticks)
        self.peak_rss = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def sample(self) -> tuple[int, int]:
        roots = self.roots_fn()
        t = time.time_ns()
        ticks = tree_cpu_ticks(roots)
        rss = tree_rss_bytes(roots)
        if rss > self.peak_rss:
            self.peak_rss = rss
        return t, ticks

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.period)

    def ticks_at_or_after(self, t_ns: int) -> int | None:
        for t, ticks in self.samples:
            if t >= t_ns:
                return ticks
        return None

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)


# ------------------------------------------------------------------------------ workload

@dataclass
class Truth:
    seq: int
    pid: int
    ppid: int
    exec_ns: int
    life_ns: int
    argv: list[str]

    @property
    def token(self) -> str:
        return self.argv[2]


@dataclass
class WorkloadRun:
    start_ns: int
    end_ns: int
    wall_s: float
    truth: list[Truth] = field(default_factory=list)
    stress_ops: float | None = None  # stress-ng: bogo ops
    stress_rate: float | None = None  # stress-ng: bogo ops/s (real time)
    failed: int = 0
    host_forks: int = 0
    cpu_s: float = 0.0  # user+system time of the workload and all its children

    @property
    def n(self) -> int:
        return len(self.truth) if self.truth else int(self.stress_ops or 0)

    @property
    def median_life_ms(self) -> float:
        return statistics.median(t.life_ns for t in self.truth) / 1e6 if self.truth else float("nan")


def read_truth(path: Path) -> list[Truth]:
    out = []
    for line in path.read_text().splitlines():
        seq, pid, ppid, ts, life, argv = line.split("\t", 5)
        out.append(Truth(int(seq), int(pid), int(ppid), int(ts), int(life), argv.split("\x1f")))
    return out


def _run_timed(cmd: list[str], cwd: Path | None = None) -> tuple[int, str, float, int, int]:
    """Run cmd; return (status, output, CPU seconds of it and every child it reaped, start and
    end CLOCK_REALTIME ns). wait4 reports the child's own time plus its reaped children's."""
    t0 = time.time_ns()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd)
    out = p.stdout.read().decode("utf-8", "replace")
    _, status, ru = os.wait4(p.pid, 0)
    t1 = time.time_ns()
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    return p.returncode, out, ru.ru_utime + ru.ru_stime, t0, t1


def run_generator(binary: Path, program: Path, n: int, rate: float, parallel: int, prefix: str,
                  truth_path: Path) -> WorkloadRun:
    forks0 = host_forks()
    code, out, cpu, t0, t1 = _run_timed([str(binary), "-n", str(n), "-r", str(rate), "-j", str(parallel),
                                         "-t", prefix, "-o", str(truth_path), str(program)])
    forks = host_forks() - forks0
    fields = out.split()
    if code not in (0, 1) or "wall_ns" not in fields:
        raise RuntimeError(f"workload failed ({code}): {out.strip()[-300:]}")
    wall_ns = int(fields[fields.index("wall_ns") + 1])
    failed = int(fields[fields.index("failed") + 1])
    truth = read_truth(truth_path)
    return WorkloadRun(t0, t1, wall_ns / 1e9, truth, failed=failed, host_forks=forks - n - 1, cpu_s=cpu)


def run_stress_ng(ops: int, workers: int, stressor: str = "exec") -> WorkloadRun:
    """stress-ng refuses to run its exec stressor as root: run it as nobody, in a scratch
    directory nobody can write."""
    tmpdir = Path(tempfile.mkdtemp(prefix="psbench-stress-"))
    tmpdir.chmod(0o1777)
    try:
        return _run_stress_ng(ops, workers, tmpdir, stressor)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _run_stress_ng(ops: int, workers: int, tmpdir: Path, stressor: str = "exec") -> WorkloadRun:
    forks0 = host_forks()
    extra = ["--exec-max", "16"] if stressor == "exec" else []
    code, out, cpu, t0, t1 = _run_timed(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "stress-ng", f"--{stressor}", str(workers), f"--{stressor}-ops", str(ops), *extra,
         "--metrics-brief", "--temp-path", str(tmpdir), "--timeout", "120"], cwd=tmpdir)
    ops_done = rate = None
    for line in out.splitlines():
        parts = line.split()
        # "stress-ng: metrc: [pid] exec  BOGO_OPS REAL USR SYS RATE_REAL RATE_CPU"
        if stressor in parts and len(parts) >= 10 and parts[parts.index(stressor) + 1].isdigit():
            i = parts.index(stressor)
            ops_done, rate = float(parts[i + 1]), float(parts[i + 5])
    if code != 0 or ops_done is None:
        raise RuntimeError(f"stress-ng failed ({code}): {out.strip()[-300:]}")
    return WorkloadRun(t0, t1, (t1 - t0) / 1e9, stress_ops=ops_done, stress_rate=rate,
                       host_forks=host_forks() - forks0, cpu_s=cpu)


# ------------------------------------------------------------------------------ matching

@dataclass
class Event:
    """One exec as a contender reported it."""
    t_ns: int  # arrival at the harness
    pid: int
    ppid: int | None = None
    argv: list[str] | None = None  # tools that report the argument vector
    cmd: str | None = None  # tools that report one space-joined string (ps, forkstat)
    exe: str | None = None  # tools that report only the file (bpftrace)

    def has_token(self, token: str) -> bool:
        if self.argv is not None:
            return token in self.argv
        if self.cmd is not None:
            return token in self.cmd.split()
        return False

    def argv_exact(self, argv: list[str]) -> bool:
        if self.argv is not None:
            return self.argv == argv
        if self.cmd is not None:
            return self.cmd == " ".join(argv)
        return False

    def mentions(self, word: str) -> bool:
        return any(word in (s or "") for s in (self.cmd, self.exe, *(self.argv or ())[:1]))


@dataclass
class Match:
    n: int
    seen: int = 0  # an exec event with the right PID
    captured: int = 0  # right PID and the unique token
    exact: int = 0  # right PID and exactly the argv
    ppid_ok: int = 0  # captured with the right parent PID
    latencies_ms: list[float] = field(default_factory=list)


def match(truth: list[Truth], events: list[Event], want_ppid: bool, has_argv: bool = True) -> Match:
    """Ground truth against reported events. A tool without argv (bpftrace here) can only be
    matched by PID: its `seen` is all there is, and its latency is taken from that."""
    by_pid: dict[int, list[Event]] = {}
    for ev in events:
        by_pid.setdefault(ev.pid, []).append(ev)
    m = Match(len(truth))
    for t in truth:
        cands = by_pid.get(t.pid)
        if not cands:
            continue
        m.seen += 1
        if not has_argv:
            if want_ppid and any(e.ppid == t.ppid for e in cands):
                m.ppid_ok += 1
            m.latencies_ms.append((min(e.t_ns for e in cands) - t.exec_ns) / 1e6)
            continue
        tok = [e for e in cands if e.has_token(t.token)]
        if not tok:
            continue
        m.captured += 1
        if any(e.argv_exact(t.argv) for e in tok):
            m.exact += 1
        if want_ppid and any(e.ppid == t.ppid for e in tok):
            m.ppid_ok += 1
        first = min(e.t_ns for e in tok)
        m.latencies_ms.append((first - t.exec_ns) / 1e6)
    return m


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None
