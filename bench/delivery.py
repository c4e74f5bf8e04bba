#!/usr/bin/env python3
"""Delivery benchmark: procsentry watch with each destination, the storm and a moderate level.

    sudo .venv/bin/python bench/delivery.py [--storm 20000] [--moderate 800] [--out bench/DELIVERY.md]

For each destination (a local file alone, then RELP to rsyslogd, then a Redis stream, each with
the local file as well) it reports:
- delivered events/s: events from the first to the last of the storm, divided by the time from
  the storm's start until the collector stored the last one;
- monitor CPU per 1,000 execs (the daemon's process, delivery threads included) against the
  file-only run of the same invocation;
- end-to-end latency p50/p99 at the moderate level (800 /bin/true at 200/s): from the exec's
  kernel timestamp (the event's `time`) to the collector storing it (rsyslog's timegenerated
  with microseconds; for Redis, a reader blocked in XREAD stamps each entry as it arrives).
The collectors are the tests' (tests/delivery/servers.py), on 127.0.0.1, durable settings.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "delivery"))

import measure as M  # noqa: E402
from servers import Redis, Rsyslog  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def parse_time(s: str) -> float:
    # RFC 3339 with nanoseconds (events) or microseconds and an offset (rsyslog)
    if s.endswith("Z"):
        base, frac = s[:-1].split(".")
        return datetime.fromisoformat(base + "+00:00").timestamp() + float("0." + frac)
    return datetime.fromisoformat(s).timestamp()


class Tail:
    """The local JSON-lines file, parsed incrementally (it grows by hundreds of thousands of
    lines on a busy host, and is polled every 20 ms)."""

    def __init__(self, path: Path) -> None:
        self.path, self.off, self.lines = path, 0, []

    def read(self) -> list[dict]:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self.off += end
            for line in data[:end].splitlines():
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    pass
        return self.lines

    def last_seq(self) -> int:
        return max((e["seq"] for e in self.read()[-1000:]), default=0)


class StampedRsyslog(Rsyslog):
    """rsyslog writing `timegenerated MSG` per line: when it stored each event."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        text = self.conf.read_text().replace('string="%msg%\\n"', 'string="%timegenerated:::date-rfc3339% %msg%\\n"')
        self.conf.write_text(text)

    def stored(self) -> list[tuple[float, dict]]:
        # incremental: the file grows to tens of MB and is polled every 20 ms
        if not hasattr(self, "_parsed"):
            self._parsed, self._off = [], 0
        if self.out.exists():
            with open(self.out, "rb") as f:
                f.seek(self._off)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._off += end
            for line in data[:end].splitlines():
                ts, _, body = line.partition(b" ")
                try:
                    self._parsed.append((parse_time(ts.decode()), json.loads(body)))
                except ValueError:
                    pass
        return self._parsed


class StampedRedis(Redis):
    """A Redis stream and a reader blocked in XREAD that stamps each entry on arrival."""

    KEY = "procsentry:bench"

    def start(self, wait: bool = True):
        super().start(wait)
        self.arrivals = getattr(self, "arrivals", [])
        self.seqs = getattr(self, "seqs", set())
        self._stop = False
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        return self

    def _read(self) -> None:
        # Only the arrival time and the raw entry here: parsing 60,000 JSON documents in this
        # thread would compete for the 2 CPUs with what is measured. The ID is "<seq>-<sub>".
        c = self.client()
        last = "0-0"
        while not self._stop:
            try:
                got = c.xread({self.KEY: last}, block=500, count=10000)
            except Exception:  # noqa: BLE001 - the server is going away
                return
            now = time.time()
            for _key, entries in got or []:
                for eid, fields in entries:
                    last = eid
                    self.arrivals.append((now, eid, fields[b"json"]))
                    seq, sub = eid.split(b"-")
                    if sub == b"0":
                        self.seqs.add(int(seq))

    def has_seq(self, seq: int) -> bool:
        return seq in self.seqs

    def stored(self) -> list[tuple[float, dict]]:
        return [(t, json.loads(raw)) for t, _eid, raw in list(self.arrivals)]

    def kill(self, sig=9) -> None:
        self._stop = True
        super().kill(sig)


def run_one(kind: str, tmp: Path, fork_storm: Path, storm_n: int, moderate_n: int) -> dict:
    d = tmp / kind
    d.mkdir()
    state = d / "state"
    state.mkdir(mode=0o700)
    local = d / "local.jsonl"
    server = None
    outputs = ["--output", str(local)]
    if kind == "relp":
        server = StampedRsyslog(d / "rsyslog").start()
        outputs += ["--output", f"relp://127.0.0.1:{server.port}?max_size=512k"]
    elif kind == "redis":
        server = StampedRedis(d / "redis").start()
        outputs += ["--output", f"redis://127.0.0.1:{server.port}/{StampedRedis.KEY}"]
    w = subprocess.Popen([sys.executable, "-m", "monitor", "watch", "--state-dir", str(state), *outputs,
                          "--stats-interval", "600", "--format", "json", "--retry-max", "0.5"], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tail = Tail(local)
    stored = (lambda: server.stored()) if server else (lambda: [(0.0, e) for e in tail.read()])

    def wait_seq(seq: int, timeout: float = 600) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server is None:
                if tail.last_seq() >= seq:
                    return time.time()
            elif isinstance(server, StampedRedis):
                if server.has_seq(seq):
                    return time.time()
            elif any(e.get("seq") == seq for _t, e in stored()[-5000:]):
                return time.time()
            time.sleep(0.02)
        raise SystemExit(f"{kind}: seq {seq} not stored after {timeout}s")

    try:
        deadline = time.monotonic() + 30
        while not tail.read() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        first_seq = tail.last_seq() + 1
        cpu0 = M.tree_cpu_ticks([w.pid])
        t0 = time.time()
        subprocess.run([str(fork_storm), str(storm_n), "/bin/true"], stdout=subprocess.DEVNULL, check=True)
        storm_s = time.time() - t0
        time.sleep(0.5)
        last_seq = tail.last_seq()
        t_last = wait_seq(last_seq)
        cpu1 = M.tree_cpu_ticks([w.pid])
        delivered_eps = (last_seq - first_seq + 1) / (t_last - t0)
        # moderate: 200 execs per second, latency from the exec to the collector
        tokens = set()
        start = time.time()
        for i in range(moderate_n):
            tok = f"lat-{kind}-{i}"
            tokens.add(tok)
            subprocess.run(["/bin/true", tok])
            delay = start + (i + 1) / 200.0 - time.time()
            if delay > 0:
                time.sleep(delay)
        time.sleep(0.5)
        wait_seq(tail.last_seq())
        lat = []
        for t_stored, e in stored():
            if e.get("event") == "exec" and e.get("argv") and len(e["argv"]) == 2 and e["argv"][1] in tokens:
                lat.append((t_stored - parse_time(e["time"])) * 1000)
        lat.sort()
        drain_eps = None
        if server:
            # backlog: the collector down during a 5,000-exec storm, then back; the spool
            # drains at --drain-rate (default 10,000 events/s) at most
            before = tail.last_seq()
            server.kill()
            subprocess.run([str(fork_storm), "5000", "/bin/true"], stdout=subprocess.DEVNULL, check=True)
            time.sleep(0.5)
            backlog_last = tail.last_seq()
            t_up = time.time()
            server.start()
            drain_eps = (backlog_last - before) / (wait_seq(backlog_last) - t_up)
        return {"drain_eps": drain_eps, "kind": kind, "storm_s": storm_s, "events": last_seq - first_seq + 1,
                "delivered_eps": delivered_eps, "cpu_s_per_1k": (cpu1 - cpu0) / TICK / storm_n * 1000,
                "lat_n": len(lat),
                "p50": lat[len(lat) // 2] if lat and server else None,
                "p99": lat[int(len(lat) * 0.99)] if lat and server else None}
    finally:
        w.terminate()
        w.wait(30)
        if server:
            server.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storm", type=int, default=20000)
    ap.add_argument("--moderate", type=int, default=800)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/delivery.py needs root (the BPF sensor)", file=sys.stderr)
        return 77
    with tempfile.TemporaryDirectory(prefix="procsentry-bench-") as t:
        tmp = Path(t)
        fork_storm = tmp / "fork_storm"
        subprocess.run(["cc", "-O1", "-o", str(fork_storm), str(REPO / "tests" / "progs" / "fork_storm.c")], check=True)
        rows = [run_one(k, tmp, fork_storm, args.storm, args.moderate) for k in ("file", "relp", "redis")]
    base = rows[0]["cpu_s_per_1k"]
    lines = [f"Delivery benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.uname().release}, "
             f"{os.cpu_count()} CPUs; storm {args.storm} execs of /bin/true as fast as possible; moderate "
             f"{args.moderate} /bin/true at 200/s)", "",
             "| destination | storm time | events | delivered events/s (storm) | backlog drain events/s | monitor CPU-s / 1k execs | vs file | latency p50 / p99 (moderate) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = f"{r['p50']:.1f} / {r['p99']:.1f} ms" if r["p50"] is not None else "n/a"
        lines.append(f"| {r['kind']}{' (+ file)' if r['kind'] != 'file' else ''} | {r['storm_s']:.2f} s | {r['events']} | "
                     f"{r['delivered_eps']:.0f} | {'n/a' if r['drain_eps'] is None else round(r['drain_eps'])} | {r['cpu_s_per_1k']:.3f} | {r['cpu_s_per_1k'] / base:.2f}x | {lat} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
