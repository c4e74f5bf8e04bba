"""The field taxonomy: what a Sigma field name means on a procsentry process event.

SigmaHQ's linux/process_creation rules are written against Sysmon for Linux's event 1, its
auditd rules against auditd's EXECVE records, and rules written for procsentry use procsentry's
own field names. One event answers all three vocabularies; README.md ("Detection: field
mapping") documents the table below.

A View wraps one event (a ProcessEvent from the live pipeline, or the dict of a JSON line
replayed by `procsentry detect`, read through Replayed) and computes each field at most once,
on first use: most rules are never evaluated for most events (see engine.py), so most fields
are never built.

Fields are read from the event as attributes: a live record's own, a replayed line's keys
through Replayed. A plain attribute is read by operator.attrgetter (C, no Python frame): the
engine reads some fields of every exec, and what a read costs there is mostly the calls.
Nested objects (ancestors, proc, differs) may still be dicts in a replayed line: attr() reads
both.
"""
from __future__ import annotations

import dataclasses
import operator
import posixpath
import re
from typing import Any, Callable

from monitor.events import ProcessEvent

MISSING = object()


def attr(obj: Any, name: str) -> Any:
    """obj.name for a dataclass record, obj[name] for a replayed JSON dict, None when absent."""
    if type(obj) is dict:
        return obj.get(name)
    return getattr(obj, name, None)  # None.x is None too


def _join(argv) -> str | None:
    # Sysmon for Linux builds CommandLine by joining argv with single spaces, unquoted.
    return None if argv is None else " ".join(argv)


class Replayed:
    """A process event replayed from JSON (`procsentry detect`), read like a live record: a key
    as an attribute, None when absent. Only the event's top level; nested objects stay dicts."""

    __slots__ = ("_d",)

    def __init__(self, d: dict) -> None:
        self._d = d

    def __getattr__(self, name: str) -> Any:  # only for names the class itself does not have
        return self._d.get(name)


def as_record(ev: Any) -> Any:
    """The event as the getters read it: a replayed dict wrapped, a live record as it is."""
    return Replayed(ev) if ev.__class__ is dict else ev


def _parent(ev):
    anc = ev.ancestry
    return anc[0] if anc else None


def parent_argv(ev, long_argvs: dict | None = None):
    """The nearest ancestor's argv, whole. An ancestor's own argv is cut after 256 bytes
    (build.bounded_argv): a parent that padded its command line past that would hide the rest
    from every ParentCommandLine rule. Live, a cut ancestor carries the whole argv in _argv
    (the process table's, not serialised); replayed, it is the parent image's own exec event
    seen earlier in the stream (long_argvs: (exec_id, image_id) -> argv, kept by the engine);
    the cut argv only when neither is known."""
    p = _parent(ev)
    if p is None:
        return None
    argv = attr(p, "argv")
    if attr(p, "argv_truncated"):
        full = None if type(p) is dict else getattr(p, "_argv", None)
        if full is None and long_argvs:
            full = long_argvs.get((attr(p, "exec_id"), attr(p, "image_id")))
        if full is not None:
            return full
    return argv


def _basename(path: str | None) -> str | None:
    return None if path is None else path.rsplit("/", 1)[-1]


def _setuid(ev) -> bool | None:
    """The effective uid is not the real one (a setuid executable, or a process that changed
    its effective uid alone); None when either is unknown."""
    uid, euid = ev.uid, ev.euid
    return None if uid is None or euid is None else uid != euid


def _argc(ev) -> int | None:
    if ev.argc is not None:
        return ev.argc
    return None if ev.argv is None else len(ev.argv)


def _argv0(ev) -> str | None:
    argv = ev.argv
    return argv[0] if argv else None


def _script(ev) -> str | None:
    """The #! script an exec runs, as an absolute path (Image is its interpreter): the kernel
    makes argv [interpreter, (the #! line's argument), filename, ...], filename being the path
    given to execve, made absolute here against cwd (symlinks not followed). None otherwise."""
    f = ev.filename
    if not f or f == ev.exe:
        return None
    argv = ev.argv
    if not argv or f not in argv[1:3]:
        return None
    if f.startswith("/"):
        return posixpath.normpath(f)
    cwd = ev.cwd
    return posixpath.normpath(posixpath.join(cwd, f)) if cwd else None


def _ancestry_field(name: str) -> Callable[[Any], Any]:
    def get(ev):
        anc = ev.ancestry
        if anc is None:
            return None
        if name == "argv":  # each ancestor's command line, as CommandLine is built
            return tuple(_join(attr(a, "argv")) for a in anc if attr(a, "argv") is not None)
        return tuple(v for a in anc if (v := attr(a, name)) is not None)
    return get


# Sysmon for Linux (event 1, process creation) names -> procsentry. ParentUser needs state
# (ancestors carry no uid) and is supplied by the engine; see View.parent_user.
SYSMON: dict[str, Callable[[Any], Any]] = {
    "Image": operator.attrgetter("exe"),
    "CommandLine": lambda ev: _join(ev.argv),
    "CurrentDirectory": operator.attrgetter("cwd"),
    "User": operator.attrgetter("user"),
    # Sysmon for Linux fills LogonId from the process's uid (two SigmaHQ OMIGOD rules test
    # `LogonId: 0` for root), so it is the uid here too.
    "LogonId": operator.attrgetter("uid"),
    "ProcessId": operator.attrgetter("pid"),
    "ParentProcessId": operator.attrgetter("ppid"),
    "ProcessGuid": operator.attrgetter("exec_id"),
    "ParentProcessGuid": operator.attrgetter("parent_exec_id"),
    "ParentImage": lambda ev: attr(_parent(ev), "exe"),
    "ParentCommandLine": lambda ev: _join(parent_argv(ev)),
    "OriginalFileName": lambda ev: _basename(ev.exe),
}

# auditd EXECVE record fields (a0..aN are handled in View.get).
AUDITD: dict[str, Callable[[Any], Any]] = {
    "type": lambda ev: "EXECVE",
    "argc": _argc,
    "exe": operator.attrgetter("exe"),
    "cwd": operator.attrgetter("cwd"),
    "auid": operator.attrgetter("loginuid"),
    "ses": operator.attrgetter("sessionid"),
}

# Names procsentry adds for rules written against it (its own fields need no entry: any
# top-level field, and dotted paths into the ns, proc and differs objects, resolve by name).
EXTRA: dict[str, Callable[[Any], Any]] = {
    "argv0": _argv0,
    "setuid": _setuid,
    "script": _script,
    "ancestry.exe": _ancestry_field("exe"),
    "ancestry.argv": _ancestry_field("argv"),
    "ancestry.pid": _ancestry_field("pid"),
    "ancestry.exec_id": _ancestry_field("exec_id"),
    "parent.exe": lambda ev: attr(_parent(ev), "exe"),
    "parent.argv": parent_argv,
}

RESOLVERS: dict[str, Callable[[Any], Any]] = {**SYSMON, **AUDITD, **EXTRA}
PARENT_ARGV_FIELDS = frozenset(("ParentCommandLine", "parent.argv"))  # View: see parent_argv
_AUDIT_ARG = re.compile(r"a([0-9]+)\Z")


# Every record the rules see (exec, existing, missed) has these (a ProcessEvent dataclass
# field; not ExitEvent's own: an exec record has no exit_code): read as a plain attribute.
_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(ProcessEvent))


def resolve(ev: Any, name: str) -> Any:
    """The value of field `name` on event `ev` (None when the event has no such value)."""
    return field_getter(name)(as_record(ev))


def field_getter(name: str) -> Callable[[Any], Any]:
    """The function that reads field `name` from an event (a record, or a Replayed: see
    as_record), raw, not lower-cased."""
    fn = _GETTERS.get(name)
    if fn is None:
        fn = _GETTERS[name] = _getter(name)
    return fn


def _getter(name: str) -> Callable[[Any], Any]:
    """How to read field `name`, worked out once per name: it is asked for every event."""
    fn = RESOLVERS.get(name)
    if fn is not None:
        return fn
    m = _AUDIT_ARG.match(name)
    if m is not None:
        i = int(m.group(1))

        def audit_arg(ev):
            argv = ev.argv
            return argv[i] if argv is not None and i < len(argv) else None
        return audit_arg
    if "." in name:  # proc.state, ns.pid, differs.argv; through lists: proc.sockets.remote
        parts = name.split(".")
        return lambda ev: _path(ev, parts)
    if name in _RECORD_FIELDS:
        return operator.attrgetter(name)
    return lambda ev: getattr(ev, name, None)


_GETTERS: dict[str, Callable[[Any], Any]] = {}


def _path(obj: Any, parts: list[str]) -> Any:
    for i, part in enumerate(parts):
        if isinstance(obj, (list, tuple)):
            vals = (_path(e, parts[i:]) for e in obj)
            return tuple(v for v in vals if v is not None)
        obj = attr(obj, part)
        if obj is None:
            return None
    return obj


class View:
    """One event as the rules see it: fields resolved lazily, once, lower-cased once."""

    __slots__ = ("ev", "_values", "_lower", "parent_user", "base", "long_argvs")

    def __init__(self, ev: Any, parent_user: str | None = None, base: str = "",
                 long_argvs: dict | None = None) -> None:
        self.ev = as_record(ev)
        self.base = base  # the executable's basename, lower-cased ("" without one)
        self._values: dict[str, Any] = {}
        self._lower: dict[str, Any] = {}
        self.parent_user = parent_user
        self.long_argvs = long_argvs  # see parent_argv

    def get(self, name: str) -> Any:
        v = self._values.get(name, MISSING)
        if v is MISSING:
            if name == "ParentUser":
                v = self.parent_user
            elif name in PARENT_ARGV_FIELDS and self.long_argvs:
                argv = parent_argv(self.ev, self.long_argvs)
                v = _join(argv) if name == "ParentCommandLine" else argv
            else:  # resolve()
                v = field_getter(name)(self.ev)
            self._values[name] = v
        return v

    def lower(self, name: str) -> Any:
        """The field as text, lower-cased (a tuple for list fields); None when absent."""
        v = self._lower.get(name, MISSING)
        if v is MISSING:
            v = self.get(name)
            v = v.lower() if v.__class__ is str else _as_text(v, True)
            self._lower[name] = v
        return v

    def seed_lower(self, name: str, v: str, low: str) -> None:
        """Field `name` read by the caller as the string v, lower-cased low: cached as get()
        and lower() would have."""
        self._values[name] = v
        self._lower[name] = low

    def text(self, name: str) -> Any:
        return _as_text(self.get(name), False)


def _as_text(v: Any, low: bool) -> Any:
    if v is None:
        return None
    if isinstance(v, str):
        return v.lower() if low else v
    if isinstance(v, bool):  # Sigma compares booleans as the words true/false
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return tuple(t for x in v if (t := _as_text(x, low)) is not None and not isinstance(t, tuple))
    if isinstance(v, (int, float)):
        return str(v)
    return None  # objects (ns, proc) are not strings: match their dotted fields instead
