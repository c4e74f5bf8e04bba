"""Cost of detection per process event, offline: a recorded `procsentry watch` stream replayed
in-process through the Detector (built-in pack plus --rules), timing observe() alone.

    python bench/detect_cost.py --rules DIR [--rules DIR2] STREAM.jsonl

Prints rules loaded, process events evaluated, rule evaluations per event (what the index by
executable basename leaves), alerts per level, and microseconds per event (median of 5 passes,
each pass a fresh Detector so stateful rules start empty). The live path adds nothing else:
pipeline.emit_process calls the same observe() on the same records.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.detect.engine import Detector  # noqa: E402
from monitor.events import ExitEvent, ProcessEvent  # noqa: E402

_FIELDS = {cls: {f for f in cls.__dataclass_fields__} for cls in (ProcessEvent, ExitEvent)}


def as_record(ev: dict):
    """The replayed dict as the record the live pipeline hands to observe() (nested values
    stay dicts; fields.attr reads both), so the timing is the live path's."""
    cls = ExitEvent if ev.get("event") == "exit" else ProcessEvent
    if ev.get("event") not in ("exec", "fork", "exit", "existing", "missed"):
        return None
    try:
        return cls(**{k: v for k, v in ev.items() if k in _FIELDS[cls]})
    except TypeError:
        return None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("stream")
    p.add_argument("--rules", action="append", default=[])
    p.add_argument("--no-builtin-rules", action="store_true")
    p.add_argument("--passes", type=int, default=5)
    a = p.parse_args()
    events = []
    with open(a.stream, "rb") as f:
        for line in f:
            try:
                ev = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            rec = as_record(ev) if isinstance(ev, dict) else None
            if rec is not None:
                events.append(rec)
    per_pass = []
    for _ in range(a.passes):
        det = Detector.from_paths(a.rules, builtin=not a.no_builtin_rules)
        t0 = time.perf_counter()
        alerts = []
        for ev in events:
            alerts += det.observe(ev)
        per_pass.append(time.perf_counter() - t0)
    c = det.counters()
    n = c["events_evaluated"]
    levels: dict[str, int] = {}
    for al in alerts:
        levels[al.rule.level] = levels.get(al.rule.level, 0) + 1
    best = statistics.median(per_pass)
    fastest = min(per_pass)
    print(f"rules loaded {c['rules_loaded']} (skipped {c['rules_skipped']}); events {len(events)}, "
          f"process events evaluated {n}; rule evaluations per evaluated event "
          f"{c['rule_evaluations'] / max(n, 1):.1f}; alerts {len(alerts)} {dict(sorted(levels.items()))}; "
          f"evaluation errors {c['evaluation_errors']}")
    print(f"median of {a.passes} passes: {best * 1e6 / max(len(events), 1):.1f} us per event "
          f"({best * 1e6 / max(n, 1):.1f} us per evaluated process event); fastest pass {fastest * 1e6 / max(len(events), 1):.1f} us per event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
