"""Ground truth for the tests: a live process's proc(5) stat line, parsed by the parser under
test elsewhere (userspace.parsers.parse_stat finds comm by the last ')')."""
from __future__ import annotations

from userspace.parsers import Stat, parse_stat


def proc_stat(pid: int) -> Stat:
    """<pid>/stat of a running process (or of a zombie, until it is reaped)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return parse_stat(f.read())


def start_ticks(pid: int) -> int:
    """stat field 22: the start time in clock ticks after boot, as exec_id and start_time use."""
    return proc_stat(pid).starttime
