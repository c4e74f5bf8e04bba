"""Load Sigma rule files with pySigma and compile the ones procsentry can evaluate.

Every file is loaded on its own (as `SigmaCollection.load_ruleset([file], collect_errors=True)`
would, from the text read once it was checked: monitor/trusted.py),
so one broken file is one skipped entry with its reason, never a failed start. A rule is
skipped, with its id and the reason, when pySigma reports errors for it, when its log source
is not process creation (Sysmon-style `category: process_creation` on Linux, or auditd EXECVE
records), or when the compiler meets something it cannot evaluate.
"""
from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from monitor.detect.compile import (PARENT_IMAGE_FIELDS, Pred, Unsupported, compile_condition,
                                    fields_of, required_basenames, required_literals)
from monitor.events import RuleInfo
from monitor.trusted import Untrusted, check_ancestors, check_trusted_dir, read_trusted

log = logging.getLogger("procsentry.detect")

BUILTIN_DIR = Path(__file__).resolve().parent / "rules"
RULE_SUFFIXES = (".yml", ".yaml")


class RulesPathError(Exception):
    """A --rules path that does not exist or holds no rule files: a usage error."""


@dataclass(eq=False)  # hashed by identity: the engine de-duplicates candidate lists
class CompiledRule:
    info: RuleInfo
    match: Pred
    leaves: list[tuple[str, Pred]]
    basenames: frozenset[str] | None  # index key: see compile.required_basenames
    parent_basenames: frozenset[str] | None = None  # the same on ParentImage, when no Image key
    literals: frozenset[tuple[str, str]] | None = None  # (field, string): compile.required_literals
    fields: frozenset[str] = frozenset()  # every field the condition reads (compile.fields_of)


@dataclass
class Skipped:
    id: str | None
    title: str | None
    file: str
    reason: str

    def __post_init__(self) -> None:
        self.reason = " ".join(self.reason.split())  # one line: YAML errors span several


MAX_RULE_BYTES = 1 << 20  # a rule file is a few KiB: a bound on what one can make us read
_FILTERS: dict | None = None


def rule_files(paths: list[str], trusted_only: bool = True) -> list[Path]:
    """The rule files under each path (files as given, directories recursively, sorted).

    Rules decide what is alerted, so with trusted_only (every --rules path) every directory on
    the way to it, the directory and each directory below it must be ones no one but root or
    this user can add a file to or replace one in (monitor/trusted.py); read_rule checks each
    file. A directory that cannot be listed is an error, not rules silently left out. A symlinked directory
    below is not entered. The built-in pack is the package's own files, as trusted as its code."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if trusted_only and path.exists():
            try:
                check_ancestors(p)
            except Untrusted as e:
                raise RulesPathError(f"{e} (rules decide what is alerted)") from None
        if path.is_dir():
            found = []
            for top, dirs, files in os.walk(path, onerror=_raise):
                if trusted_only:
                    _trusted_dir(top)
                dirs.sort()
                found.extend(Path(top, f) for f in files
                             if Path(f).suffix in RULE_SUFFIXES and Path(top, f).is_file())
            if not found:
                raise RulesPathError(f"{p}: no .yml rule files in this directory")
            out.extend(sorted(found))
        elif path.is_file():
            out.append(path)
        elif path.exists():
            raise RulesPathError(f"{p}: not a file or directory")
        else:
            raise RulesPathError(f"{p}: no such file or directory")
    return out


def _raise(e: OSError) -> None:
    raise RulesPathError(f"{e.filename}: cannot list: {e.strerror}")


def _trusted_dir(path: str) -> None:
    try:
        check_trusted_dir(path)
    except Untrusted as e:
        raise RulesPathError(f"{e} (rules decide what is alerted)") from None


def read_rule(path: Path, trusted_only: bool = True) -> bytes:
    """A rule file's bytes; with trusted_only, only a file root or this user alone can write.
    RulesPathError when it is not one (the user's to fix, as a bad path is)."""
    try:
        if trusted_only:
            raw = read_trusted(str(path), MAX_RULE_BYTES)
        else:
            raw = path.read_bytes()
    except Untrusted as e:
        raise RulesPathError(f"{e} (rules decide what is alerted)") from None
    return raw


def logsource_problem(rule) -> str | None:
    """Why this rule's log source is not one procsentry's events answer (None when it is)."""
    ls = rule.logsource
    category, product, service = ls.category, ls.product, ls.service
    if product not in (None, "linux"):
        return f"log source product {product!r}: procsentry sees Linux processes"
    if category == "process_creation" and service is None:
        return None
    if service == "auditd" and category is None:
        # auditd rules are about many record types; procsentry's execs answer EXECVE only.
        if _mentions_execve(rule):
            return None
        return "auditd rule not about EXECVE records (procsentry has process executions only)"
    return (f"log source category={category} product={product} service={service}: "
            "only process_creation and auditd EXECVE rules are evaluated")


def _mentions_execve(rule) -> bool:
    for det in rule.detection.detections.values():
        for item in _items(det):
            if getattr(item, "field", None) == "type" and any(
                    str(v).upper() == "EXECVE" for v in getattr(item, "value", [])):
                return True
    return False


def _items(det):
    for item in getattr(det, "detection_items", []):
        if hasattr(item, "detection_items"):
            yield from _items(item)
        else:
            yield item


def _level(rule) -> str:
    lv = rule.level
    return getattr(lv, "name", str(lv) if lv is not None else "medium").lower()


def _info(rule, source: str, file: str) -> RuleInfo:
    status = rule.status
    return RuleInfo(
        id=str(rule.id) if rule.id else f"{file}:{rule.title}",
        title=str(rule.title), level=_level(rule),
        status=getattr(status, "name", status).lower() if status is not None else None,
        author=rule.author, tags=tuple(f"{t.namespace}.{t.name}" for t in (rule.tags or ())),
        references=tuple(str(r) for r in (rule.references or ())), source=source, file=file)


def load(paths: list[str], source: str = "sigma", display: Callable[[Path], str] = str,
         trusted_only: bool = True) -> tuple[list[CompiledRule], list[Skipped]]:
    """Load and compile every rule under paths. Raises RulesPathError for a bad path, or one
    another user could write (see rule_files), only."""
    from sigma.collection import SigmaCollection  # noqa: PLC0415 - heavy import, only with rules
    from sigma.exceptions import SigmaRuleLocation  # noqa: PLC0415
    from sigma.rule import SigmaRule  # noqa: PLC0415

    global _FILTERS
    if _FILTERS is None:  # load_ruleset collects filter documents where pySigma knows them (2.x)
        known = inspect.signature(SigmaCollection.from_yaml).parameters
        _FILTERS = {"collect_filters": True} if "collect_filters" in known else {}
    loaded: list[CompiledRule] = []
    skipped: list[Skipped] = []
    files = rule_files(paths, trusted_only)
    raws = [read_rule(f, trusted_only) for f in files]  # every file checked before any compiles
    for f, raw in zip(files, raws):
        name = display(f)
        try:
            # as SigmaCollection.load_ruleset([f]) reads one file (UTF-8, strictly: a rule whose
            # values cannot be decoded could never match), from the checked bytes
            collection = SigmaCollection.from_yaml(raw.decode("utf-8"), collect_errors=True,
                                                   source=SigmaRuleLocation(f), **_FILTERS)
        except Exception as e:  # noqa: BLE001 - a rule file must never stop the monitor
            skipped.append(Skipped(None, None, name, f"not loadable: {e}"))
            continue
        rule_errors = {str(e) for r in collection.rules for e in (getattr(r, "errors", None) or ())}
        for err in getattr(collection, "errors", []) or []:
            if str(err) not in rule_errors:  # pySigma lists a rule's errors in both places
                skipped.append(Skipped(None, None, name, f"pySigma: {err}"))
        for rule in collection.rules:
            rid = str(rule.id) if getattr(rule, "id", None) else None
            title = getattr(rule, "title", None)
            if not isinstance(rule, SigmaRule):
                skipped.append(Skipped(rid, title, name, f"{type(rule).__name__}: only detection rules are evaluated"))
                continue
            if rule.errors:
                skipped.append(Skipped(rid, title, name, "pySigma: " + "; ".join(str(e) for e in rule.errors)))
                continue
            try:
                problem = logsource_problem(rule)
                if problem:
                    skipped.append(Skipped(rid, title, name, problem))
                    continue
                loaded.append(compile_rule(rule, source, name))
            except Unsupported as e:
                skipped.append(Skipped(rid, title, name, str(e)))
            except Exception as e:  # noqa: BLE001 - pySigma raises its own errors lazily
                skipped.append(Skipped(rid, title, name, f"{type(e).__name__}: {e}"))
    return loaded, skipped


def compile_rule(rule, source: str, file: str) -> CompiledRule:
    conds = rule.detection.parsed_condition
    if not conds:
        raise Unsupported("no condition")
    preds, leaves, keys, pkeys, lits, fields = [], [], [], [], [], set()
    for cond in conds:  # several conditions in one rule are alternatives (OR)
        tree = cond.parsed
        p, lv = compile_condition(tree)
        preds.append(p)
        leaves.extend(lv)
        keys.append(required_basenames(tree))
        pkeys.append(required_basenames(tree, PARENT_IMAGE_FIELDS))
        lits.append(required_literals(tree))
        fields |= fields_of(tree)
    if len(preds) == 1:
        match = preds[0]
    else:
        match = lambda v: any(p(v) for p in preds)  # noqa: E731
    basenames = None if any(k is None for k in keys) else frozenset().union(*keys)
    pbasenames = None if basenames is not None or any(k is None for k in pkeys) else frozenset().union(*pkeys)
    literals = None if any(k is None for k in lits) else frozenset().union(*lits)
    return CompiledRule(_info(rule, source, file), match, leaves, basenames, pbasenames, literals,
                        frozenset(fields))


def load_builtin() -> tuple[list[CompiledRule], list[Skipped]]:
    root = BUILTIN_DIR.parent.parent.parent
    return load([str(BUILTIN_DIR)], "builtin",
                display=lambda p: str(p.relative_to(root)) if p.is_relative_to(root) else str(p),
                trusted_only=False)
