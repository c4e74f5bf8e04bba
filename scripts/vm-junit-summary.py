"""Summarise a guest's junit xml for scripts/test-kernels.sh (run by scripts/vm-guest-run.sh).

    vm-junit-summary.py OUT_DIR LABEL=PATH...

Writes OUT_DIR/counts (tests= failures= errors= skipped=, the totals) and OUT_DIR/ran: one
`LABEL:PASSED/SELECTED` per VM_TESTS word, plus `,failed=N` and `,skipped=N` when not 0,
so the results line says what ran on each kernel. A test belongs to the first word whose PATH
(a directory, a file or a node id, relative to the repo) selects it. No junit xml (pytest never
started or was killed): nothing is written, and the host reports that.
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def node_id(case: ET.Element) -> str:
    """pytest's node id back from junit's classname (dotted module[.Class]) and name."""
    parts = case.get("classname", "").split(".")
    cls = [parts.pop()] if parts and parts[-1][:1].isupper() else []
    return "::".join(["/".join(parts) + ".py", *cls, case.get("name", "")])


def selects(path: str, node: str) -> bool:
    path = path.rstrip("/")
    if "::" in path or path.endswith(".py"):
        return node == path or node.startswith(path + "::")
    return node.startswith(path + "/")


def main(out: str, words: list[str]) -> int:
    try:
        root = ET.parse(f"{out}/junit.xml").getroot()
    except (OSError, ET.ParseError):
        return 0
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    totals = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    with open(f"{out}/counts", "w") as f:
        f.write(" ".join(f"{k}={v}" for k, v in totals.items()) + "\n")
    checks = [(w.partition("=")[0], w.partition("=")[2]) if "=" in w else (w, w) for w in words]
    ran = {label: {"selected": 0, "passed": 0, "failed": 0, "skipped": 0} for label, _p in checks}
    for case in root.iter("testcase"):
        node = node_id(case)
        label = next((lb for lb, path in checks if selects(path, node)), None)
        if label is None:
            continue
        c = ran[label]
        c["selected"] += 1
        if case.find("skipped") is not None:
            c["skipped"] += 1
        elif case.find("failure") is not None or case.find("error") is not None:
            c["failed"] += 1
        else:
            c["passed"] += 1
    with open(f"{out}/ran", "w") as f:
        f.write(" ".join(f"{label}:{c['passed']}/{c['selected']}"
                         + (f",failed={c['failed']}" if c["failed"] else "")
                         + (f",skipped={c['skipped']}" if c["skipped"] else "")
                         for label, c in ran.items()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
