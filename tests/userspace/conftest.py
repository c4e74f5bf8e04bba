"""Fixtures for the userspace tests: fixture procfs trees. (The `root` mark is gated in
tests/conftest.py.)"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import procfixture  # noqa: E402, F401  (FaultyProcFS and the spec loader, for these tests)

# proc_tree (fixture procfs trees) lives in tests/conftest.py: the monitor tests use it too.
