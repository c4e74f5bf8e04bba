"""A staged `make install` (DESTDIR), shared by the unit and install tests: one pip install."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def make(target: str, destdir: Path, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "DESTDIR": str(destdir), **env}
    return subprocess.run(["make", "--no-print-directory", "-s", target, f"DESTDIR={destdir}"],
                          cwd=REPO, env=full, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("make install needs root")
    root = tmp_path_factory.mktemp("destdir")
    p = make("install", root)
    assert p.returncode == 0, p.stderr
    return root
