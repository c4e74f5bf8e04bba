"""Compile a pySigma condition tree into a Python predicate over a fields.View.

pySigma has already parsed the YAML, resolved `1 of`/`all of`, identifiers and parentheses,
and applied the value modifiers at the leaves (contains/startswith/endswith became wildcards in
a SigmaString, `all` became AND, `re` a SigmaRegularExpression, `cidr` a SigmaCIDRExpression,
`windash`/`base64offset` a SigmaExpansion...). What is left is a tree of ConditionAND/OR/NOT
over ConditionFieldEqualsValueExpression and ConditionValueExpression leaves; this module turns
each node into a closure once, at load time, so evaluating a rule is calls, not interpretation.

The classes and attributes used here exist under the same names in pySigma 1.x (what pip
resolves on Python 3.10) and 2.x; see README.md "pySigma versions".

Semantics (Sigma's, as pySigma's backends implement them):
  * strings: case-insensitive, `*` any run of characters (newlines included), `?` one character;
    SigmaCasedString (`cased`) is case-sensitive;
  * `re`: Python `re.search` (unanchored), case-sensitive unless the `i` sub-modifier is given;
  * lists in a rule are OR unless `all`; a list-valued field (argv, ancestry.exe) matches when
    any element does;
  * null: the field is absent or null; `exists`: it is present and not null;
  * keywords (a value with no field) search CommandLine, Image and CurrentDirectory, as
    substrings, since procsentry has no raw log line.
"""
from __future__ import annotations

import ipaddress
import operator
import re
from typing import Any, Callable

from sigma import conditions as C
from sigma import types as T

from monitor.detect.fields import MISSING, View
from monitor.detect.linear import glob_test, regex_search, wildcard_fullmatch
from monitor.detect.regex_literals import regex_literals

Pred = Callable[[View], bool]

KEYWORD_FIELDS = ("CommandLine", "Image", "CurrentDirectory")
IMAGE_FIELDS = ("Image", "exe")
PARENT_IMAGE_FIELDS = ("ParentImage", "parent.exe")
SUFFIX = "\x00"  # an index key for "the basename ends with": SUFFIX + the ending


class Unsupported(Exception):
    """A rule uses something this compiler cannot evaluate; the rule is skipped with this reason."""


def compile_condition(node) -> tuple[Pred, list[tuple[str, Pred]]]:
    """(predicate, positive leaves): the leaves not under a NOT, to report what matched."""
    leaves: list[tuple[str, Pred]] = []
    return _node(node, leaves, False), leaves


def fields_of(node) -> frozenset[str]:
    """Every field the condition reads, under a NOT or not (keywords: KEYWORD_FIELDS; the
    field a `fieldref` value names)."""
    if isinstance(node, C.ConditionFieldEqualsValueExpression):
        if isinstance(node.value, T.SigmaFieldReference):
            return frozenset((node.field, node.value.field))
        return frozenset((node.field,))
    if isinstance(node, C.ConditionValueExpression):
        return frozenset(KEYWORD_FIELDS)
    return frozenset().union(*(fields_of(a) for a in getattr(node, "args", ())))


def _node(node, leaves: list, negated: bool) -> Pred:
    if isinstance(node, C.ConditionAND):
        parts = [_node(a, leaves, negated) for a in node.args]
        if len(parts) == 2:
            a, b = parts
            return lambda v: a(v) and b(v)

        def all_of(v: View) -> bool:  # a loop, not all(genexpr): no generator per call
            for p in parts:
                if not p(v):
                    return False
            return True
        return all_of
    if isinstance(node, C.ConditionOR):
        # A value list (`Image|endswith: [/a, /b, ...]`) arrives as an OR of one leaf per
        # value; SigmaHQ's lists run to dozens of values. The string values of one field are
        # merged into one predicate that reads the field once (str.endswith takes a tuple).
        groups: dict[str, list] = {}
        rest = []
        for a in node.args:
            if (isinstance(a, C.ConditionFieldEqualsValueExpression) and type(a.value) is T.SigmaString
                    and all(isinstance(p, (str, T.SpecialChars)) for p in a.value.s)):
                groups.setdefault(a.field, []).append(a.value)
            else:
                rest.append(a)
        parts = []
        for field, values in groups.items():
            pred = _lower_text(field, _merged_test(values))
            if not negated:
                leaves.append((field, pred))
            parts.append(pred)
        parts += [_node(a, leaves, negated) for a in rest]
        if len(parts) == 1:
            return parts[0]
        if len(parts) == 2:
            a, b = parts
            return lambda v: a(v) or b(v)

        def any_of(v: View) -> bool:
            for p in parts:
                if p(v):
                    return True
            return False
        return any_of
    if isinstance(node, C.ConditionNOT):
        (inner,) = [_node(a, leaves, not negated) for a in node.args]
        return lambda v: not inner(v)
    if isinstance(node, C.ConditionFieldEqualsValueExpression):
        pred = _field_value(node.field, node.value)
        if not negated:
            leaves.append((node.field, pred))
        return pred
    if isinstance(node, C.ConditionValueExpression):
        pred = _keyword(node.value)
        if not negated:
            leaves.append(("keywords", pred))
        return pred
    raise Unsupported(f"condition element {type(node).__name__}")


# -- leaves --------------------------------------------------------------------------------------
def _lower_text(field: str, test: Callable[[str], bool]) -> Pred:
    """test() on the field's lower-cased text (any element of a list field). The hot path of
    almost every SigmaHQ leaf, so it reads View's cache directly instead of through calls."""
    def pred(v: View) -> bool:
        x = v._lower.get(field, MISSING)
        if x is MISSING:
            x = v.lower(field)
        if x is None:
            return False
        if x.__class__ is str:
            return test(x)
        for e in x:
            if test(e):
                return True
        return False
    return pred


def _any_text(get: Callable[[View], Any], test: Callable[[str], bool]) -> Pred:
    """test() on the field's text, or on any element of a list field; absent never matches."""
    def pred(v: View) -> bool:
        x = get(v)
        if x is None:
            return False
        if isinstance(x, str):
            return test(x)
        return any(test(e) for e in x)
    return pred


def string_test(s: T.SigmaString, cased: bool) -> Callable[[str], bool]:
    """A test on (lower-cased unless cased) text for a SigmaString with wildcards."""
    parts = list(s.s)
    for p in parts:
        if not isinstance(p, (str, T.SpecialChars)):
            raise Unsupported(f"placeholder {p!r} in a value (needs a processing pipeline)")
    fold = (lambda x: x) if cased else str.lower
    multi, single = T.SpecialChars.WILDCARD_MULTI, T.SpecialChars.WILDCARD_SINGLE
    plain = [p for p in parts if isinstance(p, str)]
    shape = tuple("s" if isinstance(p, str) else ("*" if p is multi else "?") for p in parts)
    # The shapes SigmaHQ uses almost exclusively get str methods; the rest get a regex.
    if shape == ("s",):
        lit = fold(plain[0])
        return lambda x: x == lit
    if shape == ("*", "s"):
        lit = fold(plain[0])
        return lambda x: x.endswith(lit)
    if shape == ("s", "*"):
        lit = fold(plain[0])
        return lambda x: x.startswith(lit)
    if shape == ("*", "s", "*"):
        lit = fold(plain[0])
        return lambda x: lit in x
    if shape in (("*",), ()):
        if not shape:
            return lambda x: x == ""
        return lambda x: True
    # Any other shape, in time linear in the text (monitor/detect/linear.py): `*` alone by
    # finding the literals in turn, with `?` by RE2.
    if single not in parts:
        return glob_test([fold(p) if isinstance(p, str) else None for p in parts])
    return wildcard_fullmatch("".join(re.escape(fold(p)) if isinstance(p, str) else
                                      (".*" if p is multi else ".") for p in parts))


def _merged_test(values: list) -> Callable[[str], bool]:
    """One case-insensitive test for several SigmaStrings of a field, OR-ed."""
    eq: set[str] = set()
    ends: list[str] = []
    starts: list[str] = []
    contains: list[str] = []
    others: list[Callable[[str], bool]] = []
    multi = T.SpecialChars.WILDCARD_MULTI
    for v in values:
        parts = list(v.s)
        shape = tuple("s" if isinstance(p, str) else ("*" if p is multi else "?") for p in parts)
        if shape == ("s",):
            eq.add(parts[0].lower())
        elif shape == ("*", "s"):
            ends.append(parts[1].lower())
        elif shape == ("s", "*"):
            starts.append(parts[0].lower())
        elif shape == ("*", "s", "*"):
            contains.append(parts[1].lower())
        else:
            others.append(string_test(v, False))
    ends_t, starts_t = tuple(ends), tuple(starts)

    def test(x: str) -> bool:
        if x in eq or (ends_t and x.endswith(ends_t)) or (starts_t and x.startswith(starts_t)):
            return True
        for c in contains:
            if c in x:
                return True
        for o in others:
            if o(x):
                return True
        return False
    return test


def _field_value(field: str, value) -> Pred:
    if isinstance(value, T.SigmaExpansion):
        subs = [_field_value(field, x) for x in value.values]
        return lambda v: any(p(v) for p in subs)
    if isinstance(value, T.SigmaString):  # SigmaCasedString is a subclass
        cased = isinstance(value, T.SigmaCasedString)
        test = string_test(value, cased)
        if cased:
            return _any_text(lambda v: v.text(field), test)
        return _lower_text(field, test)
    if isinstance(value, T.SigmaRegularExpression):
        try:
            found = regex_search(_regex_text(value), _regex_flags(value))
        except re.error as e:
            raise Unsupported(f"regular expression not valid in Python: {e}") from None
        return _any_text(lambda v: v.text(field), found)
    if isinstance(value, T.SigmaBool):  # before SigmaNumber: not a subclass, but be explicit
        want = bool(value.boolean)
        return lambda v: _eq_bool(v.get(field), want)
    if isinstance(value, T.SigmaNumber) and type(value) is T.SigmaNumber:
        n = value.number
        text = str(n)
        return lambda v: _eq_number(v.get(field), n, text)
    if isinstance(value, T.SigmaNull):
        return lambda v: v.get(field) is None
    if isinstance(value, T.SigmaExists):
        want = bool(value.exists)
        return lambda v: (v.get(field) is not None) == want
    if isinstance(value, T.SigmaCIDRExpression):
        net = ipaddress.ip_network(value.cidr, strict=False)
        return _any_text(lambda v: v.text(field), lambda x: _in_network(x, net))
    if isinstance(value, T.SigmaCompareExpression):
        op = {"LT": operator.lt, "LTE": operator.le, "GT": operator.gt, "GTE": operator.ge,
              "NEQ": operator.ne}.get(value.op.name)
        if op is None:
            raise Unsupported(f"comparison {value.op.name}")
        n = value.number.number
        return lambda v: _compare(v.get(field), op, n)
    if isinstance(value, T.SigmaFieldReference):
        other = value.field
        sw, ew = getattr(value, "starts_with", False), getattr(value, "ends_with", False)
        return lambda v: _fieldref(v.lower(field), v.lower(other), sw, ew)
    raise Unsupported(f"value type {type(value).__name__} on field {field}")


def _keyword(value) -> Pred:
    if isinstance(value, T.SigmaExpansion):
        subs = [_keyword(x) for x in value.values]
        return lambda v: any(p(v) for p in subs)
    if isinstance(value, T.SigmaString):
        # A keyword is a full-text search: implicitly a substring, unless the rule anchors it.
        s = value
        if not s.startswith(T.SpecialChars.WILDCARD_MULTI):
            s = T.SpecialChars.WILDCARD_MULTI + s
        if not s.endswith(T.SpecialChars.WILDCARD_MULTI):
            s = s + T.SpecialChars.WILDCARD_MULTI
        cased = isinstance(value, T.SigmaCasedString)
        test = string_test(s, cased)
        gets = [(lambda v, f=f: v.text(f)) if cased else (lambda v, f=f: v.lower(f))
                for f in KEYWORD_FIELDS]
        preds = [_any_text(g, test) for g in gets]
        return lambda v: any(p(v) for p in preds)
    if isinstance(value, T.SigmaRegularExpression):
        found = regex_search(_regex_text(value), _regex_flags(value))
        return lambda v: any(t is not None and found(t) for t in (v.text(f) for f in KEYWORD_FIELDS))
    raise Unsupported(f"keyword of type {type(value).__name__}")


def _regex_flags(value) -> int:
    flags = 0
    for f in getattr(value, "flags", ()):
        flags |= T.SigmaRegularExpression.sigma_to_python_flags[f]
    return flags


def _regex_text(value) -> str:
    r = value.regexp
    return _unwrapped(r if isinstance(r, str) else r.to_plain())


def _unwrapped(rx: str) -> str:
    """The regex without a leading and a trailing `.*`, which SigmaHQ's rules often write
    (`'.*(-(W|R)( |")...).*'`). For re.search, whose only use here is whether it finds a match,
    they change nothing (`.*` may match empty), but a leading `.*` makes the search retry every
    start position against the rest of the line: on one such SigmaHQ rule, ~1 ms per event on
    ordinary command lines, and quadratic in a long, hostile one."""
    while rx.startswith(".*") and not rx.startswith((".*?", ".*+", ".**", ".*{")):
        rx = rx[2:]
    while rx.endswith(".*") and not _escaped(rx, len(rx) - 2):
        rx = rx[:-2]
    return rx


def _escaped(rx: str, i: int) -> bool:
    """Whether rx[i] is escaped (an odd number of backslashes before it)."""
    n = 0
    while i - n - 1 >= 0 and rx[i - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def _eq_bool(x: Any, want: bool) -> bool:
    if isinstance(x, bool):
        return x is want
    if isinstance(x, str):
        return x.lower() == ("true" if want else "false")
    return False


def _eq_number(x: Any, n, text: str) -> bool:
    if x is None or isinstance(x, bool):
        return False
    if isinstance(x, (int, float)):
        return x == n
    if isinstance(x, str):
        return x == text
    if isinstance(x, (list, tuple)):
        return any(_eq_number(e, n, text) for e in x)
    return False


def _compare(x: Any, op, n) -> bool:
    if isinstance(x, str):
        try:
            x = float(x)
        except ValueError:
            return False
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    return op(x, n)


def _in_network(x: str, net) -> bool:
    try:
        return ipaddress.ip_address(x) in net
    except ValueError:
        pass
    host = x.rsplit(":", 1)[0].strip("[]")  # "10.0.0.1:443", "[::1]:22": procsentry's sockets
    try:
        return ipaddress.ip_address(host) in net
    except ValueError:
        return False


def _fieldref(a, b, starts: bool, ends: bool) -> bool:
    if a is None or b is None or isinstance(a, tuple) or isinstance(b, tuple):
        return False
    if starts:
        return a.startswith(b)
    if ends:
        return a.endswith(b)
    return a == b


# -- index ---------------------------------------------------------------------------------------
def required_basenames(node, fields: tuple[str, ...] = IMAGE_FIELDS) -> frozenset[str] | None:
    """Lower-cased executable basenames one of which the event's Image must have for the
    condition to be true (or, prefixed with SUFFIX, endings of the basename), or None when
    the condition does not constrain Image that way.
    Sound, not complete: None only costs evaluations, a wrong set would lose alerts."""
    if isinstance(node, C.ConditionAND):
        sets = [s for s in (required_basenames(a, fields) for a in node.args) if s is not None]
        return min(sets, key=len) if sets else None
    if isinstance(node, C.ConditionOR):
        sets = [required_basenames(a, fields) for a in node.args]
        if not sets or any(s is None for s in sets):
            return None
        return frozenset().union(*sets)
    if isinstance(node, C.ConditionFieldEqualsValueExpression) and node.field in fields:
        return _image_basename(node.value)
    return None


def _image_basename(value) -> frozenset[str] | None:
    if isinstance(value, T.SigmaExpansion):
        sets = [_image_basename(x) for x in value.values]
        return None if any(s is None for s in sets) else frozenset().union(*sets)
    if not isinstance(value, T.SigmaString):
        return None
    parts = list(value.s)
    if len(parts) == 2 and parts[0] is T.SpecialChars.WILDCARD_MULTI and isinstance(parts[1], str):
        tail = parts[1]
        if "/" in tail:  # endswith '/name' or '/bin/name': the basename is exactly name
            base = tail.rsplit("/", 1)[1]
            return frozenset((base.lower(),)) if base else None
        if tail:  # endswith 'name' (no slash): the basename ends with it
            return frozenset((SUFFIX + tail.lower(),))
        return None
    if len(parts) == 1 and isinstance(parts[0], str) and parts[0].startswith("/"):
        base = parts[0].rsplit("/", 1)[1]
        return frozenset((base.lower(),)) if base else None
    return None


def required_literals(node) -> frozenset[tuple[str, str]] | None:
    """(field, lower-cased string) pairs one of which must hold, the string occurring in the
    field's lower-cased text (in one element of a list field), for the condition to be true;
    None when the condition does not require that. The index for rules that name no
    executable (most of them test only the command line; the built-in pack's test flags such
    as exe_fileless or a path prefix): per field, one regex search finds whether any of the
    strings occurs at all (for most events none does), and only the rules whose string occurs
    are evaluated. Sound, not complete, like required_basenames."""
    if isinstance(node, C.ConditionAND):
        sets = [s for s in (required_literals(a) for a in node.args) if s is not None]
        # Any one child's set is sound; the one with the longest shortest string rejects most.
        return max(sets, key=lambda s: (min(len(lit) for _, lit in s), -len(s))) if sets else None
    if isinstance(node, C.ConditionOR):
        sets = [required_literals(a) for a in node.args]
        if not sets or any(s is None for s in sets):
            return None
        return frozenset().union(*sets)
    if isinstance(node, C.ConditionFieldEqualsValueExpression):
        lits = _literal(node.value)
        return None if lits is None else frozenset((node.field, lit) for lit in lits)
    if isinstance(node, C.ConditionValueExpression):  # keywords: a substring of any of these
        lits = _literal(node.value)
        return None if lits is None else frozenset((f, lit) for f in KEYWORD_FIELDS for lit in lits)
    return None


def _literal(value) -> frozenset[str] | None:
    """Strings one of which occurs in the lower-cased text (View.lower) of any value the leaf
    is true for."""
    if isinstance(value, T.SigmaExpansion):
        sets = [_literal(x) for x in value.values]
        return None if not sets or any(s is None for s in sets) else frozenset().union(*sets)
    if isinstance(value, T.SigmaBool):  # View.lower shows booleans as true/false
        return frozenset(("true" if value.boolean else "false",))
    if isinstance(value, T.SigmaNumber) and type(value) is T.SigmaNumber:
        return frozenset((str(value.number).lower(),))  # 0 matches 0 and "0"; 0.0 contains it
    if isinstance(value, T.SigmaRegularExpression):
        return regex_literals(_regex_text(value), _regex_flags(value))
    if not isinstance(value, T.SigmaString):
        return None
    plain = [p for p in value.s if isinstance(p, str)]
    if any(not isinstance(p, (str, T.SpecialChars)) for p in value.s) or not plain:
        return None
    lit = max(plain, key=len)
    # A case-sensitive (`cased`) value is tested on the original text; lower-casing keeps it a
    # substring only per character, which holds for ASCII (str.lower of a Greek capital sigma
    # depends on its neighbours).
    if isinstance(value, T.SigmaCasedString) and not lit.isascii():
        return None
    return frozenset((lit.lower(),)) if lit else None


def any_substring(literals) -> Callable[[str], Any]:
    """search() of a regex that finds whether any of the literals occurs: the literals as a
    trie, so the regex tries one branch per distinct next character instead of every literal
    at every position (re does not factor common prefixes of an alternation itself)."""
    trie: dict = {}
    for lit in literals:
        node = trie
        for ch in lit:
            node = node.setdefault(ch, {})
        node[""] = {}  # end of a literal: a shorter literal already matches, stop there

    def pattern(node: dict) -> str:
        if "" in node:
            return ""
        alts = [re.escape(ch) + pattern(child) for ch, child in sorted(node.items())]
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    return re.compile(pattern(trie), re.DOTALL).search
