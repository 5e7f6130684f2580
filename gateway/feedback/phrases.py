"""Phrase tables compiled once: ordered (class, name, pattern) rows -> the first row whose pattern
occurs in a text, as trying each row's ``re.search`` in order would find it, at a fraction of the cost.

    table = Table(rows)
    table.first(text) -> (class, name) | None

Why: a row is a long alternation ("no such user|user unknown|..."), and Python's regex engine tries
every alternative at every position of the text (about 200 ns a character for a row of 40). Each
row is split into its top-level alternatives, and each alternative is reduced to the literal
strings one of which any match must contain (its *needles*: "no such " for "no such (?:user|mailbox)").
All the needles of a table are found in one pass (one regex of the needles as a trie, tried at each
position in a lookahead: a test per position of the text, not per needle); only an alternative whose
needles occur in the text is searched, compiled on its own (a pattern that starts with a literal is
found by a fast scan). A needle in the text is only a hint: the alternative's regex still decides, so a match is
exactly what the row's pattern would match. An alternative without a needle is always searched.

Needles come from the regex parser's tree (``re._parser``). Only a LITERAL run, or a group,
alternation or repeat (at least once) whose every branch has needles, is taken; anything else
(classes, ``.``, lookarounds) gives none. Patterns must be case-sensitive (the tables are searched
in lower-cased text): a row compiled with re.I or an inline (?i) is refused. Without the private
parser (another Python), every alternative is simply searched: slower, never different.
"""

from __future__ import annotations

import re

try:
    from re import _constants as _C, _parser as _P
except ImportError:   # pragma: no cover - other Pythons: no prefilter, the same answers
    _C = _P = None


def alternatives(pattern: str) -> list[str]:
    """The top-level alternatives of a pattern: split at each '|' outside groups and classes."""
    out, depth, in_class, start, i = [], 0, False, 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern.startswith(("]", "^]"), i + 1):   # a ']' first in a class is a literal
                i += 2 if pattern[i + 1] == "]" else 3
                continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
        i += 1
    out.append(pattern[start:])
    return out


def _better(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    """Of two needle sets that both hold, the one whose shortest needle is longer (fewer false hints)."""
    if a is None or b is None:
        return a if b is None else b
    return a if min(map(len, a)) >= min(map(len, b)) else b


def _needles(sub) -> frozenset[str] | None:
    best, run = None, []
    for op, av in [*sub.data, (None, None)]:
        if op is _C.LITERAL:
            run.append(chr(av))
            continue
        if run:
            best = _better(best, frozenset(["".join(run)]))
            run = []
        found = None
        if op is _C.SUBPATTERN:
            if av[1] & re.IGNORECASE:
                raise ValueError("phrase patterns are case-sensitive (searched in lower-cased text)")
            found = _needles(av[3])
        elif op is _C.ATOMIC_GROUP:
            found = _needles(av)
        elif op is _C.BRANCH:
            branches = [_needles(b) for b in av[1]]
            found = None if any(b is None for b in branches) else frozenset().union(*branches)
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT, _C.POSSESSIVE_REPEAT) and av[0] >= 1:
            found = _needles(av[2])
        best = _better(best, found)
    return best


def needles(pattern: str) -> frozenset[str] | None:
    """Literal strings one of which every match of ``pattern`` contains, or None when none is known."""
    if _P is None:
        return None
    tree = _P.parse(pattern)
    if tree.state.flags & re.IGNORECASE:
        raise ValueError("phrase patterns are case-sensitive (searched in lower-cased text)")
    return _needles(tree)


def _trie(words: tuple[str, ...]) -> str:
    """A regex matching the longest of ``words`` at a position: "ab", "abc", "b" -> (?:ab(?:c)?|b)."""
    root: dict = {}
    for w in words:
        node = root
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict) -> str:
        branches = [re.escape(ch) + build(node[ch]) for ch in sorted(k for k in node if k)]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        return f"(?:{body})?" if "" in node else body

    return build(root)


class Table:
    """Ordered rows (class, name, pattern); the first row that matches wins."""

    def __init__(self, rows: list[tuple[str, str, str]]):
        self.alternatives: list[tuple[re.Pattern[str], str, str]] = []   # in table order
        by_needle: dict[str, list[int]] = {}
        always = []
        for kind, name, pattern in rows:
            for alt in alternatives(pattern):
                found = needles(alt)
                for n in found or ():
                    by_needle.setdefault(n, []).append(len(self.alternatives))
                if found is None:
                    always.append(len(self.alternatives))
                self.alternatives.append((re.compile(alt), kind, name))
        self.needles = tuple(sorted(by_needle))
        self.always = tuple(always)
        # At a position the scan reports the longest needle there; the shorter ones there are its prefixes.
        self.ids = {n: frozenset(i for m in self.needles if n.startswith(m) for i in by_needle[m]) for n in self.needles}
        self.scan = re.compile(f"(?=({_trie(self.needles)}))") if self.needles else None

    def first(self, text: str) -> tuple[str, str] | None:
        """(class, name) of the first row with a match in ``text``."""
        candidates = set(self.always)
        if self.scan is not None:
            for n in self.scan.findall(text):
                candidates.update(self.ids[n])
        for i in sorted(candidates):   # table order: the first row still wins
            rx, kind, name = self.alternatives[i]
            if rx.search(text):
                return kind, name
        return None
