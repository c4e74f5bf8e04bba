"""userspace/cgroups.py: cgroup v2 id -> path -> container id, without the process.

The first half runs on fixture trees (a directory tree standing in for the cgroup2 mount, named
by a fixture mountinfo): the inode-keyed walk works on any filesystem, so it is tested without
root. The second half (`root`) makes real cgroups and checks both methods against the kernel.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from cgroupfixture import TRUE, cgroup_tree, runtime_schemes  # noqa: F401  (a fixture)
from monitor.enrich import Enricher
from userspace import parsers as P
from userspace.cgroups import Cgroup, CgroupResolver, find_cgroup2_mount, kernfs_id_of
from userspace.parsers import parse_stat
from userspace.procfs import ProcFS
from userspace.process import read_process
from userspace.types import Depth

C1, C2, C3, C4, C5, C6, C7 = ("0123456789abcdef" * 4, "fedcba9876543210" * 4, "aa" * 32,
                              "b" * 64, "c" * 64, "d" * 64, "e" * 64)
SCHEMES = runtime_schemes([C1, C2, C3, C4, C5, C6, C7])
MOUNT_DIR = "cgroup fs"  # a space: mountinfo escapes it as \040


def fixture_host(tmp_path: Path, *, hybrid: bool = False, mount_root: str = "/",
                 mountinfo: bytes | None = None) -> tuple[ProcFS, Path]:
    """A procfs root whose self/mountinfo names tmp_path/"cgroup fs" as the cgroup2 mount."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    cg = tmp_path / MOUNT_DIR
    cg.mkdir()
    if mountinfo is None:
        escaped = str(cg).replace(" ", "\\040").encode()
        mountinfo = (b"22 27 0:21 / /proc rw,relatime - proc proc rw\n"
                     b"41 31 0:38 " + mount_root.replace(" ", "\\040").encode() + b" " + escaped +
                     b" rw,relatime shared:9 - cgroup2 cgroup2 rw\n")
        if hybrid:
            mountinfo += b"42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    (proc / "self" / "mountinfo").write_bytes(mountinfo)
    (proc / "self" / "cgroup").write_bytes(b"4:memory:/\n0::/\n" if hybrid else b"0::/\n")
    return ProcFS(str(proc)), cg


def make_dirs(cg: Path, schemes=SCHEMES) -> dict[str, tuple[int, str]]:
    """mkdir each scheme's path under cg; scheme -> (inode, path)."""
    out = {}
    for name, (path, _cid) in schemes.items():
        d = cg / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        out[name] = (d.stat().st_ino, path)
    return out


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- parsing ------------------------------------------------------------------------------------

def test_cgroup2_mounts_are_found_and_unescaped() -> None:
    data = (b"22 27 0:21 / /proc rw,relatime - proc proc rw\n"
            b"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n"
            b"43 31 0:38 /kubepods.slice /mnt/my\\040cg\\134x rw - cgroup2 cgroup2 rw\n"
            b"30 27 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert P.parse_cgroup2_mounts(data) == (
        P.Cgroup2Mount(b"/", b"/sys/fs/cgroup/unified"),
        P.Cgroup2Mount(b"/kubepods.slice", b"/mnt/my cg\\x"),
    )
    assert P.parse_cgroup2_mounts(b"") == ()
    assert P.unescape_mount_path(b"/a\\011b\\012c\\040d") == b"/a\tb\nc d"


def test_the_mount_showing_the_whole_hierarchy_is_chosen(tmp_path) -> None:
    mountinfo = (b"43 31 0:38 /kubepods.slice /mnt/pods rw - cgroup2 cgroup2 rw\n"
                 b"41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
                 b"44 31 0:38 / /mnt/again rw - cgroup2 cgroup2 rw\n")
    fs, _ = fixture_host(tmp_path, mountinfo=mountinfo)
    assert find_cgroup2_mount(fs) == P.Cgroup2Mount(b"/", b"/sys/fs/cgroup")


# --- the walk, on a fixture tree --------------------------------------------------------------

def test_every_runtime_naming_resolves_by_walking_a_fixture_tree(tmp_path) -> None:
    fs, cg = fixture_host(tmp_path)
    ids = make_dirs(cg)
    r = CgroupResolver(fs)
    assert r.method == "walk"  # the fixture is not kernfs: no handles, and the reason says so
    assert r.reason is None and r.handle_unusable == "the mount is not kernfs"
    assert r.unified_only is True
    got = {name: r.resolve(ino) for name, (ino, _path) in ids.items()}
    assert got == {name: Cgroup(ino, path.encode(), SCHEMES[name][1])
                   for name, (ino, path) in ids.items()}
    assert r.resolve(r.root_id) == Cgroup(r.root_id, b"/", None)
    assert r.stats["walks"] == 1  # one walk found them all
    assert r.resolve(ids["podman"][0]).container_id == C5
    assert r.stats["hits"] == 1 and r.stats["walks"] == 1


def test_a_mount_of_a_subtree_prefixes_its_root(tmp_path) -> None:
    fs, cg = fixture_host(tmp_path, mount_root="/kubepods.slice")
    d = cg / f"cri-containerd-{C6}.scope"
    d.mkdir()
    r = CgroupResolver(fs)
    assert r.resolve(d.stat().st_ino) == Cgroup(d.stat().st_ino,
                                                 f"/kubepods.slice/cri-containerd-{C6}.scope".encode(), C6)
    assert r.resolve(r.root_id).path == b"/kubepods.slice"


def test_misses_walk_at_most_once_per_interval(tmp_path) -> None:
    fs, cg = fixture_host(tmp_path)
    ids = make_dirs(cg)
    clock = FakeClock()
    r = CgroupResolver(fs, clock=clock, walk_interval_s=1.0)
    assert r.resolve(ids["docker systemd"][0]) is not None
    assert r.stats["walks"] == 1
    # An id below the newest the walk saw and not in the tree: a cgroup already removed. No
    # walk for it until the interval has passed.
    old = max(r._tree) - 1
    while old in r._tree:
        old -= 1
    assert r.resolve(old) is None and r.resolve(old) is None
    assert r.stats["walks"] == 1 and r.stats["walk_rate_limited"] == 2
    late = cg / "late"
    late.mkdir()
    clock.now += 1.0
    late_id = late.stat().st_ino
    assert r.resolve(late_id) == Cgroup(late_id, b"/late", None)
    assert r.stats["walks"] == 2


def test_a_walk_stops_at_its_bound_and_then_proves_nothing_gone(tmp_path) -> None:
    fs, cg = fixture_host(tmp_path)
    ids = make_dirs(cg)
    r = CgroupResolver(fs, walk_max_dirs=3)
    r.resolve(ids["a service"][0])
    assert r.stats["walk_truncated"] == 1
    assert len(r._tree) == 4  # the root and 3 directories
    assert r.gone([ids["docker systemd"][0], 12345678]) == set()  # cannot tell: not all seen


def test_removed_cgroups_are_pruned_and_never_asked_again(tmp_path) -> None:
    fs, cg = fixture_host(tmp_path)
    ids = make_dirs(cg)
    r = CgroupResolver(fs)
    for ino, _ in ids.values():
        assert r.resolve(ino) is not None
    assert len(r) == len(SCHEMES)
    (cg / "docker" / C2).rmdir()
    assert r.prune() == {ids["docker cgroupfs"][0]}
    assert len(r) == len(SCHEMES) - 1 and r.stats["evicted_gone"] == 1
    walks = r.stats["walks"]
    assert r.resolve(ids["docker cgroupfs"][0]) is None
    assert r.stats["gone"] == 1 and r.stats["walks"] == walks
    # prune also answers for a caller's own ids
    assert r.prune(also=[ids["a service"][0], 999_999_999_999]) == {999_999_999_999}


def test_the_cache_is_bounded(tmp_path) -> None:
    fs, cg = fixture_host(tmp_path)
    ids = make_dirs(cg)
    r = CgroupResolver(fs, max_entries=2)
    for ino, _ in ids.values():
        r.resolve(ino)
    assert len(r) == 2
    assert r.stats["evicted_full"] == len(SCHEMES) - 2


def test_bad_ids_are_counted_not_raised(tmp_path) -> None:
    fs, cg = fixture_host(tmp_path)
    r = CgroupResolver(fs)
    r.resolve(r.root_id)  # cached: True == 1 must not find it
    for bad in (0, -1, 1 << 64, "12", None, True, 1.5, b"\x01", [], {}):
        assert r.resolve(bad) is None
    assert r.stats["bad_id"] == 10
    assert r.gone([0, -5, "x"]) == set()


@pytest.mark.parametrize("mountinfo, reason", [
    (b"30 27 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
     "no cgroup2 mount (a v1-only host: every process has cgroup id 1)"),
    (b"garbage without the separator\n", "mountinfo unreadable: mountinfo: no ' - ' separator"),
    (b"41 31 0:38 / /nonexistent/cgroup rw - cgroup2 cgroup2 rw\n",
     "cannot stat the cgroup2 mount b'/nonexistent/cgroup': No such file or directory"),
])
def test_without_a_usable_cgroup2_mount_nothing_resolves_and_the_reason_is_kept(tmp_path, mountinfo, reason):
    fs, _ = fixture_host(tmp_path, mountinfo=mountinfo)
    r = CgroupResolver(fs)
    assert r.method is None
    assert r.reason is not None and r.reason.startswith(reason), r.reason
    assert r.resolve(5) is None and r.stats["unavailable"] == 1
    assert r.gone([5]) == set() and r.prune() == set()


def test_handles_are_refused_on_a_tree_that_is_not_kernfs(tmp_path) -> None:
    fs, _ = fixture_host(tmp_path)
    r = CgroupResolver(fs, method="handle")
    assert r.method is None and r.reason == "the mount is not kernfs"


def test_unified_only_is_told_from_our_own_cgroup_file(tmp_path) -> None:
    fs, _ = fixture_host(tmp_path / "a", hybrid=True)
    assert CgroupResolver(fs).unified_only is False
    fs, _ = fixture_host(tmp_path / "b")
    assert CgroupResolver(fs).unified_only is True


# --- enrichment from the id alone, on fixture trees ---------------------------------------------

def test_enricher_names_a_container_from_the_id_alone(tmp_path) -> None:
    fs, cg = fixture_host(tmp_path)
    ids = make_dirs(cg)
    e = Enricher(fs, Depth.ENRICH)
    for name, (ino, path) in ids.items():
        assert e.container_of(ino) == (path.encode(), SCHEMES[name][1]), name
    assert e.container_of(424242424242) is None


def test_on_a_hybrid_host_only_a_named_container_is_an_answer(tmp_path) -> None:
    # There a runtime may keep a container in v1 hierarchies only: a v2 path naming none is
    # not proof of no container, so it is "unknown" (the event then says why it is missing).
    fs, cg = fixture_host(tmp_path, hybrid=True)
    ids = make_dirs(cg)
    e = Enricher(fs, Depth.ENRICH)
    assert e.container_of(ids["docker systemd"][0]) == (SCHEMES["docker systemd"][0].encode(), C1)
    assert e.container_of(ids["a service"][0]) is None
    assert e.container_of(ids["cri-o conmon"][0]) is None


# --- real cgroups (root, no BPF) ----------------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("method", ["handle", "walk"])
def test_real_cgroups_resolve_by_both_methods(cgroup_tree, method) -> None:  # noqa: F811
    made = {name: cgroup_tree.make(path) for name, (path, _cid) in SCHEMES.items()}
    r = CgroupResolver(ProcFS(), method=method)
    assert r.method == method, r.reason
    for name, cg in made.items():
        cid = SCHEMES[name][1]
        got = r.resolve(cgroup_tree.id_of(cg))
        assert got == Cgroup(cgroup_tree.id_of(cg), cgroup_tree.cgroup_path(cg).encode(), cid), name
    assert r.resolve(1 if r.mount.root == b"/" else r.root_id).path == r.mount.root
    r.close()


@pytest.mark.root
def test_the_kernel_id_is_the_directory_inode_and_what_procfs_shows(cgroup_tree) -> None:  # noqa: F811
    cg = cgroup_tree.make(SCHEMES["docker systemd"][0])
    p = subprocess.Popen(["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec sleep 30', str(cg)])
    try:
        deadline = time.monotonic() + 10
        while str(p.pid).encode() not in (cg / "cgroup.procs").read_bytes():
            assert time.monotonic() < deadline, "the shell never joined its cgroup"
            time.sleep(0.01)
        snap = read_process(ProcFS(), p.pid, Depth.EXEC)
        cid = cgroup_tree.id_of(cg)
        assert cid == cg.stat().st_ino  # kernfs_id_ino(): the id is the inode on 64-bit
        got = CgroupResolver(ProcFS()).resolve(cid)
        assert (got.path, got.container_id) == (snap.cgroup, snap.container_id) == (
            cgroup_tree.cgroup_path(cg).encode(), C1)
    finally:
        p.kill()
        p.wait()


@pytest.mark.root
def test_a_removed_cgroup_is_gone_by_handle_and_pruned(cgroup_tree) -> None:  # noqa: F811
    cg = cgroup_tree.make(f"/docker/{C2}")
    cid = cgroup_tree.id_of(cg)
    r = CgroupResolver(ProcFS(), method="handle")
    assert r.resolve(cid).container_id == C2
    cgroup_tree.remove(cg)
    assert r.prune() == {cid}  # open_by_handle_at: ESTALE
    assert r.resolve(cid) is None and r.stats["gone"] == 1  # remembered: no syscall
    assert r.stats["evicted_gone"] == 1
    fresh = CgroupResolver(ProcFS(), method="handle")
    assert fresh.resolve(cid) is None and fresh.stats["gone"] == 1
    fresh.close()
    r.close()


@pytest.mark.root
def test_the_id_of_a_cgroup_file_is_not_a_cgroup(cgroup_tree) -> None:  # noqa: F811
    cg = cgroup_tree.make("/docker")
    file_id = kernfs_id_of(str(cg / "cgroup.procs"))
    r = CgroupResolver(ProcFS(), method="handle")
    assert r.resolve(file_id) is None and r.stats["not_a_cgroup"] == 1
    w = CgroupResolver(ProcFS(), method="walk")
    assert w.resolve(file_id) is None and w.stats["unknown"] == 1


@pytest.mark.root
def test_a_cgroup_newer_than_the_last_walk_is_walked_for_at_once(cgroup_tree) -> None:  # noqa: F811
    first = cgroup_tree.make("/docker")
    clock = FakeClock()
    r = CgroupResolver(ProcFS(), method="walk", clock=clock, walk_interval_s=3600)
    assert r.resolve(cgroup_tree.id_of(first)).path == cgroup_tree.cgroup_path(first).encode()
    assert r.stats["walks"] == 1
    new = cgroup_tree.make(f"/docker/{C2}")  # kernfs ids only grow: newer than the walk
    assert r.resolve(cgroup_tree.id_of(new)).container_id == C2
    assert r.stats["walks"] == 2
    never = cgroup_tree.id_of(new) + 10_000_000  # newer too, but no such cgroup: once only
    assert r.resolve(never) is None and r.resolve(never) is None
    assert r.stats["walks"] == 3 and r.stats["walk_rate_limited"] == 1


@pytest.mark.root
def test_walks_for_newer_ids_stay_within_the_duty_cycle(cgroup_tree) -> None:  # noqa: F811
    clock = FakeClock()

    def ticking() -> float:  # every reading 10 ms later: the walk is measured as 10 ms long
        clock.now += 0.01
        return clock.now

    first = cgroup_tree.make("/docker")
    r = CgroupResolver(ProcFS(), method="walk", clock=ticking, walk_interval_s=3600)
    assert r.resolve(cgroup_tree.id_of(first)) is not None and r.stats["walks"] == 1
    new = cgroup_tree.make(f"/docker/{C3}")
    assert r.resolve(cgroup_tree.id_of(new)) is None  # 10 ms idle < 9 x 10 ms
    assert r.stats["walks"] == 1 and r.stats["walk_rate_limited"] == 1
    clock.now += 0.09
    assert r.resolve(cgroup_tree.id_of(new)).container_id == C3
    assert r.stats["walks"] == 2


@pytest.mark.root
def test_enricher_names_the_container_of_a_process_already_gone(cgroup_tree) -> None:  # noqa: F811
    cg = cgroup_tree.make(SCHEMES["cri-o"][0])
    token = f"gone-{os.getpid()}"
    done = cgroup_tree.first_process(cg, TRUE, token)
    assert done.returncode == 0, done.stderr
    e = Enricher(ProcFS(), Depth.ENRICH)
    cid = cgroup_tree.id_of(cg)
    # the pipeline's two calls: read_after_exec finds nothing (reaped), container_of answers
    assert e.read_after_exec(done.pid, 0, 0, cid) is None
    assert e.container_of(cid) == (cgroup_tree.cgroup_path(cg).encode(), C4)
    assert e.cgroups.stats["resolved"] == 1


@pytest.mark.root
def test_an_id_warmed_on_arrival_is_named_after_its_cgroup_is_removed(cgroup_tree) -> None:  # noqa: F811
    cg = cgroup_tree.make(SCHEMES["containerd cri"][0])
    cid = cgroup_tree.id_of(cg)
    e = Enricher(ProcFS(), Depth.ENRICH)
    e.warm(cid)
    e.warm(0)  # a record without a cgroup id: nothing to do, nothing counted
    cgroup_tree.remove(cg)  # the runtime's cleanup, before the hold window ends
    assert e.container_of(cid) == (cgroup_tree.cgroup_path(cg).encode(), C3)
    assert (e.cgroups.stats["resolved"], e.cgroups.stats["hits"], e.cgroups.stats["bad_id"]) == (1, 1, 0)
    cold = Enricher(ProcFS(), Depth.ENRICH)
    assert cold.container_of(cid) is None and cold.cgroups.stats["gone"] == 1


@pytest.mark.root
def test_enricher_takes_a_live_process_container_from_the_id(cgroup_tree) -> None:  # noqa: F811
    cg = cgroup_tree.make(SCHEMES["kubepods systemd"][0])
    p = subprocess.Popen(["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec sleep 30', str(cg)])
    try:
        deadline = time.monotonic() + 10
        while str(p.pid).encode() not in (cg / "cgroup.procs").read_bytes():
            assert time.monotonic() < deadline, "the shell never joined its cgroup"
            time.sleep(0.01)
        e = Enricher(ProcFS(), Depth.ENRICH)
        ticks = ProcFS().read_parsed(p.pid, "stat", parse_stat).starttime
        snap = e.read_after_exec(p.pid, ticks, 0, cgroup_tree.id_of(cg))
        assert (snap.cgroup, snap.container_id) == (cgroup_tree.cgroup_path(cg).encode(), C6)
        assert e.cgroups.stats["resolved"] == 1
    finally:
        p.kill()
        p.wait()


@pytest.mark.root
def test_lookup_cost(cgroup_tree, record_property) -> None:  # noqa: F811
    """Per lookup: a hit, a miss by handle, a miss by walking this host's tree. Bounds are
    generous (a shared 2-core machine); the numbers are recorded for the report."""
    made = [cgroup_tree.make(f"/docker/{i:064x}") for i in range(200)]
    ids = [cgroup_tree.id_of(cg) for cg in made]
    results = {}
    for method in ("handle", "walk"):
        r = CgroupResolver(ProcFS(), method=method, walk_interval_s=0)
        miss = []
        for i in ids:
            r._tree = {}  # every lookup a miss, the walk too
            r._cache.clear()
            t = time.perf_counter()
            r.resolve(i)
            miss.append(time.perf_counter() - t)
        hit = []
        for _ in range(5):
            for i in ids:
                t = time.perf_counter()
                r.resolve(i)
                hit.append(time.perf_counter() - t)
        assert len(r) == len(ids)
        results[method] = (statistics.median(miss) * 1e6, statistics.median(hit) * 1e6)
        record_property(f"{method}_miss_us", round(results[method][0], 1))
        record_property(f"{method}_hit_us", round(results[method][1], 2))
        r.close()
    print(f"\ncgroup lookup, median us (miss, hit) over {len(ids)} cgroups: {results}")
    assert results["handle"][0] < 1000 and results["handle"][1] < 50
    assert results["walk"][1] < 50
