"""Two procsentry configurations watching the same workload at the same time: the CPU of one over
the other's, per run.

bench/run.py runs its contenders one after the other, and on this shared host the load of other
machines drifts between two sessions by more than a 15 % difference (single repetitions of one
configuration over another ranged from -22 % to +100 %). Here both monitors run at once, each
with its own BPF programs and perf buffers, over one workload: whatever else the host does in
that window slows both alike, and the ratio of their CPU keeps only what differs between them.
The start order alternates between runs; `--control` adds runs of A against A, whose ratios
show what the method itself cannot tell apart.

    sudo .venv/bin/python bench/side_by_side.py --b-args "--rules DIR"          # detection
    sudo .venv/bin/python bench/side_by_side.py --a-args "--no-builtin-rules" --b-args "" \\
        --level realistic --runs 6 --control

CPU = utime + stime of each monitor's process tree (/proc/<pid>/stat) from the workload's
start until 1.5 s after both have written its last exec (start-up excluded). Every exec of the
workload must be in both outputs with its token (else the run is reported as incomplete).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import measure as M  # noqa: E402

LEVELS = ("storm", "realistic", "moderate", "sub-ms")  # bench/run.py's generator levels


class Monitor:
    def __init__(self, name: str, tree: Path, args: list[str], workdir: Path, python: str) -> None:
        self.name = name
        self.out = workdir / f"{name}.jsonl"
        state = workdir / f"state-{name}"
        state.mkdir(exist_ok=True)
        env = {**os.environ, "PROCSENTRY_STATE_DIR": str(state)}
        with open(self.out, "wb") as out, open(workdir / f"{name}.stderr", "wb") as err:
            self.proc = subprocess.Popen(
                [python, "-m", "monitor", "watch", "--sensor", "bpf", "--format", "json",
                 "--stats-interval", "1", *args], cwd=tree, env=env, stdout=out, stderr=err)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: see {self.out.parent}")
        try:
            with open(self.out, "rb") as f:
                return b'"event":"stats"' in f.read()
        except FileNotFoundError:
            return False

    def ticks(self) -> int:
        return M.tree_cpu_ticks([self.proc.pid])

    def captured(self, prefix: bytes) -> int:
        """Distinct tokens of this run's children among the exec events (argv: PROGRAM --token
        PREFIXnnnnnn "x y", as bench/workload.c runs each child)."""
        mark = b'"--token","' + prefix
        tokens = set()
        with open(self.out, "rb") as f:
            for line in f:
                i = line.find(mark)
                if i >= 0 and b'"event":"exec"' in line:
                    i += len(mark) - len(prefix)
                    tokens.add(line[i:line.index(b'"', i)])
        return len(tokens)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def one_run(i: int, a: tuple, b: tuple, level, args, workdir: Path) -> dict:
    """Both monitors over one workload; a and b are (name, tree, args)."""
    pair = [a, b] if i % 2 == 0 else [b, a]
    mons = {}
    try:
        for name, tree, margs in pair:
            mons[name] = Monitor(name, tree, margs, workdir, args.python)
        deadline = time.monotonic() + 60
        while not all(m.ready() for m in mons.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("a monitor did not start within 60 s")
            time.sleep(0.1)
        time.sleep(1.0)
        t0 = {k: m.ticks() for k, m in mons.items()}
        prefix = f"psside{i}x{os.getpid()}-"
        wl = M.run_generator(args.bin_dir / "workload", args.bin_dir / level.program, level.n, level.rate,
                             level.parallel, prefix, workdir / f"truth-{i}.tsv")
        # Until both have written every exec (at most 60 s): a monitor still behind would have
        # its CPU cut short, and its run left out as incomplete.
        until = time.monotonic() + 60
        while time.monotonic() < until and any(m.captured(prefix.encode()) < wl.n for m in mons.values()):
            time.sleep(0.5)
        time.sleep(1.5)
        t1 = {k: m.ticks() for k, m in mons.items()}
        cpu = {k: (t1[k] - t0[k]) / M.CLK_TCK for k in mons}
        caught = {k: m.captured(prefix.encode()) for k, m in mons.items()}
    finally:
        for m in mons.values():
            m.stop()
    return {"first": pair[0][0], "n": wl.n, "cpu_s": cpu, "captured": caught}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a-args", default="--no-builtin-rules", help="watch options of A (default: no detection)")
    ap.add_argument("--b-args", required=True, help="watch options of B")
    ap.add_argument("--a-tree", type=Path, default=REPO, help="checkout A runs from (default: this one)")
    ap.add_argument("--b-tree", type=Path, default=REPO)
    ap.add_argument("--level", choices=LEVELS, default="storm")
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--control", action="store_true", help="also run A against A, --runs // 2 times")
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--bin-dir", type=Path, default=HERE / "bin")
    args = ap.parse_args()
    # a SIGTERM unwinds like Ctrl-C, so that one_run stops both monitors (they run until told)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("side_by_side.py: run as root (the monitors load BPF programs)", file=sys.stderr)
        return 2
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    for tree in (args.a_tree, args.b_tree):
        if not (tree / "monitor" / "__main__.py").is_file():
            ap.error(f"{tree}: not a procsentry checkout")
    sys.path.insert(0, str(HERE))
    import run as R  # noqa: PLC0415 - the workload binaries, built as bench/run.py builds them
    R.ensure_binaries(args.bin_dir)
    level = R.levels_for(R.parse_args(["--levels", args.level]))[0]  # as bench/run.py runs it
    if args.level == "realistic":
        os.environ["PSBENCH_PORT"] = str(R.start_echo_server())
    a = ("A", args.a_tree.resolve(), shlex.split(args.a_args))
    b = ("B", args.b_tree.resolve(), shlex.split(args.b_args))
    plan = [("B/A", a, b)] * args.runs + ([("A/A", a, ("A2", a[1], a[2]))] * (args.runs // 2) if args.control else [])
    results: dict[str, list[float]] = {}
    print(f"A: {a[1]} {shlex.join(a[2])}\nB: {b[1]} {shlex.join(b[2])}\nlevel: {args.level}, "
          f"{args.runs} runs{' + A/A control' if args.control else ''}\n")
    print("| run | pair | first started | execs | CPU-s first of pair | CPU-s second | ratio | captured |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="psside-") as tmp:
        for i, (what, x, y) in enumerate(plan):
            r = one_run(i, x, y, level, args, Path(tmp))
            cx, cy = r["cpu_s"][x[0]], r["cpu_s"][y[0]]
            ratio = cy / cx if cx else float("nan")
            complete = all(v == r["n"] for v in r["captured"].values())
            if complete:
                results.setdefault(what, []).append(ratio)
            caught = ", ".join(f"{k} {v}/{r['n']}" for k, v in r["captured"].items())
            print(f"| {i + 1} | {what} | {r['first']} | {r['n']} | {cx:.2f} | {cy:.2f} | {(ratio - 1) * 100:+.1f} % | "
                  f"{caught}{'' if complete else ' (incomplete: left out)'} |", flush=True)
    print()
    for what, ratios in results.items():
        print(f"{what}: median {(statistics.median(ratios) - 1) * 100:+.1f} %, range "
              f"{(min(ratios) - 1) * 100:+.1f} % to {(max(ratios) - 1) * 100:+.1f} % over {len(ratios)} runs")
    return 0 if results.get("B/A") else 1


if __name__ == "__main__":
    sys.exit(main())
