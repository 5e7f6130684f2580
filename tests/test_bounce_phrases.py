"""The classifier's phrase tables compiled with a literal prefilter (gateway/feedback/phrases.py) answer
exactly what trying each row's re.search in order answers: on every text of the bounce corpora and
the synchronous replies, and on texts built to hit each alternative of each row."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from gateway.feedback import classify, phrases

DATA = Path(__file__).parent / "data" / "bounces"
TABLES = [classify._OVERRIDES, classify._TEXT]


def _plain(rows, text):
    for kind, name, pattern in rows:
        if re.search(pattern, text):
            return kind, name
    return None


def _texts() -> list[str]:
    texts = [p.read_bytes().decode("utf-8", "replace").lower() for p in sorted(DATA.rglob("*.eml"))]
    with open(DATA / "replies.csv", newline="") as f:
        texts += [f"{r['enhanced']} {r['text']}".lower() for r in csv.DictReader(f)]
    # Each alternative's own needles, alone and inside other words: a hint that must not decide.
    for rows in TABLES:
        for _, _, pattern in rows:
            for alt in phrases.alternatives(pattern):
                for n in sorted(phrases.needles(alt) or ()):
                    texts += [n, f"x{n}y", f"the {n} was"]
    return texts


TEXTS = _texts()


@pytest.mark.parametrize("rows", TABLES, ids=["overrides", "text"])
def test_a_table_answers_what_its_rows_answer_in_order(rows):
    table = phrases.Table(rows)
    answers = [table.first(t) for t in TEXTS]
    assert answers == [_plain(rows, t) for t in TEXTS]
    # The comparison covers matches of every row, not only misses.
    assert {a[1] for a in answers if a is not None} == {name for _, name, _ in rows}


def test_needles_are_what_every_match_must_contain():
    assert phrases.needles(r"no such (?:user|mailbox)") == {"no such "}
    assert phrases.needles(r"(?:mailbox|inbox) (?:is )?full") == {"mailbox", "inbox"}
    assert phrases.needles(r"\bspam\b") == {"spam"}
    assert phrases.needles(r"(?:x\d)+ quota") == {" quota"}
    assert phrases.needles(r"[a-z]+ ?") is None                   # nothing literal: always searched
    assert phrases.needles(r"(?:foo)? bar|baz") == {" bar", "baz"}
    assert phrases.needles(r"(?:foo)?\d") is None                 # an optional group is not required
    with pytest.raises(ValueError):
        phrases.needles(r"(?i:user) unknown")                     # the tables are searched in lower case


def test_alternatives_split_only_at_the_top_level():
    assert phrases.alternatives(r"a|(b|c)d|[|(]|\||[]|]x") == ["a", "(b|c)d", "[|(]", r"\|", "[]|]x"]
    table = phrases.Table([("hard", "one", r"[a-z]+\d|zz"), ("soft", "two", r"q")])
    assert table.always == (0,)   # '[a-z]+\d' has no needle and is always searched
    assert [table.first(t) for t in ("ab1", "zz", "q", "")] == [("hard", "one"), ("hard", "one"), ("soft", "two"), None]


def test_addresses_are_found_where_the_address_pattern_finds_them():
    """dsn._addresses walks out from each '@' instead of trying the address regex at every position."""
    from gateway.feedback import dsn

    tricky = ["a@b@c.example", "x@-y.example z@y.example", "@@@", "foo@bar", "a.b@c.example.d@f.example",
              "<bob@example.org>, 'carol'@example.org.", "é@example.org café+tag@exämple.org ok@example.org",
              "user@sub.example.org@other.example", "@" * 500 + "a@b.example", "a" * 300 + "@", "SMTP:Dan@Example.COM"]
    for text in tricky + TEXTS:
        for pos in (0, len(text) // 2):
            want = [(m.group(0), m.start(), m.end()) for m in dsn._ADDRESS.finditer(text, pos)]
            assert list(dsn._addresses(text, pos)) == want, text[:80]


def test_lower_keeps_every_index():
    from gateway.feedback import dsn

    assert dsn._lower("Delivery FAILED") == "delivery failed"
    text = "İstanbul: User UNKNOWN <a@b.example>"   # 'İ'.lower() is two characters
    low = dsn._lower(text)
    assert len(low) == len(text) and low.endswith("user unknown <a@b.example>")
