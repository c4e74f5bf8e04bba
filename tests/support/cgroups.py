"""Real cgroups for tests: made under a private parent in this host's cgroup2 hierarchy (found
from mountinfo, so it works on a hybrid host's /sys/fs/cgroup/unified and a v2-only host's
/sys/fs/cgroup alike), removed at teardown, deepest first.

Import the fixture into a test module with ``from cgroupfixture import cgroup_tree``.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest

from userspace.cgroups import find_cgroup2_mount, kernfs_id_of
from userspace.procfs import ProcFS
from tests.support.wait import run

POD_UID = "5f6c2b1e-3a4d-4e8f-9a0b-1c2d3e4f5a6b"


def runtime_schemes(ids: list[str], pod: str = POD_UID) -> dict[str, tuple[str, str | None]]:
    """Each runtime's naming of a container's cgroup (seven 64-hex ids, one each), as a path,
    with the container id that path names (None: not a container)."""
    c1, c2, c3, c4, c5, c6, c7 = ids
    return {
        "docker systemd": (f"/system.slice/docker-{c1}.scope", c1),
        "docker cgroupfs": (f"/docker/{c2}", c2),
        "containerd cri": (f"/system.slice/cri-containerd-{c3}.scope", c3),
        "cri-o": (f"/machine.slice/crio-{c4}.scope", c4),
        "podman": (f"/machine.slice/libpod-{c5}.scope/container", c5),
        "kubepods systemd": (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
                             f"{pod.replace('-', '_')}.slice/cri-containerd-{c6}.scope", c6),
        "kubepods cgroupfs": (f"/kubepods/besteffort/pod{pod}/{c7}", c7),
        "cri-o conmon": (f"/machine.slice/crio-conmon-{c4}.scope", None),
        "a service": ("/system.slice/cron.service", None),
    }


def random_container_ids(n: int = 7) -> list[str]:
    return [uuid.uuid4().hex + uuid.uuid4().hex for _ in range(n)]


def exec_and_exit(w, token: str, timeout: float = 30.0) -> tuple[dict, dict]:
    """The one exec event whose argv is [TRUE, token], and the exit of that exec (bounded)."""
    def both(evs):
        execs = [e for e in evs if e["event"] == "exec" and e["argv"] == [TRUE, token]]
        if len(execs) != 1:
            return None
        exits = [e for e in evs if e["event"] == "exit" and e["exec_id"] == execs[0]["exec_id"]]
        return (execs[0], exits[0]) if exits else None
    return w.until(both, timeout, what=f"the exec and exit of {token}")


class Ran(NamedTuple):
    pid: int
    returncode: int
    stderr: bytes


REQUIRE = os.environ.get("PROCSENTRY_REQUIRE_BPF") == "1"
TRUE = os.path.realpath("/bin/true")


class CgroupTree:
    def __init__(self) -> None:
        mount = find_cgroup2_mount(ProcFS())
        if mount is None:
            raise LookupError("no cgroup2 mount on this host")
        self.mount_point = Path(os.fsdecode(mount.mount_point))
        self.mount_root = os.fsdecode(mount.root).rstrip("/")
        self.name = f"procsentry-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.base = self.mount_point / self.name
        self.base.mkdir()
        self.made: list[Path] = [self.base]

    def make(self, rel: str) -> Path:
        """mkdir -p base/rel; returns the directory."""
        path = self.base
        for part in rel.strip("/").split("/"):
            path = path / part
            if not path.exists():
                path.mkdir()
                self.made.append(path)
        return path

    def cgroup_path(self, cg: Path) -> str:
        """How <pid>/cgroup names it (relative to the hierarchy's root)."""
        return self.mount_root + "/" + str(cg.relative_to(self.mount_point))

    @staticmethod
    def id_of(cg: Path) -> int:
        return kernfs_id_of(str(cg))

    @staticmethod
    def first_process(cg: Path, *argv: str, timeout: float = 10.0) -> Ran:
        """sh moves itself into cg, then execs argv: the first and only process to run there.
        Waits for it (bounded); returns its pid, exit status and stderr."""
        script = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        p = run(["/bin/sh", "-c", script, str(cg), *argv], timeout,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return Ran(p.pid, p.returncode, p.stderr)

    def remove(self, cg: Path) -> None:
        self._rmdir(cg)
        if cg in self.made:
            self.made.remove(cg)

    @staticmethod
    def _rmdir(cg: Path) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                cg.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # EBUSY: a process still exiting (or left behind by a failed test)
                kill = cg / "cgroup.kill"
                if kill.exists():
                    kill.write_text("1")
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def cleanup(self) -> None:
        for cg in sorted(self.made, key=lambda p: len(p.parts), reverse=True):
            self._rmdir(cg)
        self.made.clear()


@pytest.fixture
def cgroup_tree():
    if os.geteuid() != 0:
        if REQUIRE:
            pytest.fail("root is required (PROCSENTRY_REQUIRE_BPF=1) to make cgroups")
        pytest.skip("making cgroups needs root")
    try:
        tree = CgroupTree()
    except (LookupError, OSError) as e:
        if REQUIRE:
            pytest.fail(f"cannot make a test cgroup: {e}")
        pytest.skip(f"cannot make a test cgroup: {e}")
    try:
        yield tree
    finally:
        tree.cleanup()


NS_KEYS = ("pid", "mnt", "net", "user", "uts", "ipc", "cgroup")


def check_each_runtime_naming(w, tree: "CgroupTree") -> None:
    """In a running watch `w`: for each runtime's naming, a cgroup made now, a short-lived
    process the first and only thing run in it; its exec and exit carry that runtime's exact
    container id (None for the names that are no container) and the cgroup id, whatever procfs
    could still be read. Shared by tests/pipeline/test_containers.py and the daemon check that
    every kernel-matrix guest runs."""
    runs = {}
    for name, (path, cid) in runtime_schemes(random_container_ids()).items():
        cg = tree.make(path)
        token = f"cg-{uuid.uuid4().hex}"
        ran = tree.first_process(cg, TRUE, token)
        assert ran.returncode == 0, ran.stderr
        runs[name] = (ran.pid, token, tree.id_of(cg), cid)
    got, expected, enrichment = {}, {}, {}
    for name, (pid, token, cgroup_id, cid) in runs.items():
        ex, xt = exec_and_exit(w, token)
        got[name] = {"pid": ex["pid"], "cgroup_id": ex["cgroup_id"], "exec": ex["container_id"],
                     "exit": xt["container_id"]}
        expected[name] = {"pid": pid, "cgroup_id": cgroup_id, "exec": cid, "exit": cid}
        enrichment[name] = ex["enrichment"]
    assert got == expected, f"enrichment per scheme: {enrichment}"


def check_namespaced_container(w, tree: "CgroupTree", scratch: Path) -> None:
    """In a running watch `w`: a "container" built from namespaces (`unshare --pid --mount
    --uts --net --fork`) in a Docker-named cgroup; host PID, in-namespace PID, namespace inodes
    and container id all right on its payload's exec and exit events."""
    (cid,) = random_container_ids(1)
    cg = tree.make(f"/system.slice/docker-{cid}.scope")
    token = f"cg-ns-{uuid.uuid4().hex}"
    # Inside: the shell's host PID (field 4, ppid, of its child's stat, read through the host's
    # procfs, which shows host PIDs), its PID in the new namespace ($$), its namespace inodes;
    # then it becomes the "container's" short-lived payload.
    inner = ('cut -d" " -f4 /proc/self/stat > "$0/hostpid"; echo $$ > "$0/nspid"; '
             'for n in ' + " ".join(NS_KEYS) + '; do readlink /proc/self/ns/$n; done > "$0/ns"; '
             f'exec {TRUE} {token}')
    ran = tree.first_process(cg, "unshare", "--pid", "--mount", "--uts", "--net", "--fork",
                             "/bin/sh", "-c", inner, str(scratch))
    assert ran.returncode == 0, ran.stderr
    host_pid = int((scratch / "hostpid").read_text())
    assert (scratch / "nspid").read_text().strip() == "1"
    links = (scratch / "ns").read_text().split()
    ns = {k: int(link.split("[")[1].rstrip("]")) for k, link in zip(NS_KEYS, links)}
    ex, xt = exec_and_exit(w, token)
    assert (ex["pid"], ex["vpid"], ex["ns"], ex["container_id"], ex["cgroup_id"]) == (
        host_pid, 1, ns, cid, tree.id_of(cg))
    assert (xt["pid"], xt["vpid"], xt["ns"], xt["container_id"]) == (host_pid, 1, ns, cid)
    # and they really are other namespaces than the monitor's, where asked for
    mine = {k: os.stat(f"/proc/self/ns/{k}").st_ino for k in NS_KEYS}
    assert {k for k in NS_KEYS if ns[k] != mine[k]} == {"pid", "mnt", "net", "uts"}
