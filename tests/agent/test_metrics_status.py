"""--metrics (Prometheus text by prometheus_client), `procsentry status`, and the start event."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.wait import until

pytestmark = pytest.mark.bpf

REPO = Path(__file__).resolve().parents[2]
TRUE = os.path.realpath("/bin/true")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """GET /metrics with a real HTTP client, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def expected_samples(stats: dict) -> dict[tuple[str, tuple], float]:
    """What the endpoint must serve for this stats event."""
    out = {("procsentry_uptime_seconds", ()): stats["uptime_s"]}
    scalars = {"lost": "procsentry_lost_samples_total", "missed": "procsentry_missed_processes_total",
               "inferred_exits": "procsentry_inferred_exits_total",
               "queue_depth": "procsentry_queue_depth", "queue_peak": "procsentry_queue_peak",
               "table_size": "procsentry_table_size",
               "table_evictions": "procsentry_table_evictions_total",
               "dropped_writes": "procsentry_dropped_writes_total",
               "decode_errors": "procsentry_decode_errors_total",
               "cpu_time_s": "procsentry_cpu_seconds_total",
               "rss_bytes": "procsentry_resident_memory_bytes",
               "peak_rss_bytes": "procsentry_peak_resident_memory_bytes"}
    for field, name in scalars.items():
        out[(name, ())] = stats[field]
    labelled = {"events": ("procsentry_events_total", "type"),
                "lost_per_cpu": ("procsentry_lost_per_cpu_total", "cpu"),
                "enrichment": ("procsentry_enrichment_total", "outcome"),
                "reconcile": ("procsentry_reconcile_total", "what"),
                "kernel": ("procsentry_kernel_events_total", "counter")}
    for field, (name, label) in labelled.items():
        for k, v in stats[field].items():
            out[(name, ((label, k),))] = v
    return out


def test_metrics_match_the_stats_event_during_a_workload(watch, progs):
    port = free_port()
    w = watch("--metrics", f"127.0.0.1:{port}", "--stats-interval", "1")
    w.sensor_line()
    workload = subprocess.Popen([str(progs / "fork_storm"), "3000", TRUE], stdout=subprocess.DEVNULL)
    try:
        matched = 0
        for _ in range(3):
            # a scrape while the workload runs, and the stats event it is taken from
            def scraped():
                got = scrape(port)
                return got if ("procsentry_uptime_seconds", ()) in got else None
            got = until(scraped, 30, "a scrape with stats in it")
            uptime = got[("procsentry_uptime_seconds", ())]
            stats = w.until(lambda evs: [e for e in evs if e["event"] == "stats" and e["uptime_s"] == uptime],
                            30, f"the stats event with uptime_s {uptime}")[0]
            want = expected_samples(stats)
            assert {k: got.get(k) for k in want} == want
            # and nothing beyond: every other sample is a figure of a stats field this test
            # does not list (other work adds fields): the map entry it names, exactly
            for (name, labels), value in got.items():
                if (name, labels) in want:
                    continue
                field = name.removeprefix("procsentry_").removesuffix("_total")
                figures = stats
                if field not in stats:
                    # a map inside a map field, one level down (detection.alerts_per_rule)
                    outer = next((f for f in stats if isinstance(stats[f], dict)
                                  and field.startswith(f + "_") and field[len(f) + 1:] in stats[f]), None)
                    assert outer is not None, name
                    figures, field = stats[outer], field[len(outer) + 1:]
                if labels:
                    ((_, key),) = labels
                    assert figures[field][key] == value, (name, labels)
                else:
                    assert figures[field] == value, name
            assert stats["events"].get("exec", 0) > 0
            matched += 1
            until(lambda: scrape(port)[("procsentry_uptime_seconds", ())] != uptime, 30, "the next stats")
    finally:
        workload.kill()
        workload.wait()
    assert matched == 3
    assert w.stop() == 0


def test_metrics_address_in_use_is_one_line_exit_1(watch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        w = watch("--metrics", f"127.0.0.1:{port}")
        assert w.wait(120) == 1
    assert w.stderr.splitlines()[-1] == (
        f"procsentry: --metrics 127.0.0.1:{port}: cannot listen (Address already in use)")


def test_metrics_bad_address_is_a_usage_error():
    p = subprocess.run([sys.executable, "-m", "monitor", "watch", "--metrics", "127.0.0.1:http"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (p.returncode, p.stderr) == (
        2, "procsentry watch: error: argument --metrics: not ADDRESS:PORT: '127.0.0.1:http' "
           "(see procsentry watch --help)\n")


def status(state_dir: Path) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "monitor", "status", "--state-dir", str(state_dir),
                        "--format", "json"], capture_output=True, text=True, cwd=REPO, timeout=60)
    return p.returncode, p.stdout


def test_status_start_event_and_the_previous_runs_end(watch, tmp_path):
    state = tmp_path / "state"
    env = {"PROCSENTRY_STATE_DIR": str(state)}
    assert status(state)[0] == 3  # never ran
    # first run: no previous run; status 0 while it runs
    w = watch("--stats-interval", "1", env=env)
    w.sensor_line()
    first = w.until(lambda evs: [e for e in evs if e["event"] == "start"])[0]
    assert w.snapshot()[0] is first or w.snapshot()[0] == first  # the first line of the stream
    assert (first["previous_end"], first["previous_start"], first["previous_stop"]) == (None, None, None)
    assert first["sensor"] == first["source"] == "bpf" and first["config"] is None
    assert len(first["settings_hash"]) == 16
    until(lambda: status(state)[0] == 0, 30, "status 0 while it runs", lambda: status(state))
    rc, out = status(state)
    st = json.loads(out)
    assert st["state"] == "running" and st["pid"] == w.proc.pid and st["loss"] == 0
    # killed: status says not running (3); the next start reports a crash
    w.proc.send_signal(signal.SIGKILL)
    w.wait(30)
    assert status(state)[0] == 3
    w2 = watch("--stats-interval", "1", env=env)
    second = w2.until(lambda evs: [e for e in evs if e["event"] == "start"])[0]
    assert second["previous_end"] == "crash"
    assert second["previous_start"] == first["time"] and second["previous_stop"] is None
    assert second["settings_hash"] == first["settings_hash"]  # same settings
    assert w2.stop(signal.SIGTERM) == 0
    # stopped in order: clean, with its stop time
    w3 = watch("--stats-interval", "1", "--sweep-interval", "5", env=env)
    third = w3.until(lambda evs: [e for e in evs if e["event"] == "start"])[0]
    assert third["previous_end"] == "clean" and third["previous_start"] == second["time"]
    assert third["previous_stop"] > second["time"]
    assert third["settings_hash"] != first["settings_hash"]  # --sweep-interval differs
    # a second agent on the same state directory is refused, one line
    w4 = watch(env=env)
    assert w4.wait(120) == 1
    assert w4.stderr.splitlines()[-1] == (
        f"procsentry: {state} is in use by another procsentry (each needs its own --state-dir)")
    assert w3.stop() == 0


def test_status_says_losing_events_on_a_full_disk(watch, tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    state = tmp_path / "state"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        w = watch("--output", str(mnt / "events.jsonl"), "--stats-interval", "1",
                  env={"PROCSENTRY_STATE_DIR": str(state)})
        w.until_stderr("procsentry: cannot write events (No space left on device)")

        def losing():
            for _ in range(5):
                subprocess.run([TRUE], check=True)
            rc, out = status(state)
            return (rc, json.loads(out)) if rc == 1 else None

        rc, st = until(losing, 30, "status 1 (losing events)", lambda: status(state))
        assert st["state"] == "losing events"
        assert st["loss"] > st["loss_before"] >= 0
        assert st["stats"]["dropped_writes"] == st["loss"]
        assert w.stop() == 0
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
