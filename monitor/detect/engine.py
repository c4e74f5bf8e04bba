"""The detector: every process event in, alerts out, never an exception.

Cost. SigmaHQ's Linux rules nearly all require `Image|endswith: '/name'`; rules are indexed by
the executable basenames they require (compile.required_basenames), so an event is tested only
against the rules for its own basename. Most of the others require one of a few strings in a
field, mostly the command line (compile.required_literals): one regex search per such field
finds whether any of those strings occurs at all (for most events none does), and only the
rules whose string occurs are evaluated (a `re` leaf's strings come from its parse tree:
regex_literals.py). What is left is evaluated for every event. Which rules and behaviours an
executable's basename leads to is worked out once per basename (most execs call only the
behaviours that look at every process). Behaviours that keep no state across exits are not
called for exits; the pipeline asks `wants(kind)` first, so a fork or an exit costs a set
lookup.

What is left is mostly the Python work done for every exec, not rule evaluations (about one
per 200 execs in a storm with SigmaHQ's rules loaded), so that work is kept small: fields are
read as attributes (a replayed dict through fields.Replayed); a field's literal search result
is remembered per value (most values repeat: the executable, its directory, the parent's
command line); an executable path's basename and plan are remembered; ParentUser's
bookkeeping is done only when a rule reads it. bench/DETECTION.md has the measurements.

Failure. A rule that raises while evaluating (a compiler bug, a value of an unexpected type in
a replayed stream) is counted in `evaluation_errors`, reported once per rule on stderr through
logging, and the other rules still run: detection must never stop the monitor.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable, Iterable

from monitor.detect import behaviour
from monitor.detect.compile import SUFFIX, any_substring
from monitor.build import bounded_argv
from monitor.detect.fields import PARENT_ARGV_FIELDS, Replayed, View, as_record, attr, field_getter
from monitor.detect.loader import CompiledRule, Skipped, load, load_builtin
from monitor.events import AlertEvent, RuleInfo

log = logging.getLogger("procsentry.detect")

# Process creation, as Sigma means it, is an exec. `existing` (running when the monitor
# started) and `missed` (found by a sweep) are processes whose creation the sensor did not
# report: a reverse shell started a second before the monitor is still one.
EVALUATED = frozenset(("exec", "existing", "missed"))
_SEEN_ALERTS = 65536  # (rule, exec_id, time) remembered so one process alerts once per rule
_USERS = 65536  # exec_id -> user, for ParentUser
_LONG_ARGVS = 4096  # replayed (exec_id, image_id) -> argv longer than an ancestor's, for ParentCommandLine
_BASENAMES = 4096  # basenames whose plan is remembered (cleared when full)
_EXES = 1024  # executable paths whose basename and plan are remembered (cleared when full)
_SEEN_TEXTS = 1024  # values per field whose literal search result is remembered (see _literal_hit)
_SEEN_TEXT_MAX = 256  # longer texts are searched each time (the memory stays a few MB at most)


class Detector:
    def __init__(self, rules: list[CompiledRule], skipped: list[Skipped],
                 behaviours: Iterable[behaviour.Behaviour] = (), probe=None) -> None:
        self.rules = rules
        self.skipped = skipped
        self.behaviours = list(behaviours)
        self._exit_behaviours = [b for b in self.behaviours if b.sees_exits]
        self._plans: dict[str, tuple] = {}  # basename -> what its execs are tested against: see _plan
        self.probe = probe
        self._index: dict[str, list[CompiledRule]] = {}  # exact basename -> rules
        self._suffix: dict[str, list[CompiledRule]] = {}  # basename ending -> rules
        self._always: list[CompiledRule] = []
        self._pindex: dict[str, list[CompiledRule]] = {}  # exact parent basename -> rules
        self._psuffix: dict[str, list[CompiledRule]] = {}
        by_literal: list[CompiledRule] = []  # rules needing one of their .literals
        for r in rules:
            if r.basenames is not None:
                _file(r, r.basenames, self._index, self._suffix)
            elif r.parent_basenames is not None:
                _file(r, r.parent_basenames, self._pindex, self._psuffix)
            elif r.literals is not None:
                by_literal.append(r)
            else:
                self._always.append(r)
        by_field: dict[str, set[str]] = {}
        self._literal_rules: dict[str, list[CompiledRule]] = {}  # field -> rules with a string on it
        for r in by_literal:
            for field, lit in r.literals:
                by_field.setdefault(field, set()).add(lit)
                rules_here = self._literal_rules.setdefault(field, [])
                if r not in rules_here:
                    rules_here.append(r)
        # (field, how to read it from the event, the search): read raw and lower-cased here,
        # not through the View, since every event pays this for every field (ParentUser is
        # the View's own state: read there).
        # Per field: how to read it, the search, text (or number) -> its lower-cased text when
        # one of the strings occurs in it, else "" (see _literal_hit), and whether false and
        # true (a flag's value) contain one.
        self._literal_search = []
        for f, lits in sorted(by_field.items()):
            search = _searcher(lits)
            by_view = f == "ParentUser" or f in PARENT_ARGV_FIELDS  # the View's own state too
            self._literal_search.append((f, None if by_view else field_getter(f), search, {},
                                         (bool(search("false")), bool(search("true")))))
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        # exec_id -> user, kept only when a rule reads ParentUser (no SigmaHQ Linux rule does)
        self._users: OrderedDict[str, str | None] | None = (
            OrderedDict() if any("ParentUser" in r.fields for r in rules) else None)
        # A replayed stream's execs whose argv an ancestor's view cuts (fields.parent_argv),
        # kept only when a rule reads the parent's command line; live, the ancestor has it.
        self._long_argvs: OrderedDict[tuple, tuple] | None = (
            OrderedDict() if any(PARENT_ARGV_FIELDS & r.fields for r in rules) else None)
        self._exes: dict[str, tuple[str, tuple]] = {}  # exe -> (its basename, its plan): see _observe
        self.alerts_per_rule: dict[str, int] = {}
        self.errors_per_rule: dict[str, int] = {}
        self.events_evaluated = 0
        self.rule_evaluations = 0

    @classmethod
    def from_paths(cls, paths: list[str] | None, builtin: bool = True, probe=None) -> "Detector":
        """Built-in pack (unless builtin=False) plus the rules under paths. RulesPathError for a
        bad path is the caller's usage error."""
        rules: list[CompiledRule] = []
        skipped: list[Skipped] = []
        if builtin:
            r, s = load_builtin()
            rules += r
            skipped += s
        if paths:
            r, s = load(paths)
            rules += r
            skipped += s
        return cls(rules, skipped, behaviour.builtin() if builtin else (), probe=probe)

    # -- the per-event path --------------------------------------------------------------------
    def wants(self, kind: str) -> bool:
        """Whether an event of this kind can matter now: execs and their like always, exits
        while a behaviour waits for one (ArgvRewritten: rarely), forks never. The pipeline asks
        first, so that most forks and exits cost a set lookup, not a call into detection."""
        if kind in EVALUATED:
            return True
        return kind == "exit" and any(b.pending or not b.can_pend for b in self._exit_behaviours)

    def observe(self, ev: Any) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        try:
            self._observe(as_record(ev), out)
        except Exception as e:  # noqa: BLE001 - a malformed (replayed) event, never a crash
            self._error("-", e)
        return out

    def _observe(self, ev: Any, out: list[AlertEvent]) -> None:
        kind = ev.event
        if kind not in EVALUATED:
            if kind == "exit":
                for b in self._exit_behaviours:
                    self._run_behaviour(b, ev, None, out)
            return
        self.events_evaluated += 1
        exe = ev.exe
        # The executable's basename and what it leads to, remembered per path: most execs run
        # a program that ran before.
        known = self._exes.get(exe) if exe.__class__ is str else None
        if known is None:
            base = exe.rsplit("/", 1)[-1].lower() if exe and exe.__class__ is str else ""
            known = (base, self._plans.get(base) or self._plan(base))
            if exe.__class__ is str and len(exe) <= 512:
                if len(self._exes) >= _EXES:
                    self._exes.clear()
                self._exes[exe] = known
        base, (candidates, runs, gated) = known
        long_argvs = self._long_argvs
        if long_argvs is not None and ev.__class__ is Replayed:
            argv = ev.argv
            if argv and bounded_argv(argv)[1]:  # one its descendants' ancestry will cut
                long_argvs[(ev.exec_id, ev.image_id)] = tuple(argv)
                if len(long_argvs) > _LONG_ARGVS:
                    long_argvs.popitem(last=False)
        users = self._users
        if users is None:
            view = View(ev, None, base, long_argvs)
        else:
            view = View(ev, users.get(ev.parent_exec_id), base, long_argvs)
            if ev.exec_id is not None:
                users[ev.exec_id] = ev.user
                if len(users) > _USERS:
                    users.popitem(last=False)
        for b in gated:  # the behaviours this basename does not lead to, unless...
            if b.pending or (b.trigger is not None and getattr(ev, b.trigger) is not None):
                runs = runs + [b]
        if self._pindex or self._psuffix:
            anc = ev.ancestry
            pexe = attr(anc[0], "exe") if anc else None
            if pexe and isinstance(pexe, str):
                more = _lookup(pexe.rsplit("/", 1)[-1].lower(), self._pindex, self._psuffix)
                if more:
                    candidates = candidates + more
        hits = None
        for field, get, search, seen, flag_hits in self._literal_search:
            v = get(ev) if get is not None else view.get(field)
            if v is None:
                continue
            cls = v.__class__
            if cls is str or cls is int:
                x = seen.get(v)
                if x is None:
                    x = _literal_hit(v, search, seen)
                if not x:
                    continue
                view.seed_lower(field, v, x)
            elif cls is bool:  # the flags (exe_fileless, exe_deleted): as Sigma compares them
                if not flag_hits[v]:
                    continue
                x = "true" if v else "false"
            else:
                x = view.lower(field)
                if x is None:
                    continue
                if x.__class__ is not str:  # a list field: any element (a match across the
                    x = "\x00".join(x)     # separator only costs an evaluation)
                if not search(x):
                    continue
            if hits is None:
                hits = {}
            hits[field] = x
        if hits is not None:
            found = [r for f in hits for r in self._literal_rules[f] if _holds(r.literals, hits)]
            if len(hits) > 1:
                found = list(dict.fromkeys(found))  # a rule with strings on two fields: once
            candidates = candidates + found
        self.rule_evaluations += len(candidates)
        for rule in candidates:
            try:
                if rule.match(view):
                    self._alert(rule.info, ev, _matched(rule, view), kind, out)
            except Exception as e:  # noqa: BLE001 - see the module docstring
                self._error(rule.info.id, e)
        for b in runs:
            self._run_behaviour(b, ev, view, out)

    def _plan(self, base: str) -> tuple[list[CompiledRule], list[behaviour.Behaviour],
                                        list[behaviour.Behaviour]]:
        """What an exec of this basename is tested against: the rules filed under it (and those
        for every event), the behaviours that want it, and the others that can still want it
        (see behaviour.Behaviour). Remembered per basename, bounded."""
        if len(self._plans) >= _BASENAMES:
            self._plans.clear()
            self._exes.clear()
        wanted = [b for b in self.behaviours if b.wants(base)]
        gated = [b for b in self.behaviours if b not in wanted and (b.trigger is not None or b.can_pend)]
        plan = self._plans[base] = (self._always + _lookup(base, self._index, self._suffix), wanted, gated)
        return plan

    def _run_behaviour(self, b: "behaviour.Behaviour", ev: Any, view: View | None,
                       out: list[AlertEvent]) -> None:
        try:
            hits = b.observe(ev, view, self.probe)
            if hits:
                for info, target, matched in hits:
                    self._alert(info, target, matched, attr(target, "event") or "exec", out)
        except Exception as e:  # noqa: BLE001 - see the module docstring
            self._error(b.info.id, e)

    def _alert(self, info: RuleInfo, ev: Any, matched: dict, trigger: str, out: list) -> None:
        # exec_id stays the same across a re-exec in one process (exec keeps the start time):
        # one alert per rule per image (image_id; the event time where the image is unknown,
        # which also tells `existing` then `missed` of one process apart).
        key = (info.id, attr(ev, "exec_id"), attr(ev, "image_id") or attr(ev, "time"))
        if key in self._seen:
            return
        self._seen[key] = None
        if len(self._seen) > _SEEN_ALERTS:
            self._seen.popitem(last=False)
        self.alerts_per_rule[info.id] = self.alerts_per_rule.get(info.id, 0) + 1
        out.append(AlertEvent(
            event="alert", time=attr(ev, "time"), source=attr(ev, "source") or "replay",
            rule=info, pid=attr(ev, "pid"),
            exec_id=attr(ev, "exec_id"), image_id=attr(ev, "image_id"), exe=attr(ev, "exe"),
            argv=_tuple(attr(ev, "argv")),
            user=attr(ev, "user"), uid=attr(ev, "uid"), ancestry=_tuple(attr(ev, "ancestry")),
            matched=matched, trigger=trigger))

    def _error(self, rule_id: str, e: Exception) -> None:
        n = self.errors_per_rule.get(rule_id, 0) + 1
        self.errors_per_rule[rule_id] = n
        if n == 1:
            log.warning("rule %s failed to evaluate (%s: %s); counted in stats detection.evaluation_errors",
                        rule_id, type(e).__name__, e)

    # -- reporting -----------------------------------------------------------------------------
    def counters(self) -> dict[str, object]:
        return {
            "rules_loaded": len(self.rules) + len(self.behaviours),
            "rules_skipped": len(self.skipped),
            "events_evaluated": self.events_evaluated,
            "rule_evaluations": self.rule_evaluations,
            "alerts": sum(self.alerts_per_rule.values()),
            "alerts_per_rule": dict(self.alerts_per_rule),
            "evaluation_errors": sum(self.errors_per_rule.values()),
        }

    def report_skipped(self, stream) -> None:
        """Each skipped rule once, at start, with its id and the reason."""
        for s in self.skipped:
            print(f"procsentry: rule skipped: {s.id or '-'} ({s.file}): {s.reason}", file=stream)

    def infos(self) -> list[RuleInfo]:
        return [r.info for r in self.rules] + [b.info for b in self.behaviours]


def _file(rule: CompiledRule, keys: frozenset[str], exact: dict, suffix: dict) -> None:
    for k in keys:
        if k.startswith(SUFFIX):
            suffix.setdefault(k[1:], []).append(rule)
        else:
            exact.setdefault(k, []).append(rule)


def _lookup(base: str, exact: dict, suffix: dict) -> list[CompiledRule]:
    """The rules filed under this basename, exactly or by an ending, each once."""
    found = exact.get(base, [])
    if suffix:
        extra = [r for end, rs in suffix.items() if base.endswith(end) for r in rs]
        if extra:  # a rule can be under both an exact name and an ending: evaluate it once
            found = list(dict.fromkeys(found + extra, None))
    return found


def _searcher(literals: set[str]) -> Callable[[str], Any]:
    """Whether any of the literals occurs in a text: `in` for one (most fields of the built-in
    pack have one: a flag's "true", a path prefix), else one trie regex search."""
    if len(literals) == 1:
        lit = next(iter(literals))
        return lambda text: lit in text
    return any_substring(literals)


def _literal_hit(value: str | int, search: Callable[[str], Any], seen: dict) -> str:
    """The value as lower-cased text when one of a field's strings occurs in it, else "":
    remembered per value, since most fields repeat from exec to exec (the executable, its
    directory, the parent's command line, a uid): a dictionary lookup instead of lower() and
    a search. Long texts (a hostile command line) are not kept; the memory is bounded and
    cleared when full."""
    low = value.lower() if value.__class__ is str else str(value)
    x = low if search(low) else ""
    if len(low) <= _SEEN_TEXT_MAX:
        if len(seen) >= _SEEN_TEXTS:
            seen.clear()
        seen[value] = x
    return x


def _holds(literals: frozenset[tuple[str, str]], hits: dict[str, str]) -> bool:
    for field, lit in literals:
        text = hits.get(field)
        if text is not None and lit in text:
            return True
    return False


def _matched(rule: CompiledRule, view: View) -> dict[str, object]:
    """The fields of the rule's positive leaves that are true on this event, with the event's
    values: what a responder needs to see why it fired."""
    out: dict[str, object] = {}
    for field, pred in rule.leaves:
        if field in out:
            continue
        try:
            if pred(view):
                out[field] = view.get(field) if field != "keywords" else view.get("CommandLine")
        except Exception:  # noqa: BLE001 - reporting must not lose the alert
            continue
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def _tuple(v):
    return tuple(v) if isinstance(v, list) else v
