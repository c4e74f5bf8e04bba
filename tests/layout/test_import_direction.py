"""The data path's dependency rules, checked on the source (no import side effects):

* userspace/ never imports monitor/ or bcc (it is the pure procfs/netlink layer);
* sensors never import the pipeline or its stages: they only emit monitor/records.py records;
* the pipeline and its stages import no sensor (no sensor's wire format reaches them);
* bcc is imported only in the BPF sensor's package (the loader, and the version probe).
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PIPELINE_STAGES = ("monitor.pipeline", "monitor.window", "monitor.build", "monitor.reconcile",
                   "monitor.table", "monitor.enrich", "monitor.output")


def imports(path: Path) -> set[str]:
    """Every module path.py imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(path.relative_to(REPO).with_suffix("").parts[:-node.level])
            mod = f"{base}.{node.module}" if node.module else base
            out.add(mod)
    return out


def modules(folder: str) -> list[Path]:
    found = sorted((REPO / folder).rglob("*.py"))
    assert found, f"no modules under {folder}"
    return found


def offenders(paths: list[Path], banned: tuple[str, ...], allow=()) -> list[str]:
    bad = []
    for p in paths:
        rel = str(p.relative_to(REPO))
        if rel in allow:
            continue
        for mod in sorted(imports(p)):
            if any(mod == b or mod.startswith(b + ".") for b in banned):
                bad.append(f"{rel} imports {mod}")
    return bad


def test_userspace_imports_neither_monitor_nor_bcc():
    assert offenders(modules("userspace"), ("monitor", "bcc")) == []


def test_sensors_never_import_the_pipeline():
    assert offenders(modules("monitor/sensors"), PIPELINE_STAGES + ("monitor.__main__",)) == []


def test_the_pipeline_imports_no_sensor():
    stages = [REPO / (m.replace(".", "/") + ".py") for m in PIPELINE_STAGES]
    stages += [REPO / "monitor/records.py", REPO / "monitor/events.py", REPO / "monitor/text.py"]
    assert offenders(stages, ("monitor.sensors",)) == []


def test_bcc_is_imported_only_in_the_bpf_package():
    everything = modules("monitor") + modules("userspace")
    assert offenders(everything, ("bcc",), allow=("monitor/sensors/bpf/loader.py",
                                                  "monitor/sensors/bpf/bccinfo.py")) == []
    assert "bcc" in imports(REPO / "monitor/sensors/bpf/loader.py")


def test_the_check_sees_a_violation(tmp_path):
    # The rule must be able to fail: a module importing the pipeline is found.
    bad = REPO / "monitor/sensors/_layout_probe.py"
    bad.write_text("from monitor.pipeline import Pipeline\n")
    try:
        assert offenders(modules("monitor/sensors"), PIPELINE_STAGES) == [
            "monitor/sensors/_layout_probe.py imports monitor.pipeline",
            "monitor/sensors/_layout_probe.py imports monitor.pipeline.Pipeline"]
    finally:
        bad.unlink()
