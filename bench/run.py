#!/usr/bin/env python3
"""procsentry benchmark: completeness and cost, side by side with what a user would otherwise run.

    sudo make bench          the full run (its duration heads bench/RESULTS.md); writes it
    sudo make bench-smoke    baseline + procsentry bpf, 200 execs, one repetition (seconds)

Every contender (no monitor, `ps -ef` polling, procsentry's poll/connector/bpf sensors, forkstat,
auditd, bpftrace) is started in turn, in a shuffled order per repetition, and watches the same
workloads: a ground-truth generator (bench/workload.c) at three levels and `stress-ng --exec`.
The generator records every PID it forked, its unique argv token and the CLOCK_REALTIME of each
exec; each tool's output is read as it arrives and matched by PID and token afterwards.
Slowdowns are ratios to the no-monitor runs of the same benchmark run (two per repetition,
interleaved with the rest); every figure is a median over the repetitions. See bench/RESULTS.md for the definitions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import contenders as C  # noqa: E402
import measure as M  # noqa: E402
import report  # noqa: E402

EX_NOPERM = 77


@dataclass
class Level:
    name: str
    title: str
    program: str = ""  # "true" or "nop": resolved against the bin dir
    n: int = 0
    rate: float = 0.0
    parallel: int = 1
    stress_ops: int = 0  # > 0: a stress-ng level
    stressor: str = "exec"  # the stress-ng stressor: exec, or fork (forks that never exec)

    @property
    def is_stress(self) -> bool:
        return self.stress_ops > 0


def levels_for(args) -> list[Level]:
    ncpu = os.cpu_count() or 1
    if args.smoke:
        return [Level("moderate", "moderate: 200 /bin/true execs at 200/s", "true", 200, 200.0, 1),
                Level("storm", f"storm: 200 sub-ms execs, {2 * ncpu} in flight", "nop", 200, 0.0, 2 * ncpu)]
    all_levels = [
        Level("moderate", f"moderate: {args.moderate_n} /bin/true execs paced at {args.moderate_rate:g}/s",
              "true", args.moderate_n, args.moderate_rate, 1),
        Level("sub-ms", f"sub-ms children: {args.subms_n} sequential execs of a static no-op (lives well under 1 ms)",
              "nop", args.subms_n, 0.0, 1),
        Level("storm", f"storm: {args.storm_n} no-op execs as fast as possible, {2 * ncpu} in flight",
              "nop", args.storm_n, 0.0, 2 * ncpu),
        Level("stress-ng", f"stress-ng --exec 2 --exec-ops {args.stress_ops} (run as nobody)",
              stress_ops=args.stress_ops),
        # Processes that live like real ones (bench/life.c): 10-200 ms each, a file, a pipe and a
        # TCP connection to a loopback server open, a few hundred a second with many in flight,
        # so every monitor enriches them (the hold window spares none).
        Level("realistic", f"realistic: {args.realistic_n} clients living 10-200 ms (a file, a pipe, "
              f"a loopback TCP connection) at {args.realistic_rate:g}/s",
              "life", args.realistic_n, args.realistic_rate, 64),
        Level("stress-fork", f"stress-ng --fork 2 --fork-ops {args.fork_ops} (forks that never exec)",
              stress_ops=args.fork_ops, stressor="fork"),
    ]
    wanted = args.levels.split(",") if args.levels else [lv.name for lv in all_levels]
    return [lv for lv in all_levels if lv.name in wanted]


def ensure_binaries(bin_dir: Path) -> None:
    """Compile the workload at bench time (bench/bin is gitignored)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, flags in (("workload", []), ("nop", ["-static"]), ("life", [])):
        src, exe = HERE / f"{name}.c", bin_dir / name
        if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
            continue
        cmd = ["cc", "-O2", "-Wall", "-o", str(exe), str(src), *flags]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            subprocess.run(cmd[:-1] if flags else cmd, check=True)  # no libc.a: dynamic nop
    # The moderate level's child is /bin/true, copied so that its path is unique to the benchmark
    # (other load on the host may exec /bin/true too, and bpftrace only reports the path).
    true = bin_dir / "true"
    if not true.exists():
        shutil.copy2(shutil.which("true") or "/bin/true", true)


# ------------------------------------------------------------------------------ one session

def drain(c: C.Contender, wl_end_ns: int, quiet_s: float, max_s: float) -> int:
    """Wait until the tool has reported nothing relevant for quiet_s (it has caught up), at most
    max_s after the workload ended. Returns the end of the measured window."""
    deadline = wl_end_ns + int(max_s * 1e9)
    while True:
        now = time.time_ns()
        last = max(c.last_relevant_ns, wl_end_ns)
        if now - last >= quiet_s * 1e9 or now > deadline or not c.alive():
            return last
        time.sleep(0.05)


def run_level(c: C.Contender, lv: Level, tag: str, args, sampler: M.TreeSampler | None,
              before: dict | None) -> tuple[dict, dict | None]:
    prefix = f"{c.ctx.prefix}{tag}-"
    program = args.bin_dir / lv.program if lv.program else None
    c.markers = (b"stress-ng",) if lv.is_stress else (prefix.encode(), str(program).encode())
    c.last_relevant_ns = 0
    if c.collector is not None:
        c.collector.take()  # idle lines between levels are not this level's
    cpu0 = M.tree_cpu_ticks(c.roots())
    if lv.is_stress:
        wl = M.run_stress_ng(lv.stress_ops, 2, lv.stressor)
    else:
        wl = M.run_generator(args.bin_dir / "workload", program, lv.n, lv.rate, lv.parallel, prefix,
                             c.ctx.workdir / f"truth-{tag}.tsv")
    res: dict = {"n": wl.n, "wall_s": wl.wall_s, "workload_cpu_s": wl.cpu_s, "other_forks": wl.host_forks,
                 "failed": wl.failed}
    if lv.is_stress:
        res.update(stress_ops=wl.stress_ops, stress_rate=wl.stress_rate)
    else:
        res["median_life_ms"] = wl.median_life_ms
    if isinstance(c, C.Baseline):
        return res, None
    quiet = max(0.6, 1.5 * getattr(c, "interval", 0))
    t_end = drain(c, wl.end_ns, quiet, args.max_drain)
    res["drain_s"] = (t_end - wl.end_ns) / 1e9
    cpu1 = sampler.ticks_at_or_after(t_end) if sampler else None
    if cpu1 is None:
        cpu1 = M.tree_cpu_ticks(c.roots())
    res["cpu_s"] = (cpu1 - cpu0) / M.CLK_TCK
    after = c.counters(t_end)
    if after is not None and before is not None:
        res["lost"] = after["lost"] - before["lost"]
        res["dropped"] = after["dropped"] - before["dropped"]
    events = [e for e in c.parse(c.collector.take()) if e.t_ns >= wl.start_ns]
    if lv.is_stress:
        res["stress_seen"] = len({e.pid for e in events if e.mentions("stress-ng")})
    else:
        m = M.match(wl.truth, events, c.has_ppid, c.has_argv)
        res.update(seen=m.seen, captured=m.captured, exact=m.exact, ppid_ok=m.ppid_ok,
                   lat_p50=M.percentile(m.latencies_ms, 0.5), lat_p99=M.percentile(m.latencies_ms, 0.99))
    if not c.alive():
        res["error"] = c.died_reason()
    return res, after


def run_session(c: C.Contender, levels: list[Level], rep: int, ci: int, args, log) -> dict:
    out: dict = {"rep": rep, "levels": {}}
    sampler = None
    try:
        c.start()
        out["start_s"] = c.wait_ready(args.ready_timeout)
        if c.collector is not None:
            c.collector.take()
        sampler = M.TreeSampler(c.roots) if c.roots() else None
        before = c.counters(time.time_ns())
        for li, lv in enumerate(levels):
            time.sleep(args.gap)
            res, before = run_level(c, lv, f"{rep}.{ci}.{li}", args, sampler, before)
            out["levels"][lv.name] = res
            log(f"    {lv.name:10s} {report.brief(res)}")
            if not c.alive():
                log(f"    {c.name} died: {c.died_reason()}")
                break
        roots = c.roots()
        hwm = sum(M.vm_hwm_bytes(p) for p in roots)
        out["peak_rss"] = max(hwm, sampler.peak_rss if sampler else 0) or None
    finally:
        if sampler is not None:
            sampler.stop()
        c.stop()
    return out


# ------------------------------------------------------------------------------ profile

def profile(ctx: C.Context, args, log) -> dict | None:
    """procsentry --sensor bpf (its defaults) under one level (--profile-level, the storm unless
    told), sampled by py-spy (raw collapsed stacks)."""
    pyspy = Path(args.python).parent / "py-spy"
    if not pyspy.exists():
        pyspy = Path(shutil.which("py-spy") or "")
    if not pyspy.is_file():
        return {"error": "py-spy is not installed (bench/setup.sh installs it into the venv)"}
    c = C.Procsentry(ctx, "bpf")
    lv = next(lv for lv in levels_for(argparse.Namespace(**{**vars(args), "smoke": False,
                                                               "levels": args.profile_level})))
    raw = args.workdir / "profile.txt"
    spy = None
    try:
        c.start()
        c.wait_ready(args.ready_timeout)
        spy = subprocess.Popen([str(pyspy), "record", "--format", "raw", "--rate", "100", "--nonblocking",
                                "--pid", str(c.proc.pid), "-o", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=open(args.workdir / "py-spy.stderr", "wb"))
        time.sleep(1.0)
        res, _ = run_level(c, lv, "profile", args, None, None)
        log(f"    profile {lv.name} {report.brief(res)}")
    except C.NotAvailable as e:
        return {"error": str(e)}
    finally:
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        c.stop()
    if not raw.exists():
        return {"error": "py-spy wrote no profile: " + (args.workdir / "py-spy.stderr").read_text()[-300:]}
    return {**report.summarise_profile(raw), "level": lv.title}


def start_echo_server() -> int:
    """The realistic level's loopback TCP server: echoes what each client sends, one thread per
    connection (the clients live 10-200 ms). Returns its port."""
    srv = socket.create_server(("127.0.0.1", 0), backlog=512)

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(4096):
                    conn.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]


# ------------------------------------------------------------------------------ main

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="baseline + procsentry bpf, 200 execs, 1 repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--contenders", help="comma-separated names (default: all)")
    ap.add_argument("--levels", help="comma-separated: moderate,sub-ms,storm,stress-ng,realistic,stress-fork")
    ap.add_argument("--moderate-n", type=int, default=800)
    ap.add_argument("--moderate-rate", type=float, default=200.0)
    ap.add_argument("--subms-n", type=int, default=2000)
    ap.add_argument("--storm-n", type=int, default=20000)
    ap.add_argument("--stress-ops", type=int, default=320)
    ap.add_argument("--realistic-n", type=int, default=1500)
    ap.add_argument("--realistic-rate", type=float, default=300.0)
    ap.add_argument("--fork-ops", type=int, default=20000)
    ap.add_argument("--compare-tree", type=Path, default=None,
                    help="another checkout whose procsentry runs as contender procsentry-bpf-before")
    ap.add_argument("--detection", type=Path, default=None, metavar="RULES_DIR",
                    help="also run procsentry-bpf-nodetect (--no-builtin-rules) and "
                         "procsentry-bpf-rules (--rules RULES_DIR): what detection costs")
    ap.add_argument("--baseline-runs", type=int, default=2, help="no-monitor runs per repetition")
    ap.add_argument("--gap", type=float, default=0.5, help="idle seconds before each level")
    ap.add_argument("--max-drain", type=float, default=60.0, help="longest wait for a tool to catch up")
    ap.add_argument("--ready-timeout", type=float, default=60.0)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-level", default="storm",
                    choices=("moderate", "sub-ms", "storm", "stress-ng", "realistic", "stress-fork"),
                    help="the level the py-spy profile runs (default: storm)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python")
                    if (REPO / ".venv" / "bin" / "python").exists() else sys.executable)
    ap.add_argument("--bin-dir", type=Path, default=HERE / "bin")
    ap.add_argument("--workdir", type=Path, default=HERE / "out")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--json", type=Path, default=None, help="raw results (default: WORKDIR/results.json)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.reps = 1
        args.no_profile = True
        args.contenders = args.contenders or "baseline,procsentry-bpf"
    if args.detection is not None:
        if not args.detection.is_dir():
            ap.error(f"--detection {args.detection}: not a directory")
        args.detection = args.detection.resolve()  # the monitor runs in the repository
    args.bin_dir = args.bin_dir.resolve()
    args.workdir = args.workdir.resolve()
    args.json = args.json or args.workdir / "results.json"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: must run as root (it loads BPF programs and audit rules): sudo make bench", file=sys.stderr)
        return EX_NOPERM
    t_begin = time.monotonic()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ensure_binaries(args.bin_dir)

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_begin:6.1f}s] {msg}", file=sys.stderr, flush=True)

    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    ctx = C.Context(REPO, args.python, args.workdir, f"psb{rng.randrange(16 ** 6):06x}")
    levels = levels_for(args)
    if any(lv.program == "life" for lv in levels) or (not args.no_profile and args.profile_level == "realistic"):
        os.environ["PSBENCH_PORT"] = str(start_echo_server())  # inherited by the workload
    if any(lv.is_stress for lv in levels) and not shutil.which("stress-ng"):
        log("stress-ng is not installed: skipping that level")
        levels = [lv for lv in levels if not lv.is_stress]
    names = args.contenders.split(",") if args.contenders else None

    def fresh() -> list[C.Contender]:
        cs = C.all_contenders(ctx, args.compare_tree, args.detection)
        return [c for c in cs if names is None or c.name in names]

    roster = fresh()
    unavailable: dict[str, str] = {}
    for c in roster:
        reason = c.unavailable()
        if reason:
            unavailable[c.name] = reason
    sessions: dict[str, list[dict]] = {c.name: [] for c in roster}
    orders = []
    log(f"run {ctx.prefix}, seed {seed}, {args.reps} repetition(s), levels {[lv.name for lv in levels]}")
    try:
        for rep in range(args.reps):
            cs = [c for c in fresh() if c.name not in unavailable]
            # The baseline runs twice per repetition: every slowdown divides by it, so its noise
            # counts twice as much as any contender's.
            cs += [C.Baseline(ctx) for _ in range(args.baseline_runs - 1) if any(c.name == "baseline" for c in cs)]
            rng.shuffle(cs)
            orders.append([c.name for c in cs])
            log(f"repetition {rep + 1}/{args.reps}: {', '.join(c.name for c in cs)}")
            for ci, c in enumerate(cs):
                log(f"  {c.name}")
                try:
                    sessions[c.name].append(run_session(c, levels, rep, ci, args, log))
                except C.NotAvailable as e:
                    unavailable[c.name] = str(e)
                    log(f"    not available: {e}")
                except (OSError, RuntimeError, ValueError) as e:  # one broken session is data too
                    sessions[c.name].append({"rep": rep, "levels": {}, "error": f"{type(e).__name__}: {e}"})
                    log(f"    session failed: {type(e).__name__}: {e}")
        prof = None if args.no_profile else profile(ctx, args, lambda m: log(m))
    except KeyboardInterrupt:
        log("interrupted: writing what was measured")
        prof = None
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "host": platform.node(), "seed": seed, "reps": args.reps, "orders": orders,
        "loadavg": os.getloadavg(), "duration_s": time.monotonic() - t_begin, "smoke": args.smoke,
        "levels": [{"name": lv.name, "title": lv.title} for lv in levels],
        "tools": report.tool_versions(),
    }
    labels = {c.name: c.label for c in roster}
    notes = {c.name: c.note for c in roster if c.note}
    caps = {c.name: {"argv": c.has_argv, "ppid": c.has_ppid, "event_based": c.event_based} for c in roster}
    data = {"meta": meta, "labels": labels, "notes": notes, "caps": caps, "unavailable": unavailable,
            "sessions": sessions, "profile": prof}
    data["summary"] = report.summarise(data)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1, default=str))
    args.out.write_text(report.render(data))
    log(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
