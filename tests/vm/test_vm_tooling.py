"""Static checks of the VM test tooling (scripts/test-kernels.sh, vagrant/): no VM, no root.

The real checks run elsewhere: `make vagrant-validate` (CI, through `make test-kernels`) runs
`vagrant validate` for both providers, and `make test-kernels` boots the kernels. These only keep
the pieces consistent with each other, in milliseconds.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [
    "scripts/test-kernels.sh",
    "scripts/vm-guest-run.sh",
    "scripts/vagrant-validate.sh",
    "vagrant/run-matrix.sh",
    "vagrant/host-libvirt.sh",
    "vagrant/build-debian-box.sh",
    "vagrant/agent-systemd-check.sh",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script: str) -> None:
    bash = shutil.which("bash")
    assert bash, "bash is required"
    r = subprocess.run([bash, "-n", str(REPO / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_service_guest_checks_compile() -> None:
    """vagrant/agent-systemd-guest.py runs only inside the test-service guest: it must at least
    compile here."""
    path = REPO / "vagrant" / "agent-systemd-guest.py"
    compile(path.read_text(), str(path), "exec")


def vagrantfile_machines() -> list[str]:
    text = (REPO / "vagrant" / "Vagrantfile").read_text()
    block = text[text.index("MACHINES = {"):text.index("}.freeze")]
    return re.findall(r'^\s*"([a-z0-9]+)"\s*=>', block, re.M)


def test_matrix_driver_knows_every_machine() -> None:
    text = (REPO / "vagrant" / "run-matrix.sh").read_text()
    listed = re.search(r"^all=\(([^)]*)\)", text, re.M)
    assert listed, "run-matrix.sh lost its all=(...) machine list"
    assert listed.group(1).split() == vagrantfile_machines()


def test_readme_documents_every_machine() -> None:
    readme = (REPO / "vagrant" / "README.md").read_text()
    for name in vagrantfile_machines():
        assert f"`{name}`" in readme, f"vagrant/README.md does not mention machine {name}"


def test_every_machine_names_a_box_per_provider() -> None:
    text = (REPO / "vagrant" / "Vagrantfile").read_text()
    for name in vagrantfile_machines():
        line = next(l for l in text.splitlines() if l.strip().startswith(f'"{name}"'))
        assert re.search(r'libvirt:\s*"[\w.-]+/[\w.-]+"', line), line
        assert re.search(r'virtualbox:\s*"[\w.-]+/[\w.-]+"', line), line


def test_guest_summary_counts_each_check(tmp_path: Path) -> None:
    # what scripts/vm-guest-run.sh hands the host: totals, and per LABEL=PATH word passed/selected
    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.bpf.test_sensor" name="test_a"/>'
        '<testcase classname="tests.bpf.test_sensor" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.bpf.test_loader" name="test_c"><skipped message="y"/></testcase>'
        '<testcase classname="tests.sensors.test_each_sensor" name="test_process_tree[connector]"/>'
        '<testcase classname="tests.pipeline.test_containers.TestX" name="test_d"/>'
        '</testsuite></testsuites>')
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "vm-junit-summary.py"), str(tmp_path),
                        "kernel=tests/bpf", "connector=tests/sensors/test_each_sensor.py::test_process_tree[connector]",
                        "containers=tests/pipeline/test_containers.py", "daemon=tests/pipeline/test_daemon_check.py"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "counts").read_text() == "tests=5 failures=1 errors=0 skipped=1\n"
    assert (tmp_path / "ran").read_text() == (
        "kernel:1/3,failed=1,skipped=1 connector:1/1 containers:1/1 daemon:0/0\n")
