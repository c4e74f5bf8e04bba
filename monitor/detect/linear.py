"""Matching whose cost is linear in the command line, whatever the rule's pattern.

The command lines are the attacker's; the patterns are the operator's rules. Python's `re`
backtracks: `CommandLine|re: 'a.*a.*b'` took 0.86 s on a 2,000-character command line and
7.2 s on 4,000 here (cubic), so one crafted exec could stall detection for every process after
it. So:

* a Sigma wildcard value (`*` and `?`) is matched without a regex when it has no `?` (segments
  found in order with str.find: exact, and linear), and with RE2 otherwise;
* a `|re` value is compiled with RE2 (google-re2: linear time, by construction). RE2 has no
  lookaround and no backreferences; a pattern that needs them is compiled with Python's `re`,
  and named in a warning at start, since a crafted command line can make it slow.

RE2 costs ~3.7 us per search here against ~0.1 us for `re` on an ordinary command line; rules
are evaluated only for the events their index admits (monitor/detect/engine.py).
"""
from __future__ import annotations

import logging
import re
from typing import Callable

try:
    import re2
except ImportError:  # an install without google-re2 (pyproject pulls it in everywhere)
    re2 = None

log = logging.getLogger("procsentry.detect")

Test = Callable[[str], bool]

_INLINE = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"))


def glob_test(parts: list[str | None]) -> Test:
    """Whole-string match of a wildcard pattern: parts are literal strings, None for `*`.
    The first literal must start the string, the last end it, the rest appear in order
    between them; taking each at its leftmost place leaves the most room for the next, so
    finding them in turn decides the match."""
    segments: list[str] = [""]
    for p in parts:
        if p is None:
            segments.append("")
        else:
            segments[-1] += p
    if len(segments) == 1:
        lit = segments[0]
        return lambda x: x == lit
    head, middle, tail = segments[0], [s for s in segments[1:-1] if s], segments[-1]
    least = len(head) + len(tail)

    def test(x: str) -> bool:
        if len(x) < least or not x.startswith(head) or not x.endswith(tail):
            return False
        at, end = len(head), len(x) - len(tail)
        for s in middle:
            i = x.find(s, at, end)
            if i < 0:
                return False
            at = i + len(s)
        return True
    return test


def _backtracking_only(pattern: str, flags: int) -> bool:
    """Whether the pattern uses what only a backtracking engine has (lookaround,
    backreferences, conditionals): asked of Python's own parser, so RE2 is never handed a
    pattern it would reject (its rejections are logged by the library itself, on stderr)."""
    try:
        from re import _parser as sre_parse  # 3.11+
    except ImportError:  # 3.10
        import sre_parse  # type: ignore[no-redef]
    needs = {sre_parse.ASSERT, sre_parse.ASSERT_NOT, sre_parse.GROUPREF, sre_parse.GROUPREF_EXISTS}

    def walk(items) -> bool:
        for op, av in items:
            if op in needs:
                return True
            for sub in (av if isinstance(av, (list, tuple)) else (av,)):
                if isinstance(sub, sre_parse.SubPattern) and walk(sub):
                    return True
                if isinstance(sub, (list, tuple)) and any(
                        isinstance(s, sre_parse.SubPattern) and walk(s) for s in sub):
                    return True
        return False
    return walk(sre_parse.parse(pattern, flags))


# Python's \d, \w and \s on a str are Unicode (str.isdecimal, str.isalnum or "_", str.isspace);
# RE2's are ASCII ([0-9], [0-9A-Za-z_], [\t\n\f\r ]). Handed to RE2 as written, `xmr\w+\s+--url`
# would miss `xmrÄig --url` and `xmrig\v--url`, which Python's re (the documented semantics)
# finds. So each becomes an explicit class of the code points Python's own tests accept.
_CLASS_TESTS = {"d": str.isdecimal, "w": lambda c: c.isalnum() or c == "_", "s": str.isspace}
_CLASS_RANGES: dict[str, str] = {}


def _ranges(letter: str) -> str:
    r"""The inside of an RE2 character class for Python's \<letter> (\D, \W, \S: the complement),
    surrogates left out (RE2 matches UTF-8: a text with one is never handed to it)."""
    got = _CLASS_RANGES.get(letter)
    if got is None:
        test, negate = _CLASS_TESTS[letter.lower()], letter.isupper()
        spans, start = [], None
        for cp in range(0x110000):
            inside = (0xD800 <= cp <= 0xDFFF) is False and bool(test(chr(cp))) != negate
            if inside and start is None:
                start = cp
            elif not inside and start is not None:
                spans.append((start, cp - 1))
                start = None
        if start is not None:
            spans.append((start, 0x10FFFF))
        got = _CLASS_RANGES[letter] = "".join(
            f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in spans)
    return got


def _for_re2(pattern: str, multiline: bool) -> str:
    r"""The pattern with Python's meaning, for RE2, in one pass over it:

    * \d \D \w \W \s \S as Python's (Unicode) classes: outside a character class as a class of
      their own, inside one as its ranges (a negated letter: the complement's);
    * without MULTILINE, `$` outside a character class as `(?:\n?$)`: Python's `$` also matches
      before a final newline, RE2's only at the end, so appending a newline to the last
      argument would slip past a rule ending in `$`; this finds the same matches."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            esc = pattern[i + 1:i + 2]
            if esc and esc in "dDwWsS":
                out.append(_ranges(esc) if in_class else f"[{_ranges(esc)}]")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "]" and not (out[-1] == "[" or out[-1] == "[^"):
                in_class = False
            out.append(c)
        elif c == "[":
            in_class = True
            if pattern.startswith("[^", i):
                out.append("[^")
                i += 2
                continue
            out.append("[")
        elif c == "$" and not multiline:
            out.append("(?:\\n?$)")
        else:
            out.append(c)
        i += 1
    return "".join(out)


def regex_search(pattern: str, flags: int) -> Test:
    """re.search(pattern, x, flags) is not None, in linear time when RE2 can express it.
    Raises re.error for a pattern Python rejects (the rule is then skipped)."""
    compiled = re.compile(pattern, flags)  # Python's verdict on validity, and the fallback
    if re2 is not None and not _backtracking_only(pattern, flags):
        inline = "".join(c for f, c in _INLINE if flags & f)
        rx = _for_re2(pattern, bool(flags & re.MULTILINE))
        try:
            search = re2.compile(f"(?{inline}){rx}" if inline else rx).search
        except re2.error:
            pass
        else:
            return lambda x: search(x) is not None
    log.warning("regex %r evaluated with Python's backtracking re (%s): a crafted command line "
                "can make it slow", pattern,
                "RE2 is not installed" if re2 is None else "RE2 cannot express it")
    search_bt = compiled.search
    return lambda x: search_bt(x) is not None


def wildcard_fullmatch(pattern: str) -> Test:
    """Whole-string match of a regex built from a wildcard value with `?` (DOTALL)."""
    if re2 is not None:
        full = re2.compile(f"(?s){pattern}").fullmatch
        return lambda x: full(x) is not None
    log.warning("wildcard value %r evaluated with Python's backtracking re (RE2 is not "
                "installed): a crafted command line can make it slow", pattern)
    m = re.compile(pattern, re.DOTALL).fullmatch
    return lambda x: m(x) is not None
