"""STYLE 2.2 item 7: ProcFS is the only code that knows /proc. Nothing else in the userspace
or monitor packages may contain the literal, in code, strings, comments or docstrings alike
(simple to check, and a comment with a path invites the code that follows it)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("userspace", "monitor")
ALLOWED = {REPO / "userspace" / "procfs.py"}
LITERAL = "/" + "proc"  # spelled in two parts so this file would pass its own check
# "/proc" as a path component: not "/procsentry" (a cache or log directory name)
PATTERN = re.compile(re.escape(LITERAL) + r"(?![A-Za-z0-9_])")


def test_only_procfs_py_mentions_proc() -> None:
    offenders = []
    checked = 0
    for pkg in PACKAGES:
        root = REPO / pkg
        if not root.is_dir():  # monitor/ may not exist yet
            continue
        for path in sorted(root.rglob("*.py")):
            if path in ALLOWED or "__pycache__" in path.parts:
                continue
            checked += 1
            for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if PATTERN.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{lineno}: {line.strip()}")
    assert checked > 0
    assert not offenders, "only userspace/procfs.py may contain " + LITERAL + ":\n" + "\n".join(offenders)


def test_procfs_py_does_define_the_root() -> None:
    assert LITERAL in (REPO / "userspace" / "procfs.py").read_text()
