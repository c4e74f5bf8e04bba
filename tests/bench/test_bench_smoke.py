"""The benchmark harness at CI size (bench/run.py --smoke): it keeps working, and at that size
procsentry's BPF sensor must miss nothing.

Baseline + procsentry --sensor bpf, 200 execs per level, one repetition, results in a tmp dir.
Only what holds at any speed is asserted (counts, argv, parents, files), never a timing.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out, js = tmp / "RESULTS.md", tmp / "results.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--python", sys.executable,
                        "--out", str(out), "--json", str(js), "--workdir", str(tmp / "work"),
                        "--bin-dir", str(tmp / "bin")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(js.read_text()), out.read_text()


@pytest.mark.bpf
def test_every_exec_captured_with_exact_argv(smoke):
    data, _ = smoke
    assert data["unavailable"] == {}
    bases = data["sessions"]["baseline"]
    (ps,) = data["sessions"]["procsentry-bpf"]
    assert len(bases) == 2  # the no-monitor run is repeated: every slowdown divides by it
    assert set(ps["levels"]) == {"moderate", "storm"}
    for level, r in ps["levels"].items():
        assert r["n"] == 200 and r["failed"] == 0, level
        for base in bases:
            assert base["levels"][level]["n"] == 200 and base["levels"][level]["failed"] == 0
        assert (r["seen"], r["captured"], r["exact"], r["ppid_ok"]) == (200, 200, 200, 200), level
        assert (r["lost"], r["dropped"]) == (0, 0), level
        assert "error" not in r, r.get("error")
        # Every measurement was taken, whatever its value.
        assert r["cpu_s"] >= 0 and r["lat_p50"] is not None and r["lat_p99"] >= r["lat_p50"]
    assert ps["start_s"] > 0 and ps["peak_rss"] > 0


@pytest.mark.bpf
def test_results_written(smoke):
    data, md = smoke
    summ = data["summary"]["procsentry-bpf"]
    assert summ["levels"]["storm"]["captured_pct"] == 100.0
    assert summ["levels"]["moderate"]["slowdown"] is not None
    assert md.startswith("# procsentry benchmark results (smoke run)")
    assert "| procsentry `--sensor bpf` | 100.00% | 100.00% | 0 |" in md
    assert "## Targets for procsentry `--sensor bpf`" in md
    assert "storm completeness" in md and "| yes |" in md.split("storm completeness", 1)[1].splitlines()[0]
