"""What a regular expression's parse tree says about where its matches can start, for searches
that try a pattern only where it can match (gateway/inbound/reply.py: the signature search).

The trees are the stdlib's own reading of a pattern (``re._parser``, Python 3.11+). Every function
answers conservatively: a shape it does not understand gives None or False, and the caller then
tries the pattern everywhere, as ``re.search`` would. Case equivalents are asked of the regex engine
itself with the pattern's flags, never guessed.
"""

from __future__ import annotations

import functools
import re

HEAD = 3                    # characters of a line compared with the beginnings a pattern can have
MAX_HEADS = 65536           # line beginnings whose answer is kept
_ASCII = "".join(map(chr, range(128)))


class LineHeads:
    """Which whitespace runs a pattern of ``line_heads``'s shape can match in: one holding a blank
    line (its ``\\n{2,}`` alternative), or one ending at a line start whose first ``HEAD`` characters
    can begin one of its other alternatives (``\\s*`` or a lookbehind, then ``^``, then content that
    never begins with whitespace). ``open``: ASCII beginnings after which anything may follow;
    ``full``: ASCII beginnings of ``HEAD`` characters; ``viable``: every prefix of either. A
    non-ASCII character met on a viable prefix is always tried (case folding outside ASCII is left to
    the pattern itself)."""

    def __init__(self, open_: frozenset[str], full: frozenset[str], blank_lines: bool):
        self.open = open_
        self.full = full
        self.viable = frozenset(h[:i] for h in open_ | full for i in range(len(h) + 1))
        self.blank_lines = blank_lines
        self._heads: dict[str, bool] = {}

    def may_start(self, text: str, run: int, end: int) -> bool:
        """Whether a match can start in ``text[run:end]`` (whitespace, ``end`` its first non-space)."""
        if self.blank_lines and text.find("\n\n", run, end) >= 0:
            return True
        if end >= len(text) or (end and text[end - 1] != "\n"):
            return False   # no content after the run, or the run ends inside a line: no ^ before content
        return self.head(text[end:end + HEAD])

    def head(self, head: str) -> bool:
        """Whether a line beginning with ``head`` (its first ``HEAD`` characters, the first not
        whitespace) can begin a match; the answers are kept (a few hundred distinct heads)."""
        known = self._heads.get(head)
        if known is None:
            known = self._head(head)
            if len(self._heads) < MAX_HEADS:
                self._heads[head] = known
        return known

    def _head(self, head: str) -> bool:
        if head in self.full:
            return True
        for i in range(len(head)):
            prefix = head[:i]
            if prefix in self.open:
                return True
            if prefix not in self.viable:
                return False
            if head[i] > "\x7f":
                return True
        return head in self.open


def line_heads(seq: list | None, flags: int) -> LineHeads | None:
    """For a pattern that is (inside groups, and followed by anything) a choice of alternatives each
    either ``\\s*^X``, ``(?<!...)^X`` or ``\\n{2,}...``, where no X can match empty or begin with
    whitespace: the ASCII beginnings an X can have (``LineHeads``), each character's case
    equivalents asked of the regex engine with the pattern's flags. None for any other shape."""
    try:
        from re._constants import ASSERT_NOT, AT, BRANCH, CATEGORY, CATEGORY_SPACE, IN, LITERAL, MAX_REPEAT, MIN_REPEAT, SUBPATTERN
        while seq and seq[0][0] is SUBPATTERN:   # the groups around the choice
            seq = list(seq[0][1][3])
        if not seq or seq[0][0] is not BRANCH:
            return None
        heads: set[tuple[tuple[int, ...], bool]] = set()
        blank = False
        for alt in seq[0][1][1]:
            alt = list(alt)
            if alt and alt[0][0] is SUBPATTERN:   # (\n{2,} ...)
                alt = list(alt[0][1][3])
            if not alt:
                return None
            op, av = alt[0]
            if op is MAX_REPEAT and av[0] >= 2 and list(av[2]) == [(LITERAL, 10)]:
                blank = True
                continue
            if op in (MAX_REPEAT, MIN_REPEAT) and list(av[2]) == [(IN, [(CATEGORY, CATEGORY_SPACE)])]:
                pass
            elif op is not ASSERT_NOT or av[0] != -1:
                return None
            if len(alt) < 2 or alt[1][0] is not AT or str(alt[1][1]) not in ("AT_BEGINNING", "AT_BEGINNING_LINE"):
                return None
            found = beginnings(alt[2:], HEAD)
            if found is None:
                return None
            heads |= found
        case = flags & (re.IGNORECASE | re.ASCII)
        # The ASCII characters the pattern's literal c matches: the engine asked once per literal.
        ascii_of = functools.lru_cache(maxsize=None)(lambda c: tuple(re.findall(re.escape(chr(c)), _ASCII, case)))
        open_: set[str] = set()
        full: set[str] = set()
        for h, _ in heads:
            if not h:
                return None   # X can match empty, or is unknown from its first character on
            if chr(h[0]).isspace() or any(a.isspace() for a in ascii_of(h[0])):
                return None   # content beginning with whitespace: the run test would be wrong
            spelled = [""]
            for c in h:
                spelled = [w + a for w in spelled for a in ascii_of(c)]
            (full if len(h) == HEAD else open_).update(spelled)
            # A beginning with a non-ASCII character: its ASCII part stays viable (the text's
            # character there is then non-ASCII too, and tried).
            for i, c in enumerate(h):
                if not ascii_of(c):
                    part = [""]
                    for d in h[:i]:
                        part = [w + a for w in part for a in ascii_of(d)]
                    full.update(w + "\x80" * (HEAD - i) for w in part)   # never equal to a text head
                    break
        return LineHeads(frozenset(open_), frozenset(full), blank)
    except Exception:  # noqa: BLE001 - a shape not understood: every line is tried
        return None


def beginnings(seq: list, k: int) -> set[tuple[tuple[int, ...], bool]] | None:
    """The first ``k`` code points a match of the parsed ``seq`` can begin with: pairs (prefix,
    complete), where a prefix shorter than ``k`` that is not complete means anything may follow it
    (``.``, a category, the end of what is known). None when too many to list."""
    from re._constants import ASSERT, ASSERT_NOT, AT, BRANCH, IN, LITERAL, MAX_REPEAT, MIN_REPEAT, RANGE, SUBPATTERN
    out: set[tuple[tuple[int, ...], bool]] = {((), True)}
    for op, av in seq:
        if op is LITERAL:
            item = {((av,), True)}
        elif op is IN:
            chars: list[int] = []
            for o, a in av:
                if o is LITERAL:
                    chars.append(a)
                elif o is RANGE and a[1] - a[0] < 64:
                    chars.extend(range(a[0], a[1] + 1))
                else:
                    chars = []
                    break
            item = {((c,), True) for c in chars} if chars else {((), False)}
        elif op is SUBPATTERN:
            item = beginnings(list(av[3]), k)
        elif op is BRANCH:
            item = set()
            for alt in av[1]:
                got = beginnings(list(alt), k)
                if got is None:
                    return None
                item |= got
        elif op in (MAX_REPEAT, MIN_REPEAT):
            body = beginnings(list(av[2]), k)
            if body is None:
                return None
            item = {((), True)} if av[0] == 0 else set()
            reps: set[tuple[tuple[int, ...], bool]] = {((), True)}
            for n in range(1, min(av[1], k) + 1):
                reps = _joined(reps, body, k)
                if n >= av[0]:
                    item |= reps
            if av[1] > k:   # more repeats than listed: whatever follows them is not known here
                item |= {(h, False) for h, _ in reps}
        elif op in (AT, ASSERT, ASSERT_NOT):
            continue
        else:
            item = {((), False)}
        if item is None:
            return None
        out = _joined(out, item, k)
        if len(out) > 4096:
            return None
    return out


def _joined(left: set[tuple[tuple[int, ...], bool]], right: set[tuple[tuple[int, ...], bool]],
            k: int) -> set[tuple[tuple[int, ...], bool]]:
    """Every prefix of ``left`` followed by every one of ``right``, cut at ``k``."""
    out = set()
    for h, done in left:
        if not done or len(h) >= k:
            out.add((h[:k], done))
            continue
        for h2, done2 in right:
            joined = h + h2
            out.add((joined[:k], done2 and len(joined) <= k))
    return out


def tree(pattern: re.Pattern) -> list | None:
    try:
        from re import _parser   # the stdlib's own reading of a pattern (3.11+)
        return list(_parser.parse(pattern.pattern, pattern.flags))
    except Exception:  # noqa: BLE001 - another Python: no cheap path, the plain search
        return None


def starts_at_lines(seq: list | None) -> bool:
    """Whether every match of the parsed pattern starts at a line start (^ or a newline), possibly
    after whitespace (a run of \\s) and lookbehinds: what ``reply._search_at_lines`` relies on."""
    if not seq:
        return False
    try:
        from re._constants import ASSERT_NOT, AT, BRANCH, CATEGORY, CATEGORY_SPACE, IN, LITERAL, MAX_REPEAT, MIN_REPEAT, SUBPATTERN
        op, av = seq[0]
        if op is SUBPATTERN:
            return starts_at_lines(list(av[3]))
        if op is BRANCH:
            return all(starts_at_lines(list(item)) for item in av[1])
        if op is LITERAL:
            return av == 10
        if op is AT:
            return str(av) in ("AT_BEGINNING", "AT_BEGINNING_LINE")
        if op in (MAX_REPEAT, MIN_REPEAT) and list(av[2]) == [(IN, [(CATEGORY, CATEGORY_SPACE)])]:
            return starts_at_lines(seq[1:])
        if op in (MAX_REPEAT, MIN_REPEAT) and av[0] >= 1:   # \n{2,}: starts as its body does
            return starts_at_lines(list(av[2]))
        if op is ASSERT_NOT and av[0] == -1:   # a lookbehind consumes nothing
            return starts_at_lines(seq[1:])
    except Exception:  # noqa: BLE001 - a shape not understood: the plain search
        return False
    return False


def requires(seq: list | None, word: str) -> bool:
    """Whether every match of the parsed pattern contains ``word`` literally (a group spelling it,
    outside any alternative, or inside a repeat of at least one)."""
    if not seq:
        return False
    try:
        from re._constants import LITERAL, MAX_REPEAT, MIN_REPEAT, SUBPATTERN
        spelled = [(LITERAL, ord(ch)) for ch in word]
        items = [(op, av) for op, av in seq]
        for i, (op, av) in enumerate(items):
            if items[i:i + len(spelled)] == spelled:
                return True
            if op is SUBPATTERN and requires(list(av[3]), word):
                return True
            if op in (MAX_REPEAT, MIN_REPEAT) and av[0] >= 1 and requires(list(av[2]), word):
                return True
    except Exception:  # noqa: BLE001
        return False
    return False
