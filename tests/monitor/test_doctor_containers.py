"""`procsentry doctor`'s container_identity line: what container identity this host allows.

On fixture hosts (a procfs root whose mountinfo names a directory tree as the cgroup2 mount)
for the layouts this machine does not have, and for real on this host, as root and as nobody.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.doctor import check_container_identity
from userspace.cgroups import find_cgroup2_mount
from userspace.procfs import ProcFS

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def fixture_host(tmp_path: Path, cgroup: bytes, mountinfo_cg2: bool = True, mount_root: bytes = b"/") -> ProcFS:
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    cg = tmp_path / "cg"
    cg.mkdir()
    lines = [b"30 27 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory"]
    if mountinfo_cg2:
        lines.append(b"41 31 0:38 " + mount_root + b" " + str(cg).encode() + b" rw - cgroup2 cgroup2 rw")
    (proc / "mountinfo").write_bytes(b"\n".join(lines) + b"\n")
    (proc / "cgroup").write_bytes(cgroup)
    return ProcFS(str(tmp_path / "proc"))


def test_a_v1_only_host_is_told_what_it_lacks(tmp_path):
    c = check_container_identity(fixture_host(tmp_path, b"4:memory:/\n", mountinfo_cg2=False))
    assert (c.status, c.detail, c.remedy) == (
        "WARN",
        "cgroup v1 only: the kernel's cgroup id is that of the unused v2 root (1) for every "
        "process, so it names no container; container ids come from procfs only, and a "
        "container whose processes all exit before they are read is not identified",
        "mount cgroup2 (systemd.unified_cgroup_hierarchy=1 on the kernel command line)")


def test_a_hybrid_host_is_told_what_v1_only_containers_cost(tmp_path):
    fs = fixture_host(tmp_path, b"4:memory:/\n0::/\n")
    c = check_container_identity(fs)
    root_id = (tmp_path / "cg").stat().st_ino
    assert c.status == "PASS"
    assert c.detail == (
        f"cgroup2 at {tmp_path}/cg (hybrid: v1 hierarchies in use too; a container that a "
        "runtime's cgroupfs driver puts in v1 hierarchies only is identified from procfs, while "
        "a process lives); cgroup ids resolve to paths by walking the cgroup2 tree (no handles: "
        f"the mount is not kernfs) (this process: {root_id} -> /): a container is named from its "
        "first exec on, even when its processes are gone before procfs is read")


def test_a_v2_only_host_proves_it_on_our_own_cgroup(tmp_path):
    fs = fixture_host(tmp_path, b"0::/user.slice/session-1.scope\n")
    own = tmp_path / "cg" / "user.slice" / "session-1.scope"
    own.mkdir(parents=True)
    c = check_container_identity(fs)
    assert c.status == "PASS"
    assert "(v2 only)" in c.detail
    assert f"(this process: {own.stat().st_ino} -> /user.slice/session-1.scope)" in c.detail


def test_a_cgroup_outside_the_mount_cannot_prove_anything(tmp_path):
    fs = fixture_host(tmp_path, b"0::/system.slice/x.service\n", mount_root=b"/kubepods.slice")
    c = check_container_identity(fs)
    assert c.status == "WARN"
    assert c.detail == (f"this process's cgroup b'/system.slice/x.service' is not under the cgroup2 "
                        f"mount {str(tmp_path / 'cg').encode()!r}; cannot prove ids resolve")


def doctor_json(user=None) -> dict:
    p = subprocess.run([sys.executable, "-m", "monitor", "doctor", "--format", "json", "--no-load"],
                       capture_output=True, cwd=REPO, timeout=120, user=user)
    assert b"Traceback" not in p.stderr
    return {c["name"]: c for c in json.loads(p.stdout)["checks"]}


@pytest.mark.root
def test_this_host_resolves_ids_by_handle_as_root():
    mount = find_cgroup2_mount(ProcFS())
    c = doctor_json()["container_identity"]
    assert c["status"] == "PASS", c
    assert c["detail"].startswith(f"cgroup2 at {mount.mount_point.decode()} (")
    assert "cgroup ids resolve to paths by open_by_handle_at (this process: " in c["detail"]


@pytest.mark.root
def test_without_cap_dac_read_search_ids_resolve_by_walking():
    c = doctor_json(user=NOBODY)["container_identity"]
    assert c["status"] == "PASS", c
    assert ("by walking the cgroup2 tree (no handles: open_by_handle_at: Operation not permitted)"
            in c["detail"])
