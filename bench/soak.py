"""Soak: `procsentry watch` with the default 30 s sweep under a steady load of short shell
pipelines for minutes (the load that found sweeps judging records in flight). Reports missed
events, inferred exits, losses, RSS and table size over time, as a Markdown section for
bench/RESULTS.md. Not part of the test suite (tests/pipeline/test_reconcile_under_load.py is
its CI-sized version).

    sudo .venv/bin/python bench/soak.py --minutes 10 --rate 390
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load(rate: float, seconds: float, tag: str) -> int:
    procs: list[subprocess.Popen] = []
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        due = started + n / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        procs.append(subprocess.Popen(
            ["sh", "-c", f"cat /etc/hostname >/dev/null; sleep 0.05; exit {n % 7}", tag]))
        n += 1
        if len(procs) > 256:
            procs = [p for p in procs if p.poll() is None]
    for p in procs:
        p.wait(60)
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=390.0, help="pipelines per second")
    ap.add_argument("--sweep-interval", type=float, default=30.0)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="procsentry-soak-")) / "events.jsonl"
    mon = subprocess.Popen([sys.executable, "-m", "monitor", "watch", "--format", "json",
                            "--stats-interval", "30", "--sweep-interval", str(args.sweep_interval),
                            "--output", str(out)], cwd=REPO, stderr=subprocess.DEVNULL)
    time.sleep(5)
    tag = f"soak-{os.getpid()}"
    t0 = time.time()
    n = load(args.rate, args.minutes * 60, tag)
    elapsed = time.time() - t0
    time.sleep(3)
    mon.send_signal(2)
    mon.wait(60)
    kinds = collections.Counter()
    stats = []
    execs, exits = {}, collections.defaultdict(list)
    missed = inferred = 0
    with open(out, "rb") as f:
        for line in f:
            e = json.loads(line)
            kinds[e["event"]] += 1
            if e["event"] == "stats":
                stats.append(e)
            elif e["event"] == "missed":
                missed += 1
            elif e["event"] == "exit" and e["inferred"]:
                inferred += 1
            if e["event"] in ("exec", "exit") and e.get("argv") and e["argv"][-1] == tag \
                    and e["argv"][:2] == ["sh", "-c"]:
                (execs if e["event"] == "exec" else exits)[e["exec_id"]] = e if e["event"] == "exec" \
                    else exits[e["exec_id"]] + [e]
    right = sum(1 for i, e in execs.items() if len(exits.get(i, [])) == 1
                and exits[i][0]["exit_code"] == int(e["argv"][2].rsplit(" ", 1)[1]))
    last = stats[-1]
    print(f"### Soak: {args.minutes:g} min, {n} pipelines ({n / elapsed:.0f}/s), sweep every "
          f"{args.sweep_interval:g} s ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))})\n")
    print(f"- pipelines started {n}; their exec events {len(execs)}; with exactly one exit and "
          f"its real exit code {right}")
    print(f"- `missed` events {missed}; inferred exits {inferred} (stats: missed {last['missed']}, "
          f"inferred_exits {last['inferred_exits']}, reconcile {last['reconcile']})")
    print(f"- lost {last['lost']}; peak RSS {last['peak_rss_bytes'] >> 20} MiB; events {dict(kinds)}\n")
    print("| minute | RSS MiB | table size | missed | inferred exits | lost | sweeps | deferred |")
    print("|---|---|---|---|---|---|---|---|")
    for s in stats:
        print(f"| {s['uptime_s'] / 60:.1f} | {s['rss_bytes'] >> 20} | {s['table_size']} | "
              f"{s['missed']} | {s['inferred_exits']} | {s['lost']} | {s['reconcile']['sweeps']} | "
              f"{s['reconcile']['deferred']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
