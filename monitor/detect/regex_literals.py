"""Strings a regular expression cannot match without: the rule index for `re` leaves.

A rule whose only test is a regex on the command line (SigmaHQ's pnscan rule:
`-(W|R)( |")(([0-9a-fA-F]{2}) ){2,20}`) would otherwise be evaluated for every event. Reading
the regex's parse tree gives a set of strings one of which occurs in every text it matches
(`-w `, `-w"`, `-r `, `-r"` there), lower-cased, as compile.required_literals needs: the index
searches the lower-cased text. Sound, not complete: whatever this module cannot see through
(a character class too large to list, a back-reference, a repeat that may be absent) counts as
"any text", which only costs an evaluation.

Case. A case-sensitive match of ASCII literal characters is, lower-cased, a match of the
lower-cased literal. Non-ASCII literal characters count as "any text" (str.lower of some depends
on their neighbours). Under IGNORECASE, `i` and `s` also match `ı` (dotless i) and `ſ` (long s),
whose lower case is not ASCII: those letters count as "any text" there; `k` matching the Kelvin
sign is fine (it lower-cases to `k`).

The parser is CPython's own (re._parser; sre_parse before 3.11), so the tree is exactly what
re.compile builds from the same text.
"""
from __future__ import annotations

import re

try:  # Python >= 3.11
    from re import _constants as K
    from re import _parser as P
except ImportError:  # Python 3.10
    import sre_constants as K  # type: ignore[no-redef]
    import sre_parse as P  # type: ignore[no-redef]

_EXACT_MAX = 16  # distinct strings an exact part may expand to (a class or a branch, crossed)
_CLASS_MAX = 4  # characters a class [...] may have to count as exact
_MIN_LEN = 2  # shorter required strings occur in nearly every command line: not worth filing
_ICASE_UNSAFE = frozenset("is")
_REPEATS = tuple(op for op in (K.MAX_REPEAT, K.MIN_REPEAT, getattr(K, "POSSESSIVE_REPEAT", None))
                 if op is not None)
_ATOMIC = getattr(K, "ATOMIC_GROUP", None)

# What a part of the regex is known to match: (exact, required). exact: the set of strings it
# matches exactly (lower-cased), or None; required: a set one of which occurs in anything it
# matches, or None (anything).
_ANY = (None, None)


def regex_literals(pattern: str, flags: int = 0) -> frozenset[str] | None:
    """Lower-cased strings one of which occurs in every text `re.search(pattern, text, flags)`
    finds a match in; None when no such set of strings at least _MIN_LEN long is known."""
    try:
        tree = P.parse(pattern, flags)
    except (re.error, RecursionError, OverflowError):
        return None
    icase = bool((flags | tree.state.flags) & re.IGNORECASE)
    exact, required = _sequence(list(tree), icase)
    found = exact if exact is not None else required
    if not found or min(len(s) for s in found) < _MIN_LEN:
        return None
    return frozenset(found)


def _sequence(items: list, icase: bool) -> tuple[set[str] | None, set[str] | None]:
    """A concatenation: exact runs are crossed (bounded); each run that stops, and each inner
    required set, is a candidate; the candidate whose shortest string is longest wins."""
    current: set[str] = {""}
    candidates: list[set[str]] = []
    all_exact = True
    for op, av in items:
        exact, required = _node(op, av, icase)
        if exact is not None and len(current) * len(exact) <= _EXACT_MAX:
            current = {a + b for a in current for b in exact}
            continue
        if "" not in current:
            candidates.append(current)
        all_exact = False
        if exact is not None:  # too many to cross: start a new run with it
            current = set(exact)
            continue
        if required:
            candidates.append(required)
        current = {""}
    if all_exact:
        return current, current
    if "" not in current:
        candidates.append(current)
    candidates = [c for c in candidates if "" not in c]
    if not candidates:
        return _ANY
    return None, max(candidates, key=lambda c: (min(len(s) for s in c), -len(c)))


def _node(op, av, icase: bool) -> tuple[set[str] | None, set[str] | None]:
    if op is K.LITERAL:
        c = chr(av)
        if not c.isascii() or (icase and c.lower() in _ICASE_UNSAFE):
            return _ANY
        return {c.lower()}, None
    if op is K.IN:
        chars = set()
        for sub_op, sub_av in av:
            if sub_op is not K.LITERAL:  # a range, a category, a negation
                return _ANY
            exact, _ = _node(K.LITERAL, sub_av, icase)
            if exact is None:
                return _ANY
            chars |= exact
        return (chars, None) if 0 < len(chars) <= _CLASS_MAX else _ANY
    if op is K.AT:  # ^ $ \b \A \Z: match no characters
        return {""}, None
    if op is K.SUBPATTERN:
        _group, add_flags, _del_flags, sub = av
        return _sequence(list(sub), icase or bool(add_flags & re.IGNORECASE))
    if _ATOMIC is not None and op is _ATOMIC:
        return _sequence(list(av), icase)
    if op is K.BRANCH:
        parts = [_sequence(list(sub), icase) for sub in av[1]]
        if all(e is not None for e, _ in parts):
            union = set().union(*(e for e, _ in parts))
            if len(union) <= _EXACT_MAX:
                return union, None
        reqs = [e if e is not None else r for e, r in parts]
        if any(r is None or "" in r for r in reqs):
            return _ANY
        return None, set().union(*reqs)
    if op in _REPEATS:
        low, high, sub = av
        if low == 0:
            return _ANY
        exact, required = _sequence(list(sub), icase)
        if low == high == 1:
            return exact, required
        return None, (exact if exact is not None else required)
    return _ANY  # . \w [^x] back-references, look-arounds, conditionals
