"""Cost of one cgroup id -> container id lookup (userspace/cgroups.py), as root:

    sudo .venv/bin/python bench/cgroup_lookup.py [--cgroups 200] [--rounds 5]

Makes N container-named cgroups under a private parent in the cgroup2 hierarchy, then times,
per lookup, a cache hit, a miss resolved by open_by_handle_at, and a miss resolved by walking
the whole tree (the fallback, whose cost grows with the number of cgroups on the host). Removes
the cgroups at the end.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from userspace.cgroups import CgroupResolver, find_cgroup2_mount, kernfs_id_of  # noqa: E402
from userspace.procfs import ProcFS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cgroups", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    mount = find_cgroup2_mount(ProcFS())
    if mount is None:
        print("no cgroup2 mount here", file=sys.stderr)
        return 1
    base = Path(os.fsdecode(mount.mount_point)) / f"procsentry-bench-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    made = []
    try:
        for i in range(args.cgroups):
            d = base / f"docker-{uuid.uuid4().hex}{uuid.uuid4().hex}.scope"
            d.mkdir()
            made.append(d)
        ids = [kernfs_id_of(str(d)) for d in made]
        total_dirs = sum(len(dirs) for _, dirs, _ in os.walk(os.fsdecode(mount.mount_point)))
        print(f"{len(ids)} test cgroups; {total_dirs} cgroups in the whole tree at {mount.mount_point.decode()}")
        for method in ("handle", "walk"):
            r = CgroupResolver(ProcFS(), method=method, walk_interval_s=0)
            miss, hit = [], []
            for _ in range(args.rounds):
                for i in ids:
                    r._cache.clear()
                    r._tree = {}
                    t = time.perf_counter_ns()
                    got = r.resolve(i)
                    miss.append(time.perf_counter_ns() - t)
                    assert got is not None and got.container_id is not None
                    t = time.perf_counter_ns()
                    r.resolve(i)
                    hit.append(time.perf_counter_ns() - t)
            q = lambda xs: (statistics.median(xs) / 1e3, statistics.quantiles(xs, n=100)[98] / 1e3)  # noqa: E731
            print(f"{method:6}  miss median {q(miss)[0]:9.1f} us  p99 {q(miss)[1]:9.1f} us   "
                  f"hit median {q(hit)[0]:6.2f} us  p99 {q(hit)[1]:6.2f} us")
            r.close()
    finally:
        for d in made:
            d.rmdir()
        base.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
