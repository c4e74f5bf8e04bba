"""`procsentry detect` (replay a recorded stream through the rules) and `procsentry rules check`.

Replay works on the JSON lines `procsentry watch` writes, as dicts (fields.attr reads both
records and dicts), so a rule author can test rules on a recording without root or a kernel.
Lines that are not JSON objects are counted and reported at the end, never fatal. Replay has
no live processes: the parent-socket check of the reverse-shell detection (probe.py) is off.
"""
from __future__ import annotations

import sys
from typing import IO

import orjson

from monitor.detect.compile import SUFFIX
from monitor.detect.loader import RulesPathError, load
from monitor.output import Sink

EX_OK, EX_ERROR, EX_USAGE = 0, 1, 2


def replay(detector, stream: IO[bytes], fmt: str = "json", out: IO[bytes] | None = None) -> int:
    sink = Sink(fmt, stream=out if out is not None else sys.stdout.buffer)
    bad = 0
    for n, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(ev, dict):
            bad += 1
            continue
        for alert in detector.observe(ev):
            sink.write(alert)
        if n % 256 == 0:
            sink.flush()
    sink.close()
    c = detector.counters()
    print(f"procsentry: detect: {c['events_evaluated']} process events evaluated, {c['alerts']} alerts, "
          f"{c['evaluation_errors']} evaluation errors, {bad} lines not JSON objects", file=sys.stderr)
    return EX_OK


def index_of(rule) -> dict[str, list[str]] | None:
    """What the detector files the rule under (so it is evaluated only for events that have
    it), for rule authors weighing a rule's cost; None: evaluated for every process event.
    An executable name given as an ending (`Image|endswith: tab`) shows as `*tab`."""
    def names(keys):
        return sorted(("*" + k[1:]) if k.startswith(SUFFIX) else k for k in keys)
    if rule.basenames is not None:
        return {"image": names(rule.basenames)}
    if rule.parent_basenames is not None:
        return {"parent_image": names(rule.parent_basenames)}
    if rule.literals is not None:
        return {"contains": sorted(f"{field}: {lit}" for field, lit in rule.literals)}
    return None


def check(paths: list[str], fmt: str = "text") -> int:
    """List each rule: loaded or skipped (with the reason). Exit 0 when every rule loaded,
    1 when some were skipped, 2 for a bad path."""
    try:
        loaded, skipped = load(paths)
    except RulesPathError as e:
        print(f"procsentry: {e}", file=sys.stderr)
        return EX_USAGE
    if fmt == "json":
        for r in loaded:
            sys.stdout.buffer.write(orjson.dumps({"status": "loaded", "id": r.info.id, "title": r.info.title,
                                                  "level": r.info.level, "file": r.info.file,
                                                  "index": index_of(r)},
                                                 option=orjson.OPT_APPEND_NEWLINE))
        for s in skipped:
            sys.stdout.buffer.write(orjson.dumps({"status": "skipped", "id": s.id, "title": s.title,
                                                  "file": s.file, "reason": s.reason},
                                                 option=orjson.OPT_APPEND_NEWLINE))
    else:
        for r in loaded:
            print(f"loaded   {r.info.id}  {r.info.level:<13} {r.info.title}  ({r.info.file})")
        for s in skipped:
            print(f"skipped  {s.id or '-'}  ({s.file}): {s.reason}")
        print(f"{len(loaded)} loaded, {len(skipped)} skipped")
    sys.stdout.flush()
    return EX_OK if not skipped else EX_ERROR
