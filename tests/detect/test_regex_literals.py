"""regex_literals: strings one of which occurs (lower-cased) in every text a regex finds a
match in. Sound above all: a wrong string would make the index skip a rule that matches."""
from __future__ import annotations

import random
import re

import pytest

from monitor.detect.regex_literals import regex_literals


@pytest.mark.parametrize("rx,flags,want", [
    ('-(W|R)( |")(([0-9a-fA-F]{2}) ){2,20}', 0, {"-w ", '-w"', "-r ", '-r"'}),  # crossed exact parts
    ("abc|def", 0, {"abc", "def"}),
    ("a[bc]d", 0, {"abd", "acd"}),
    ("^/tmp/", 0, {"/tmp/"}),  # anchors match no characters
    ("wget.*(http|ftp)", 0, {"wget"}),  # the run whose shortest string is longest
    ("(foo|ba.r)", 0, {"foo", "ba"}),  # a branch: each side's own required strings
    ("(?:ab){3}x", 0, {"ab"}),
    ("x+yz", 0, {"yz"}),
    ("ThIs", 0, {"this"}),  # case-sensitive: lower-casing keeps it a substring
    ("(?i)this", 0, {"th"}),  # `i` and `s` under IGNORECASE: see the next case
    ("Kelvin", re.IGNORECASE, {"kelv"}),
    ("a.b", 0, None), ("[a-z]+", 0, None), ("x?y*", 0, None), ("(ab|)c", 0, None),
    ("é+tude", 0, {"tude"}), ("(a)\\1", 0, None), ("ab(", 0, None)])
def test_required_strings(rx, flags, want):
    got = regex_literals(rx, flags)
    assert got == (frozenset(want) if want is not None else None)


def test_ignorecase_letters_whose_other_case_is_not_ascii():
    # Why `i` and `s` count as any character under IGNORECASE: they match these.
    assert re.search("(?i)kiss", "KıſS")
    assert regex_literals("(?i)kiss") is None


ALPHABET = "abiskAB-S K"
TEXT_ALPHABET = ALPHABET + "ıſKİ"


def _regex(rng: random.Random, depth: int = 0) -> str:
    out = []
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if depth > 2 or r < 0.45:
            atom = re.escape(rng.choice(ALPHABET))
        elif r < 0.55:
            atom = rng.choice(["[ab]", "[a-c]", "[iS]", ".", "\\w", "[^a]"])
        elif r < 0.65:
            atom = rng.choice(["^", "$", "\\b"])
        else:
            atom = "(" + "|".join(_regex(rng, depth + 1) for _ in range(rng.randint(1, 3))) + ")"
        if rng.random() < 0.15:
            atom += rng.choice(["?", "*", "+", "{2}", "{1,3}", "{0,2}", "+?"])
        out.append(atom)
    return "".join(out)


def test_sound_on_random_regexes_and_texts():
    """Every text a random regex matches contains one of its strings, lower-cased (fixed seed;
    the alphabet has the letters whose case is special)."""
    rng = random.Random(20261201)
    checked = 0
    for _ in range(10000):
        rx, flags = _regex(rng), rng.choice([0, re.IGNORECASE])
        lits = regex_literals(rx, flags)
        if lits is None:
            continue
        compiled = re.compile(rx, flags)
        for _ in range(60):
            text = "".join(rng.choice(TEXT_ALPHABET) for _ in range(rng.randint(0, 12)))
            if compiled.search(text):
                checked += 1
                low = text.lower()
                assert any(lit in low for lit in lits), (rx, flags, text, lits)
    assert checked > 1000  # the check ran on many matches, not a few
