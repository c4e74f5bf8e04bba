"""Re-record the golden dumps in this directory on the running kernel (root, BPF).

    sudo .venv/bin/python tests/data/events/record.py

Runs `procsentry watch --record`, triggers the processes the dumps describe, picks their raw
records by PID and writes each as `<kind>-<name>.dump`: the hex line, then the decode as JSON
(what tests/monitor/test_wire.py compares against). Run it whenever the wire changes
(WIRE_VERSION), and check the decode by hand before committing.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from monitor.sensors.bpf import wire  # noqa: E402

HERE = Path(__file__).resolve().parent
HOSTILE = [b"/bin/echo", "café".encode(), b"\xff raw", b"", b"new\nline"]
PIDNS = ["unshare", "--pid", "--fork", "--mount-proc", "/bin/echo", "in-pidns"]


def as_json(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, tuple):
        return [as_json(v) for v in value]
    return value


def write(name: str, data: bytes, note: str | None = None) -> None:
    r = wire.decode(data)
    lines = [f"# one perf sample recorded on {platform.release()} "
             "(procsentry watch --record writes these hex lines)"]
    if note:
        lines.append(f"# trigger: {note}")
    lines += [data.hex(), "# expected decode; byte strings shown as latin-1",
              json.dumps({k: as_json(v) for k, v in r._asdict().items()}, indent=1)]
    (HERE / f"{name}.dump").write_text("\n".join(lines) + "\n")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="procsentry-golden-"))
    rec = work / "records.hex"
    watch = subprocess.Popen([sys.executable, "-m", "monitor", "watch", "--format", "json",
                              "--events", "stats", "--record", str(rec)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = watch.stderr.readline()  # "procsentry: sensor bpf ..." once attached
        if b"sensor bpf" not in line:
            raise SystemExit(f"the BPF sensor did not start: {line!r}")
        time.sleep(1.0)
        # hostile argv, with stdin a pipe, stdout a file, stderr a TCP socket to a listener
        cwd = Path("/tmp/golden-cwd")
        cwd.mkdir(exist_ok=True)
        listener = socket.create_server(("127.0.0.1", 0))
        conn = socket.create_connection(listener.getsockname())
        with open(work / "out", "wb") as out:
            p = subprocess.Popen(HOSTILE, cwd=cwd, stdin=subprocess.PIPE, stdout=out,
                                 stderr=conn.fileno())
            p.communicate(timeout=10)
        conn.close()
        listener.close()
        subprocess.run(["/bin/sh", "-c", "exit 3"], timeout=10)
        subprocess.run(PIDNS, timeout=10, stdout=subprocess.DEVNULL)
        time.sleep(1.0)
    finally:
        watch.terminate()
        watch.wait(30)
    raws = [bytes.fromhex(x) for x in rec.read_text().split()]
    decoded = [(d, wire.decode(d)) for d in raws]

    def pick(kind, tgid):
        (d,) = [d for d, r in decoded if isinstance(r, kind) and r.tgid == tgid]
        return d

    def exec_pid(pred):
        return next(r.tgid for _d, r in decoded if isinstance(r, wire.RawExec) and pred(r))

    pid = exec_pid(lambda r: list(r.argv) == HOSTILE)
    for kind, name in ((wire.RawExec, "exec"), (wire.RawFork, "fork"), (wire.RawExit, "exit")):
        write(f"{name}-hostile-argv", pick(kind, pid))
    sh = exec_pid(lambda r: r.argv[:3] == (b"/bin/sh", b"-c", b"exit 3"))
    write("exit-code-3", pick(wire.RawExit, sh))
    echo = exec_pid(lambda r: r.argv == (b"/bin/echo", b"in-pidns"))
    note = " ".join(PIDNS) + " (the child is pid 1 of a new pid namespace)"
    for kind, name in ((wire.RawExec, "exec"), (wire.RawFork, "fork"), (wire.RawExit, "exit")):
        write(f"{name}-in-pidns", pick(kind, echo), note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
