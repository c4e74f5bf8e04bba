"""`make install` / `make uninstall` twice in a row against a staged root (DESTDIR)."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.agent.conftest import make

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
FILES = {  # path -> mode, as installed
    "etc/systemd/system/procsentry.service": 0o644,
    "etc/logrotate.d/procsentry": 0o644,
    "etc/procsentry/procsentry.toml": 0o600,
    "opt/procsentry/bin/procsentry": 0o755,
    "opt/procsentry/share/README.md": 0o644,
}
DIRS = {"etc/procsentry": 0o755, "var/lib/procsentry": 0o700, "var/log/procsentry": 0o700,
        "var/cache/procsentry": 0o700, "opt/procsentry": 0o755}


def tree(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and link under root (the venv's site-packages left out): mode and digest."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if "/site-packages/" in rel or "__pycache__" in rel:
            continue
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = (0, os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            out[rel] = (stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[rel] = (stat.S_IMODE(st.st_mode), "dir")
    return out


def test_install_twice_uninstall_twice(tmp_path):
    root = tmp_path / "root"
    p = make("install", root)
    assert p.returncode == 0, p.stderr
    first = tree(root)
    for rel, mode in FILES.items():
        assert first[rel][0] == mode, rel
    for rel, mode in DIRS.items():
        assert first[rel] == (mode, "dir"), rel
    assert first["usr/local/bin/procsentry"] == (0, "/opt/procsentry/bin/procsentry")
    assert (root / "etc/systemd/system/procsentry.service").read_bytes() == \
        (REPO / "contrib/procsentry.service").read_bytes()
    # the staged venv names its final place, and runs
    script = (root / "opt/procsentry/bin/procsentry").read_text()
    assert script.startswith("#!/opt/procsentry/bin/python\n")
    assert str(root) not in (root / "opt/procsentry/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in (root / "opt/procsentry/pyvenv.cfg").read_text()
    py = root / "opt/procsentry/bin/python"
    out = subprocess.run([str(py), "-c", "import bcc, monitor.agent, prometheus_client; "
                          "print(monitor.agent.__file__)"], capture_output=True, text=True,
                         check=True, cwd="/")
    assert out.stdout.startswith(str(root / "opt/procsentry/lib/"))  # its own copy, not the checkout
    # the default settings are `config default`, and valid
    conf = root / "etc/procsentry/procsentry.toml"
    default = subprocess.run([str(py), "-m", "monitor", "config", "default"], capture_output=True,
                             text=True, check=True, cwd="/").stdout
    assert conf.read_text() == default
    check = subprocess.run([str(py), "-m", "monitor", "config", "check", str(conf)],
                           capture_output=True, text=True, cwd="/")
    assert check.returncode == 0, check.stderr
    # no systemctl against a staged root; nothing written outside it
    assert "systemd" not in p.stderr.replace("procsentry.service", "")

    # second install: nothing to do, nothing changed (no pip run: it says nothing)
    p = make("install", root)
    assert (p.returncode, p.stderr) == (0, "")
    assert tree(root) == first

    # an admin's edit survives a reinstall and an uninstall
    conf.write_text(conf.read_text() + "\nsweep_interval = 10\n")
    assert make("install", root).returncode == 0
    assert conf.read_text().endswith("sweep_interval = 10\n")
    (root / "var/log/procsentry/events.jsonl").write_text("{}\n")

    for _ in range(2):
        p = make("uninstall", root)
        assert p.returncode == 0, p.stderr
        assert p.stderr == "install: kept /etc/procsentry/procsentry.toml: it was changed after install (PURGE=1 removes it)\n"
        left = tree(root)
        assert "opt/procsentry" not in left
        assert "etc/systemd/system/procsentry.service" not in left
        assert "etc/logrotate.d/procsentry" not in left
        assert "usr/local/bin/procsentry" not in left
        # data stays
        assert left["var/log/procsentry/events.jsonl"][0] == 0o644
        assert left["var/lib/procsentry"] == (0o700, "dir")

    p = make("uninstall", root, PURGE="1")
    assert p.returncode == 0, p.stderr
    left = tree(root)
    assert [k for k in left if "procsentry" in k] == []


def test_uninstall_removes_an_unchanged_default_config(installed, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(installed, root, symlinks=True)
    p = make("uninstall", root)
    assert (p.returncode, p.stderr) == (0, "")
    left = tree(root)
    assert [k for k in left if "procsentry" in k] == ["var/cache/procsentry", "var/lib/procsentry",
                                                     "var/log/procsentry"]


def test_logrotate_snippet_parses(installed):  # root: the module's pytestmark
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if not os.path.exists(logrotate):
        pytest.fail("logrotate is missing: scripts/setup.sh installs it")
    p = subprocess.run([logrotate, "--debug", str(installed / "etc/logrotate.d/procsentry")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "error" not in p.stderr.lower(), p.stderr
    assert "/var/log/procsentry/*.jsonl" in p.stderr
