"""Container identity end to end (issue 18): `procsentry watch` with the BPF sensor names the
container of a process from the kernel's cgroup id, from the process's first exec on, even when
the process is gone before procfs can be read.

Each test makes real cgroups named as each runtime names them (tests/userspace/cgroupfixture.py),
runs a short-lived process as the first and only thing in its cgroup, and removes the cgroups.
"""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.support.cgroups import (TRUE, cgroup_tree, check_each_runtime_naming,  # noqa: F401
                                   check_namespaced_container, exec_and_exit, random_container_ids,
                                   runtime_schemes)
from tests.support.wait import reap

pytestmark = pytest.mark.bpf

SLEEP = os.path.realpath("/bin/sleep")


def test_each_runtime_naming_names_its_first_and_only_process(watch, cgroup_tree):  # noqa: F811
    w = watch("--stats-interval", "600")
    w.wait_ready()
    check_each_runtime_naming(w, cgroup_tree)
    assert w.stop() == 0


CONTAINER_SCHEMES = [k for k, (_p, cid) in runtime_schemes(random_container_ids()).items() if cid]


@pytest.mark.parametrize("scheme", CONTAINER_SCHEMES)
def test_the_container_filter_sees_a_container_whose_only_process_is_gone(watch, cgroup_tree, scheme):  # noqa: F811
    ids = random_container_ids()
    path, mine = runtime_schemes(ids)[scheme]
    other_path, other = runtime_schemes(random_container_ids())[scheme]
    cg = cgroup_tree.make(path)
    cg_other = cgroup_tree.make(other_path)
    cg_host = cgroup_tree.make("/system.slice/cron.service")
    # A process already in the container when the monitor starts: its `existing` event is how
    # we know the monitor is ready (the filter hides our own).
    resident = subprocess.Popen(["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$1" 60',
                                 str(cg), SLEEP])
    try:
        w = watch("--container", mine[:12], "--stats-interval", "600")
        w.until(lambda evs: [e for e in evs if e["event"] == "existing" and e["pid"] == resident.pid], 30)
        tokens = {k: f"cg-{k}-{uuid.uuid4().hex}" for k in ("other", "host", "mine")}
        for key, where in (("other", cg_other), ("host", cg_host), ("mine", cg)):
            ran = cgroup_tree.first_process(where, TRUE, tokens[key])
            assert ran.returncode == 0, ran.stderr
        ex, xt = exec_and_exit(w, tokens["mine"])
        assert (ex["container_id"], xt["container_id"]) == (mine, mine)
        assert ex["cgroup_id"] == cgroup_tree.id_of(cg)
        # Records are emitted in kernel-time order, so "other" and "host", which ran and exited
        # before "mine" started, would be out already: nothing but this container passed.
        seen = w.snapshot()
        assert not [e for e in seen if e.get("argv") and e["argv"][-1] in (tokens["other"], tokens["host"])]
        assert {e["container_id"] for e in seen if "container_id" in e} == {mine}
        (existing,) = [e for e in seen if e["event"] == "existing"]
        assert existing["pid"] == resident.pid and existing["container_id"] == mine
        assert w.stop() == 0
    finally:
        resident.kill()
        reap(resident, 30)


def test_a_namespaced_container_has_host_pid_namespaces_and_id_on_one_event(watch, cgroup_tree, tmp_path):  # noqa: F811
    w = watch("--stats-interval", "600")
    w.wait_ready()
    check_namespaced_container(w, cgroup_tree, tmp_path)
    assert w.stop() == 0
