"""The process table: tombstones, the bound, ancestry."""
from __future__ import annotations

from monitor.table import Entry, ProcessTable


def entry(pid, ticks, parent=None):
    e = Entry(pid, ticks, f"id:{ticks}:{pid}")
    e.parent_key = parent
    return e


def test_exited_entries_stay_for_the_grace_period():
    t = ProcessTable(grace_s=5)
    t.add(entry(10, 1))
    t.mark_exited((10, 1), now=100.0)
    assert t.expire(now=104.9) == 0 and (10, 1) in t
    assert t.expire(now=105.0) == 1 and (10, 1) not in t
    assert t.key_for_pid(10) is None


def test_a_reused_pid_is_a_new_entry():
    t = ProcessTable()
    t.add(entry(10, 1))
    t.mark_exited((10, 1), now=1.0)
    t.add(entry(10, 500))
    assert len(t) == 2
    assert t.key_for_pid(10) == (10, 500)
    assert t.get((10, 1)).exited_at == 1.0 and t.get((10, 500)).exited_at is None


def test_the_bound_evicts_tombstones_first_then_the_oldest_and_counts():
    t = ProcessTable(max_entries=3)
    for pid in (1, 2, 3):
        t.add(entry(pid, pid))
    t.mark_exited((2, 2), now=0.0)
    t.add(entry(4, 4))
    assert (2, 2) not in t and len(t) == 3 and t.evictions == 1
    t.add(entry(5, 5))
    assert (1, 1) not in t and len(t) == 3 and t.evictions == 2


def test_fork_bomb_does_not_grow_the_table():
    t = ProcessTable(max_entries=1000)
    for pid in range(100_000):
        t.add(entry(pid, pid))
    assert len(t) == 1000 and t.evictions == 99_000


def test_ancestry_follows_keys_nearest_first_and_stops_at_depth_and_cycles():
    t = ProcessTable()
    t.add(entry(1, 1))
    t.add(entry(2, 2, parent=(1, 1)))
    t.add(entry(3, 3, parent=(2, 2)))
    leaf = t.add(entry(4, 4, parent=(3, 3)))
    assert [a.pid for a in t.ancestry(leaf, 10)] == [3, 2, 1]
    assert [a.pid for a in t.ancestry(leaf, 2)] == [3, 2]
    t.get((1, 1)).parent_key = (3, 3)  # a corrupt loop must not hang
    assert [a.pid for a in t.ancestry(leaf, 10)] == [3, 2, 1]
