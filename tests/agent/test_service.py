"""The systemd unit: what systemd-analyze says of it, and whether its capabilities are the ones
the agent needs (the agent run with exactly the unit's bounding set, and without each one)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.wait import readline

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "contrib" / "procsentry.service"
SLEEP = os.path.realpath("/bin/sleep")


def directive(name: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"^{name}=(.*)$", UNIT.read_text(), re.M)]


def unit_caps() -> list[str]:
    (bounding,) = directive("CapabilityBoundingSet")
    (ambient,) = directive("AmbientCapabilities")
    assert bounding.split() == ambient.split()
    return bounding.split()


def test_unit_directives():
    assert unit_caps() == ["CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE",
                           "CAP_NET_ADMIN"]
    assert directive("ExecStart") == [
        "/opt/procsentry/bin/procsentry watch --config /etc/procsentry/procsentry.toml"]
    for line in ("Restart=on-failure", "StartLimitIntervalSec=600", "StartLimitBurst=5",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=procsentry",
                 "CacheDirectory=procsentry", "LogsDirectory=procsentry", "LimitMEMLOCK=infinity",
                 "RestartPreventExitStatus=2 77"):
        assert re.search(rf"^{re.escape(line)}$", UNIT.read_text(), re.M), line
    # every hardening directive left off is named, with its reason, in a comment
    for off in ("PrivateNetwork", "ProtectProc", "ProcSubset", "MemoryDenyWriteExecute",
                "SystemCallFilter", "PrivateDevices"):
        assert re.search(rf"^# .*{off}", UNIT.read_text(), re.M), off
        assert not directive(off), off


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing: scripts/setup.sh installs it (Debian package systemd)")
    return exe


def verify(unit_text: str, name: str = "procsentry.service") -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_text(unit_text)
        return subprocess.run([analyze(), "verify", str(path)], capture_output=True, text=True,
                              timeout=120)


@pytest.mark.root
def test_systemd_analyze_verify(installed):
    """`systemd-analyze verify` (it needs no running systemd) on the unit as shipped, with only
    the install prefix pointed at the staged install (verify checks that ExecStart exists)."""
    text = UNIT.read_text().replace("/opt/procsentry/", f"{installed}/opt/procsentry/")
    p = verify(text)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    # it can fail: a misspelt value is reported (and would fail the check above)
    p = verify(text.replace("ProtectSystem=strict", "ProtectSystem=stric"))
    assert "Failed to parse protect system value" in p.stderr


@pytest.mark.root
def test_systemd_analyze_security_exposure(installed):
    p = subprocess.run([analyze(), "security", "--offline=yes", f"--root={installed}",
                        "procsentry.service"], capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for procsentry.service: ([0-9.]+)", p.stdout)
    assert m, p.stdout[-2000:] + p.stderr
    assert float(m.group(1)) <= 5.0, m.group(0)


# -- the capabilities --------------------------------------------------------------------------
def run_with_caps(caps: list[str], sensor: str, tmp_path: Path) -> tuple[int, str, dict | None]:
    """`watch` as root with only `caps` (the bounding set, as CapabilityBoundingSet= and
    NoNewPrivileges= make it), and one exec of another user (nobody) to enrich."""
    bset = ",".join(["-all"] + ["+" + c[4:].lower() for c in caps])
    state = tmp_path / f"state-{len(list(tmp_path.iterdir()))}"
    cmd = ["setpriv", f"--bounding-set={bset}", "--inh-caps=-all", "--no-new-privs", "--",
           sys.executable, "-m", "monitor", "watch", "--sensor", sensor, "--format", "json",
           "--uid", "65534", "--comm", "sleep", "--events", "exec", "--count", "1",
           "--environ", "--duration", "60", "--state-dir", str(state)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        first = readline(p.stderr, 120, "the sensor line").decode()
        if not first.startswith("procsentry: sensor "):
            p.wait(60)
            return p.returncode, first + p.stderr.read().decode(), None
        child = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                "env", "PROCSENTRY_MARK=1", SLEEP, "0.3"], cwd="/tmp", check=True)
        assert child.returncode == 0
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    line = out.decode().splitlines()[0]
    return p.returncode, first + err.decode(), json.loads(line)



@pytest.mark.bpf
def test_the_units_capabilities_are_enough(tmp_path):
    rc, err, ev = run_with_caps(unit_caps(), "bpf", tmp_path)
    assert rc == 0, err
    assert err.startswith("procsentry: sensor bpf")
    assert ev["uid"] == 65534 and ev["argv"] == [SLEEP, "0.3"]
    assert ev["enrichment"] == "full" and ev["missing"] == {}
    assert ev["proc"]["environ"]["PROCSENTRY_MARK"] == "1"
    assert ev["proc"]["fds"] is not None and ev["cwd"] == "/tmp"
    rc, err, ev = run_with_caps(unit_caps(), "connector", tmp_path)
    assert rc == 0, err
    assert err.startswith("procsentry: sensor connector")


@pytest.mark.bpf
@pytest.mark.parametrize("cap", ["CAP_BPF", "CAP_PERFMON"])
def test_without_bpf_or_perfmon_the_bpf_sensor_cannot_load(tmp_path, cap):
    caps = [c for c in unit_caps() if c != cap]
    rc, err, ev = run_with_caps(caps, "bpf", tmp_path)
    assert rc != 0 and ev is None
    assert "Operation not permitted" in err or "super-user" in err, err


@pytest.mark.bpf
def test_without_dac_read_search_other_users_fds_and_environ_are_denied(tmp_path):
    caps = [c for c in unit_caps() if c != "CAP_DAC_READ_SEARCH"]
    rc, err, ev = run_with_caps(caps, "bpf", tmp_path)
    assert rc == 0, err
    assert ev["enrichment"] == "partial"
    assert {k: ev["missing"].get(k) for k in ("fds", "environ")} == {"fds": "denied", "environ": "denied"}


@pytest.mark.bpf
def test_without_sys_ptrace_other_users_layout_and_fds_are_denied(tmp_path):
    caps = [c for c in unit_caps() if c != "CAP_SYS_PTRACE"]
    rc, err, ev = run_with_caps(caps, "bpf", tmp_path)
    assert rc == 0, err
    assert ev["enrichment"] == "partial"
    assert {k: ev["missing"].get(k) for k in ("fds", "arg_start")} == {"fds": "denied", "arg_start": "denied"}
    rc, err, ev = run_with_caps(caps, "connector", tmp_path)
    assert rc == 0, err
    assert {k: ev["missing"].get(k) for k in ("exe", "cwd")} == {"exe": "denied", "cwd": "denied"}
    assert ev["exe"] is None


@pytest.mark.root
def test_net_admin_is_what_sizes_the_connectors_buffer():
    """The connector's SO_RCVBUFFORCE (8 MiB past net.core.rmem_max) under the unit's set, and
    refused without CAP_NET_ADMIN (on Linux < 6.6 the subscription itself is refused too)."""
    probe = ("import socket\n"
             "s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 11)\n"  # NETLINK_CONNECTOR
             "s.bind((0, 1))\n"  # CN_IDX_PROC
             "try:\n    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)\n    print('forced')\n"  # SO_RCVBUFFORCE
             "except PermissionError:\n    print('EPERM')\n")

    def run(caps):
        bset = ",".join(["-all"] + ["+" + c[4:].lower() for c in caps])
        return subprocess.run(["setpriv", f"--bounding-set={bset}", "--inh-caps=-all",
                               "--no-new-privs", sys.executable, "-c", probe],
                              capture_output=True, text=True, timeout=60).stdout.strip()

    assert run(unit_caps()) == "forced"
    assert run([c for c in unit_caps() if c != "CAP_NET_ADMIN"]) == "EPERM"
