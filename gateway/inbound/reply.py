"""The reply a person wrote, without the quoted history and the signature (Postmark's
``StrippedTextReply``).

What flows in: a message's text body (or, when it has none, its HTML). What flows out: the newest
reply: the text above the first quote header ("On ... wrote:", "Am ... schrieb ...:", Outlook's
"From: ... Sent: ..." block, "-----Original Message-----", in the 13 languages mail-parser-reply
knows; and in any language, a line ending in a colon that names a date or an address with a '>'
quote under it, which covers what the library misses: Gmail's Spanish, Dutch, Portuguese, Polish,
Chinese, Russian...), without a trailing signature ("-- ", "Best regards", "Sent from my iPhone")
or disclaimer.

The patterns are mail-parser-reply's (a maintained library with multi-language quote headers and
signatures); the scan is ours, because a measurement showed why: the library tries its combined
header pattern at every character, ~3 µs per character with all languages (15 ms for a 2 KB reply,
150 ms for 50 KB), a ceiling of ~60 msg/s for the processor. Here the header pattern is only tried
at the start of lines that can begin a header (a line with a colon, or a separator line, and the
line before it for a wrapped "On ...\\nwrote:"), and the signature pattern only over the reply's
tail: the same answers in ~0.1 ms for a typical reply (scripts/bench_mime.py prints the figure).

Pure and bounded: input past ``MAX_TEXT`` characters is not looked at; never raises for any text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from html import unescape

from mailparser_reply.constants import MAIL_LANGUAGES
from mailparser_reply.parser import EmailMessage

from .patterns import HEAD, LineHeads, line_heads, requires, starts_at_lines, tree

MAX_TEXT = 256 * 1024       # characters of a text body looked at
MAX_HTML = 1024 * 1024      # characters of an HTML body turned into text when there is no text body
MAX_CANDIDATES = 100        # lines tried as a quote header before the rest counts as the reply
MAX_HEADER_LINE = 250       # characters: a longer line is not a quote header
MAX_WINDOW = 400            # characters a header pattern is matched against
SIGNATURE_TAIL = 4096       # characters at the end of the reply searched for a signature
LANGUAGES = tuple(sorted(name for name in MAIL_LANGUAGES if len(name) == 2))  # ISO codes only

# A line that may begin (or, for a wrapped "On ... wrote:", end) a quote header: a colon (ASCII or
# full-width) anywhere, or a run of dashes/underscores (Outlook's separators).
_CANDIDATE = re.compile(r"^.*[:\uff1a].*$|^[> ]*[-_]{5,}", re.MULTILINE)   # what _candidates finds, line by line
_SEPARATOR = re.compile(r"[> ]*[-_]{5,}")
_QUOTED = re.compile(r"^\s*>")
_DATE_OR_ADDRESS = re.compile(r"\d|@")
_NEXT_LINE = re.compile(r"(?:\n[ \t]*)*\n[ \t]*(\S)")  # the first character of the next non-blank line


_MAIL = re.compile("mail", re.IGNORECASE)   # the word every disclaimer pattern of the library needs


class _Patterns:
    """The library's compiled patterns for a set of languages (built once per set)."""

    def __init__(self, languages: tuple[str, ...]):
        probe = EmailMessage(text="", languages=list(languages), keep_hyphen_lists=True)
        self.header = probe.HEADER_REGEX
        self.signature = probe.SIGNATURE_REGEX
        self.disclaimers = probe.DISCLAIMERS_REGEX
        # Cheap paths, taken only while the patterns have the shape they rely on (another library
        # version falls back to the plain search): a disclaimer match always holds "mail" (its
        # mandatory ``(?:mail)`` group), and a signature match always starts at a line start or in
        # the whitespace run before one (every alternative begins ``\s*^``, ``\n`` or ``^``).
        self.needs_mail = requires(tree(self.disclaimers), "mail") and bool(self.disclaimers.flags & re.IGNORECASE)
        self.signature_at_lines = starts_at_lines(tree(self.signature))
        # What a line must begin with for a signature match to start at it (None: every line is tried).
        self.signature_first = line_heads(tree(self.signature), self.signature.flags) if self.signature_at_lines else None


@functools.lru_cache(maxsize=8)  # compiled patterns, cached as re caches its own
def _compiled(languages: tuple[str, ...]) -> _Patterns:
    return _Patterns(languages)


def stripped_reply(text: str, html: str = "", *, languages: tuple[str, ...] = LANGUAGES) -> str:
    """The newest reply in ``text`` (or in ``html`` turned into text when ``text`` is empty)."""
    if not text.strip() and html:
        text = html_text(html[:MAX_HTML])
    p = _compiled(tuple(languages))
    text = _normalise(text[:MAX_TEXT])
    start, end = _first_header(text, p)
    if start is None:
        reply = text
    else:
        reply = text[:start]
        if not reply.strip():  # bottom-posted: the quote comes first, the answer after it
            rest, _ = _first_header(text[end:], p)
            below = text[end:] if rest is None else text[end:end + rest]
            reply = "\n".join(line for line in below.split("\n") if not _QUOTED.match(line))
    return _without_signature(_without_trailing_quote(reply), p).strip()


def _normalise(text: str) -> str:
    # As the library does: one line-end spelling, lines stripped (clients pad with spaces).
    return "\n".join(line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


def _first_header(text: str, p: _Patterns) -> tuple[int | None, int]:
    """Where the first quote header starts and ends; (None, 0) when there is none."""
    tried: set[int] = set()
    for count, (line, end) in enumerate(_candidates(text)):
        if count >= MAX_CANDIDATES:
            break
        before = text.rfind("\n", 0, max(line - 1, 0)) + 1 if line else 0
        for pos in (before, line):
            if pos in tried or end - line > MAX_HEADER_LINE:
                continue
            tried.add(pos)
            found = p.header.match(text, pos, _window(text, pos))
            if found and found.group().strip():
                return pos, found.end()
        if _introduces_quote(text, line, end):
            return line, end
    return None, 0


def _candidates(text: str) -> Iterator[tuple[int, int]]:
    """The spans ``_CANDIDATE.finditer(text)`` gives (a line holding a colon, whole; the separator at
    the start of a line), found a line at a time: the pattern tried at every character costs ~50 ns
    each, 0.8 ms for a 16 KB body, where a test for a colon per line costs a tenth of that."""
    start = 0
    for line in text.split("\n"):
        if ":" in line or "\uff1a" in line:
            yield start, start + len(line)
        elif line.lstrip("> ")[:1] in ("-", "_"):
            m = _SEPARATOR.match(line)
            if m is not None:
                yield start, start + m.end()
        start += len(line) + 1


def _window(text: str, pos: int) -> int:
    """Where a header match starting at ``pos`` may end: the end of the next line (a wrapped "On ...
    wrote:", the first two lines of Outlook's block are enough), at most ``MAX_WINDOW`` characters on.
    Some of the library's patterns are quadratic in the text they see (two lazy ``.+?`` in a row:
    4 s for one 10 KB line starting with "On"), so they never see more."""
    first = text.find("\n", pos)
    end = len(text) if first < 0 else text.find("\n", first + 1)
    end = len(text) if end < 0 else end
    if end - pos > MAX_WINDOW:
        end = len(text) if first < 0 else first
    return min(end, pos + MAX_WINDOW)


def _introduces_quote(text: str, start: int, end: int) -> bool:
    """The header of a language the library misses (Gmail's Spanish, Dutch, Portuguese, Polish,
    Chinese, Russian...): a line ending in a colon, naming a date or an address, with a '>' quote
    right under it (blank lines between allowed)."""
    line = text[start:end]
    if not line.rstrip().endswith((":", "\uff1a")) or not _DATE_OR_ADDRESS.search(line):
        return False
    below = _NEXT_LINE.match(text, end)
    return below is not None and below.group(1) == ">"


def _without_trailing_quote(reply: str) -> str:
    lines = reply.rstrip().split("\n")
    while lines and (_QUOTED.match(lines[-1]) or not lines[-1].strip()) and len(lines) > 1:
        lines.pop()
    return "\n".join(lines)


def _without_signature(reply: str, p: _Patterns) -> str:
    cut = max(0, len(reply) - SIGNATURE_TAIL)
    if cut:
        cut = reply.find("\n", cut) + 1 or cut
    if not p.needs_mail or _MAIL.search(reply, cut):
        for disclaimer in p.disclaimers.findall(reply, cut):
            if isinstance(disclaimer, str) and disclaimer.strip():
                reply = reply.replace(disclaimer, "")
    found = (_search_at_lines(p.signature, reply, cut, p.signature_first) if p.signature_at_lines
             else p.signature.search(reply, cut))
    if found and found.group().strip() and found.start() > 0:
        reply = reply[:found.start()]
    return reply


def _search_at_lines(pattern: re.Pattern, text: str, start: int, first: LineHeads | None = None) -> re.Match | None:
    """``pattern.search(text, start)`` for a pattern whose matches all start at a line start or in
    the whitespace run before one (``patterns.starts_at_lines``): tried only there, in order, so the first
    match is search's leftmost one. A few hundred places in a 4 KB tail instead of every character
    (the library's signature pattern costs ~0.6 µs a character: 2.5 ms per message). With ``first``
    (``patterns.line_heads``), a run of whitespace whose next line cannot begin a match is not tried at all:
    each try costs ~3 µs, the test ~0.2 (1.1 ms to 0.1 for a 4 KB tail without a signature)."""
    tried = start   # every position below this one has been tried (or is before start)
    if start == 0:
        found = pattern.match(text, 0)   # the real start of the text is a line start
        if found is not None:
            return found
        tried = 1
    size = len(text)
    newline = text.find("\n", max(start - 1, 0))
    if newline < 0:
        return None
    # The lines after each break, walked in one split: a line that cannot begin a match (``first``)
    # right after a non-blank line is passed over without looking at the run before it.
    previous = text[text.rfind("\n", 0, newline) + 1:newline]
    for line in text[newline + 1:].split("\n"):
        if first is not None and previous and line and not line[0].isspace() and not first.head(text[newline + 1:newline + 1 + HEAD]):
            pass   # no blank line before it, no whitespace after the break: only the line's head decides
        else:
            # A match through this line break starts in the whitespace before it (\s* then ^ after
            # the break), at the break, or right after it.
            first_pos = newline
            while first_pos > tried and text[first_pos - 1].isspace():   # str.isspace is what \s matches
                first_pos -= 1
            end = newline + 1
            while first is not None and end < size and text[end].isspace():
                end += 1
            if first is None or first.may_start(text, first_pos, end):
                for pos in range(max(first_pos, tried), min(newline + 2, size + 1)):
                    found = pattern.match(text, pos)
                    if found is not None:
                        return found
        tried = newline + 2
        newline += len(line) + 1
        previous = line
    return None


_BLOCKS = frozenset({"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table", "pre", "ul",
                     "ol", "blockquote"})
_INVISIBLE = re.compile(r"<!--.*?(?:-->|$)|<(style|script|head|title)\b[^>]*>.*?(?:</\1\s*>|$)", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9:]*)[^>]*>")
_SPACE = re.compile(r"\s+")


def html_text(html: str) -> str:
    """``html`` as the text a reader sees: block elements end lines, blockquotes are quoted with '> '.
    Regular expressions, not an HTML parser: html.parser measured ~1.5 ms per KB here, this ~0.1."""
    # No tag can start after the last '>': leaving that tail out keeps the patterns linear (a '<'
    # with no '>' after it would otherwise be scanned to the end once for every '<').
    cut = html.rfind(">") + 1
    html = _INVISIBLE.sub(" ", html[:cut]) + html[cut:].replace("<", " ")
    out: list[str] = []
    depth = pos = 0
    line_start = True

    def text(chunk: str) -> None:
        nonlocal line_start
        chunk = _SPACE.sub(" ", unescape(chunk))
        if chunk.strip():
            out.append(("> " * depth + chunk.lstrip()) if line_start else chunk)
            line_start = False

    for m in _TAG.finditer(html):
        text(html[pos:m.start()])
        pos = m.end()
        tag = m.group(2).lower()
        if tag in _BLOCKS:
            if tag == "blockquote":
                depth = max(0, depth + (-1 if m.group(1) else 1))
            out.append("\n")
            line_start = True
    text(html[pos:])
    lines = [line.strip() for line in "".join(out).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
