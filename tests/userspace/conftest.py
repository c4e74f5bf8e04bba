"""Fixtures for the userspace tests: fixture procfs trees. (The `root` mark is gated in
tests/conftest.py.)"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procfixture import FIXTURES, materialise  # noqa: E402


@pytest.fixture
def proc_tree(tmp_path: Path) -> Callable[[str], str]:
    """proc_tree(name) materialises tests/fixtures/proc/<name>.ttar under tmp_path and returns
    the root to hand to ProcFS."""

    def make(name: str = "host") -> str:
        return str(materialise(FIXTURES / f"{name}.ttar", tmp_path / name))

    return make

