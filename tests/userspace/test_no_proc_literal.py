"""STYLE 2.2 item 7: ProcFS is the only code that knows /proc. Outside userspace/procfs.py, no
string literal in the userspace or monitor packages may hold the path (a literal is what code
opens). Comments and docstrings may cite kernel and upstream paths such as fs/proc/array.c or
/proc/<pid>/stat: they open nothing."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("userspace", "monitor")
ALLOWED = {REPO / "userspace" / "procfs.py"}
LITERAL = "/proc"
# "/proc" as a path component: not "/procsentry" (a cache or log directory name)
PATTERN = re.compile(re.escape(LITERAL) + r"(?![A-Za-z0-9_])")


def _docstrings(tree: ast.AST) -> set[int]:
    """id() of the constant nodes that are docstrings (module, class, function)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                out.add(id(body[0].value))
    return out


def proc_literals(source: str) -> list[tuple[int, str]]:
    """(line, value) of every str or bytes literal that holds /proc as a path component,
    f-string parts included, docstrings and comments excluded."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and id(node) not in skip:
            value = node.value
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            if isinstance(value, str) and PATTERN.search(value):
                found.append((node.lineno, value))
    return found


def test_the_check_finds_literals_and_ignores_comments_and_docstrings() -> None:
    source = '''"""Reads /proc/<pid>/stat (fs/proc/array.c)."""
import os
# /proc/self/exe would be the obvious path
def f(pid):
    """Like /proc/<pid>/cmdline."""
    a = "/proc/self"
    b = f"/proc/{pid}/stat"
    c = b"/proc"
    d = "/procsentry/cache"  # not procfs
    return os.path.join("/", "proc")
'''
    assert sorted(line for line, _ in proc_literals(source)) == [6, 7, 8]


def test_only_procfs_py_holds_the_path_in_a_literal() -> None:
    offenders = []
    checked = 0
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if path in ALLOWED or "__pycache__" in path.parts:
                continue
            checked += 1
            for lineno, value in proc_literals(path.read_text(encoding="utf-8")):
                offenders.append(f"{path.relative_to(REPO)}:{lineno}: {value!r}")
    assert checked > 20
    assert not offenders, "only userspace/procfs.py may hold " + LITERAL + " in a literal:\n" + "\n".join(offenders)


def test_procfs_py_does_define_the_root() -> None:
    literals = proc_literals((REPO / "userspace" / "procfs.py").read_text(encoding="utf-8"))
    assert any(value == LITERAL for _, value in literals)
