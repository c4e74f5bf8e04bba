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
        p = subprocess.Popen(["/bin/sh", "-c", script, str(cg), *argv],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = p.communicate(timeout=timeout)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        return Ran(p.pid, p.returncode, err)

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
