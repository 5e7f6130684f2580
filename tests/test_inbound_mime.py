"""MIME parsing of received mail: the corpus under tests/data/mime/, table-driven, and the bounds.

Each ``NAME.eml`` has a ``NAME.json`` beside it saying what the parse must find: header fields,
snippets the text and HTML bodies contain (and must not), the attachments in depth-first order
(name, type, inline flag, Content-ID, size, SHA-256 or first bytes) and substrings of the defects
(an empty list: no defect at all). The bombs too large to commit are generated here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.inbound import filenames
from gateway.inbound.mime import MimeLimits, parse
from gateway.inbound.reply import stripped_reply

CORPUS = Path(__file__).parent / "data" / "mime"
CASES = sorted(p.stem for p in CORPUS.glob("*.eml"))


def expectation(name: str) -> dict:
    return json.loads((CORPUS / f"{name}.json").read_text())


def test_the_corpus_has_every_shape_the_issue_names():
    assert {"apple_nested", "forwarded_rfc822", "cid_inline", "rfc2231_names", "hostile_names", "broken_base64",
            "deep_nesting_bomb", "outlook", "gmail", "thunderbird", "plain_nonmime", "latin1_nocharset"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_corpus_message(name):
    want = expectation(name)
    limits = MimeLimits(**want.get("limits", {}))
    got = parse((CORPUS / f"{name}.eml").read_bytes(), limits)

    for key in ("message_id", "in_reply_to", "references", "subject", "cc", "to", "auto_submitted", "precedence"):
        if key in want:
            assert getattr(got, key) == want[key], key
    if "from" in want:
        assert list(got.from_) == want["from"]
    for field, value in want.get("headers", {}).items():
        assert got.headers[field] == value
    for snippet in want.get("text", []):
        assert snippet in got.text
    for snippet in want.get("text_not", []):
        assert snippet not in got.text
    if want.get("html") == []:
        assert got.html == ""
    for snippet in want.get("html", []):
        assert snippet in got.html
    if "html_order" in want:
        positions = [got.html.index(s) for s in want["html_order"]]
        assert positions == sorted(positions)

    assert [p.filename for p in got.attachments] == [a["filename"] for a in want["attachments"]]
    for part, a in zip(got.attachments, want["attachments"]):
        data = part.data()
        assert part.size == len(data)
        assert part.inline == a.get("inline", False), part.filename
        for key in ("content_type", "content_id", "disposition", "size"):
            if key in a:
                assert getattr(part, key) == a[key], (part.filename, key)
        if "sha256" in a:
            assert hashlib.sha256(data).hexdigest() == a["sha256"], part.filename
        if "starts_with" in a:
            assert data.startswith(a["starts_with"].encode()), part.filename
        if "contains" in a:
            assert a["contains"].encode() in data
        assert b"".join(part.chunks()) == data
    if "downloads" in want:
        assert [p.filename for p in got.downloads] == want["downloads"]

    if want["defects"] == []:
        assert got.defects == []
    for snippet in want["defects"]:
        assert any(snippet in d for d in got.defects), (snippet, got.defects)
    if "stripped" in want:
        assert stripped_reply(got.text) == want["stripped"]
    if "stripped_html" in want:
        assert stripped_reply("", got.html) == want["stripped_html"]


@pytest.mark.parametrize("name", CASES)
def test_corpus_message_with_bare_lf_line_ends(name):
    # Polled mailboxes hand over LF-only files: the same parts, names and bodies.
    raw = (CORPUS / f"{name}.eml").read_bytes()
    want = expectation(name)
    got = parse(raw.replace(b"\r\n", b"\n"), MimeLimits(**want.get("limits", {})))
    assert [p.filename for p in got.attachments] == [a["filename"] for a in want["attachments"]]
    for snippet in want.get("text", []):
        assert snippet in got.text


def multipart(parts: list[bytes], boundary: str = "b") -> bytes:
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    return (b"From: a@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\""
            + boundary.encode() + b"\"\r\n\r\n" + body + b"--" + boundary.encode() + b"--\r\n")


def attachment(name: str, data: bytes) -> bytes:
    return (f"Content-Type: application/octet-stream; name=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            .encode() + base64.encodebytes(data).replace(b"\n", b"\r\n"))


def test_many_parts_bomb_keeps_the_rest_as_one_unparsed_attachment():
    parts = [b"Content-Type: text/plain\r\n\r\nfirst"] + [attachment(f"f{i}.bin", b"x%d" % i) for i in range(5000)]
    raw = multipart(parts)
    got = parse(raw, MimeLimits(max_parts=100))
    # The message itself is entity 1: 99 parts walked, the remaining 4901 kept raw in one piece.
    assert got.text == "first"
    assert len(got.attachments) == 99
    rest = got.attachments[-1]
    assert rest.filename == "unparsed-1.txt"
    assert got.attachments[-2].filename == "f97.bin"
    assert rest.data().startswith(b"Content-Type: application/octet-stream; name=\"f98.bin\"")
    assert rest.data().endswith(b"--b--\r\n")
    assert any("more than 100 MIME parts" in d for d in got.defects)


def test_decoded_size_bound_keeps_the_rest_unparsed():
    big = bytes(range(256)) * 400  # 100 KiB
    raw = multipart([b"Content-Type: text/plain\r\n\r\nhello", attachment("one.bin", big), attachment("two.bin", big)])
    got = parse(raw, MimeLimits(max_decoded_bytes=150_000))
    assert [p.filename for p in got.attachments] == ["one.bin", "unparsed-1.txt"]
    assert got.attachments[0].data() == big
    assert got.attachments[1].data().startswith(b"Content-Type: application/octet-stream; name=\"two.bin\"")
    assert any("over 150000 decoded bytes" in d for d in got.defects)


def test_header_block_bound():
    raw = b"From: a@example.com\r\n" + b"X-Filler: " + b"y" * 200 + b"\r\n" * 1 + (b"X-More: z\r\n" * 2000) + \
        b"Subject: late\r\n\r\nbody text\r\n"
    got = parse(raw, MimeLimits(max_header_bytes=4096))
    assert got.text == "body text\n"  # a single-part body keeps its last line end; the one before a boundary is the boundary's
    assert got.subject == ""  # past the bound: not read
    assert got.from_ == ("a@example.com", "")
    assert any("header block over 4096 bytes" in d for d in got.defects)


def test_message_rfc822_inside_is_never_walked_even_when_it_is_a_bomb():
    inner = multipart([b"Content-Type: text/plain\r\n\r\ninner"] * 50, boundary="in")
    raw = multipart([b"Content-Type: text/plain\r\n\r\nouter", b"Content-Type: message/rfc822\r\n\r\n" + inner])
    got = parse(raw, MimeLimits(max_parts=10))
    assert got.text == "outer"
    assert [p.filename for p in got.attachments] == ["s.eml"]
    assert got.attachments[0].data() == inner
    assert got.defects == []


def test_unparsed_input_never_raises():
    samples = [b"", b"\r\n", b"garbage without header", b"Content-Type: multipart/mixed\r\n\r\nno boundary param",
               b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n",
               b"From: <<<@@@>>>\r\nTo: ,,,;;;\r\nDate: not a date\r\nMessage-ID: junk\r\n\r\nx",
               b"Content-Type: text/plain; charset=x-unknown-charset\r\n\r\n\xff\xfe",
               b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644",
               b"Subject: \xff\xfe\x80 raw bytes\r\nFrom: \"\xe9\" <a@b.c>\r\n\r\nbody",
               b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n--a\r\n--a--"]
    for raw in samples:
        got = parse(raw)
        for value in (got.text, got.subject, got.from_[1], *got.defects, *(p.filename for p in got.attachments)):
            value.encode("utf-8")  # no surrogate reaches the store
    assert parse(b"Subject: \xe9t\xe9\r\n\r\n").subject == "été"
    assert parse(b"Content-Type: text/plain; charset=x-unknown-charset\r\n\r\nok").defects == [
        "message (text/plain): unknown charset 'x-unknown-charset'"]


def test_lone_surrogates_become_replacement_characters_and_line_ends_become_lf():
    # utf-7 decodes "+2D0-" to a lone surrogate, which could never be encoded again (the cheap
    # checks in mime._without_surrogates must still find it, in ASCII-only and non-ASCII text).
    assert parse(b"Content-Type: text/plain; charset=utf-7\r\n\r\na+2D0-b\r\nc\rd\r\r\n").text == "a\ufffdb\nc\nd\n\n"
    assert parse(b"Content-Type: text/plain; charset=utf-7\r\n\r\n+AOk-+2D0-b").text == "\u00e9\ufffdb"
    assert parse("Content-Type: text/plain; charset=utf-8\r\n\r\n\u00e9t\u00e9\r\n".encode()).text == "\u00e9t\u00e9\n"


def test_large_attachment_is_decoded_on_demand_in_chunks():
    data = hashlib.sha256(b"seed").digest() * (3 * 2**20 // 32)  # 3 MiB, not a multiple of a chunk line
    raw = multipart([b"Content-Type: text/plain\r\n\r\nhi", attachment("big.bin", data)])
    got = parse(raw)
    part = got.attachments[0]
    assert part.decoded is None  # past KEEP_DECODED: nothing held from the parse
    chunks = list(part.chunks())
    assert len(chunks) > 2 and max(len(c) for c in chunks) < 2**20
    assert b"".join(chunks) == data and part.size == len(data)


def test_bodies_that_are_one_long_line_are_still_decoded_in_chunks():
    import binascii
    import os

    from gateway.inbound.transfer import CHUNK, Payload
    data = os.urandom(3 * CHUNK)
    chunks = list(Payload(base64.b64encode(data), "base64").chunks())  # no line breaks at all
    assert b"".join(chunks) == data and max(map(len, chunks)) <= CHUNK
    text = bytes(range(256)) * (3 * CHUNK // 256) + b"  tail  "
    qp = binascii.b2a_qp(text, istext=False).replace(b"=\n", b"")  # escapes and spaces on one line
    chunks = list(Payload(qp, "quoted-printable").chunks())
    assert len(chunks) > 2 and b"".join(chunks) == binascii.a2b_qp(qp)


@pytest.mark.parametrize("given, safe", [
    ("../../etc/passwd", "passwd"), ("/etc/passwd", "passwd"), ("C:\\Users\\x\\evil.exe", "evil.exe"),
    ("a\x00b\x07c.txt", "abc.txt"), ("invoice\u202efdp.exe", "invoicefdp.exe"), ("zero\u200bwidth.txt", "zerowidth.txt"),
    ("..", ""), ("...", ""), ("   ", ""), ("con", "_con"), ("LPT1.txt", "_LPT1.txt"), ('a<b>c:d"e|f?g*.txt', "a_b_c_d_e_f_g_.txt"),
    ("name. ", "name"), ("tab\there.txt", "tab here.txt"), ("e\u0301cole.pdf", "\u00e9cole.pdf"),
])
def test_sanitise(given, safe):
    assert filenames.sanitise(given) == safe


def test_sanitise_bounds_length_and_keeps_the_extension():
    name = filenames.sanitise("ä" * 300 + ".pdf")
    assert name.endswith(".pdf") and len(name.encode()) <= filenames.MAX_BYTES
    assert name[:-4] == "ä" * ((filenames.MAX_BYTES - 4) // 2)


def test_unique_names_within_a_message():
    taken: set[str] = set()
    assert [filenames.unique(n, taken) for n in ("a.pdf", "A.pdf", "a.pdf", "README", "README")] == [
        "a.pdf", "A-2.pdf", "a-3.pdf", "README", "README-2"]


def test_fallback_names_come_from_the_content_type():
    assert filenames.fallback(3, "application/octet-stream") == "attachment-3.bin"
    assert filenames.fallback(1, "image/jpeg") == "attachment-1.jpg"
    assert filenames.fallback(2, "message/rfc822") == "attachment-2.eml"
    assert filenames.fallback(4, "application/x-no-such-type") == "attachment-4.bin"


# -- header fields: the short cut reads what email.policy.default reads -------------------------

CONTENT_TYPES = [
    "text/plain", "text/plain; charset=us-ascii", 'text/plain; charset="UTF-8"; format=flowed',
    "TEXT/HTML; CHARSET=ISO-8859-1", 'multipart/mixed; boundary="----=_Part_123_456.789"',
    "multipart/alternative;\tboundary=000000000000a1b2c3d4e5f6a7b6", 'application/pdf; name="receipt 2026.pdf"',
    'application/octet-stream; name="a \\"quoted\\" name.bin"', "image/png; name=logo.png; x-unix-mode=0644",
    'multipart/related; type="multipart/alternative"; boundary="_004_AM0PR_"', "text/plain;",
]
DISPOSITIONS = [
    "attachment", "inline", 'attachment; filename="receipt.pdf"', "INLINE; filename=IMG_0042.jpeg",
    'attachment; filename="Tracking details.docx"; size=600; creation-date="Tue, 01 Dec 2026 14:59:00 GMT"',
]
ADDRESS_LISTS = [
    "carla@example.com", "Carla <carla@example.com>", "Carla Ruiz <carla.ruiz@gmail.com>, bob@example.net",
    "<bare@example.com>", "Shop Support <support@shop.example.com>,\tteam@corp.example.com",
]


@pytest.mark.parametrize("value", CONTENT_TYPES)
def test_content_type_short_cut_agrees_with_email(value):
    from email import policy

    from gateway.inbound import headerfields
    header = policy.default.header_factory("content-type", value)
    kind, params, defects = headerfields.content_type(value)
    assert headerfields._simple_params(value) is not None  # the short cut did answer
    assert (kind, params) == (header.content_type, dict(header.params))


@pytest.mark.parametrize("value", DISPOSITIONS)
def test_disposition_short_cut_agrees_with_email(value):
    from email import policy

    from gateway.inbound import headerfields
    header = policy.default.header_factory("content-disposition", value)
    assert headerfields._simple_params(value) is not None
    assert headerfields.content_disposition(value)[:2] == (header.content_disposition, dict(header.params))


@pytest.mark.parametrize("value", ADDRESS_LISTS)
def test_address_short_cut_agrees_with_email(value):
    from email import policy

    from gateway.inbound import headerfields
    header = policy.default.header_factory("to", value)
    assert headerfields.addresses("to", value) == ([(a.addr_spec, a.display_name) for a in header.addresses], [])


@pytest.mark.parametrize("value", [
    "application/pdf; name*=UTF-8''%C3%A4.pdf", "application/pdf; name*0*=UTF-8''f%C3%BC; name*1=\"r a.pdf\"",
    "text/plain; name*=iso-8859-1'de'Gr%FC%DFe.txt; charset=utf-8", 'text/plain; charset="utf-8"; format=flowed',
])
def test_lenient_reading_agrees_with_email_on_rfc_2231(value):
    from email import policy

    from gateway.inbound import headerfields
    header = policy.default.header_factory("content-type", value)
    assert headerfields._lenient_params(value) == (header.content_type, dict(header.params))


def test_date():
    from gateway.inbound import headerfields
    assert headerfields.timestamp("Tue, 1 Dec 2026 10:00:00 +0000") == 1796119200.0
    assert headerfields.timestamp("Tue, 1 Dec 2026 11:00:00 +0100") == 1796119200.0
    assert headerfields.timestamp("Tue, 1 Dec 2026 10:00:00 -0000") == 1796119200.0  # unknown zone: UTC
    assert headerfields.timestamp("yesterday") is None and headerfields.timestamp("") is None


def test_hard_fields_go_to_email():
    from gateway.inbound import headerfields
    assert headerfields.content_type("application/pdf; name*=UTF-8''%C3%A4.pdf")[1] == {"name": "ä.pdf"}
    assert headerfields.content_type('text/plain (a comment); charset="utf-8"')[:2] == ("text/plain", {"charset": "utf-8"})
    assert headerfields.addresses("from", '"Doe, Jane" <jane@example.com>')[0] == [("jane@example.com", "Doe, Jane")]
    assert headerfields.addresses("from", "=?utf-8?q?J=C3=B6rg?= <j@example.de>")[0] == [("j@example.de", "Jörg")]
    assert headerfields.addresses("to", "undisclosed-recipients:;")[0] == []


@pytest.mark.parametrize("value", ["a" + " " * 20000 + "b <c@d.e>", "a" * 20000, "x <" + "a" * 20000])
def test_address_patterns_stay_linear(value):
    from gateway.inbound import headerfields
    start = time.process_time()
    headerfields.addresses("to", value, headerfields.Budget(0))  # no budget: the lenient reading too
    headerfields.addresses("to", value[:3500])
    assert time.process_time() - start < 0.5


def test_hostile_header_values_cost_email_at_most_the_budget():
    # A 30 KB To of quoted names and 999 parts with RFC 2231 parameters: email.policy.default would
    # spend seconds on them; past the budget they are read leniently, in milliseconds.
    to = ", ".join(f'"Doe, J{i}" <j{i}@example.com>' for i in range(1200))
    parts = [b"Content-Type: text/plain\r\n\r\nhi"] + [
        f"Content-Type: application/pdf; name*0*=UTF-8''f%C3%BC{i}; name*1={'-' * 80}.pdf\r\n\r\nx".encode()
        for i in range(998)]
    raw = multipart(parts).replace(b"Subject: s\r\n", f"Subject: s\r\nTo: {to}\r\n".encode())
    start = time.process_time()
    got = parse(raw)
    elapsed = time.process_time() - start
    assert got.to[:2] == ["j0@example.com", "j1@example.com"] and len(got.to) == 100
    dashes = "-" * 80
    assert [p.filename for p in got.attachments[:2]] == [f"fü0{dashes}.pdf", f"fü1{dashes}.pdf"]
    assert got.attachments[-1].filename == f"fü997{dashes}.pdf"  # the lenient reading joins RFC 2231 the same way
    assert "message: to: too long to parse fully, read leniently" in got.defects
    lenient = [d for d in got.defects if d.endswith("Content-Type: too long to parse fully, read leniently")]
    assert 0 < len(lenient) < 998  # email parsed the first ones, until the budget ran out
    assert elapsed < 2, elapsed


# -- whatever the bytes, parse answers ----------------------------------------------------------

SEEDS = [(CORPUS / f"{name}.eml").read_bytes() for name in ("apple_nested", "gmail", "rfc2231_names", "broken_base64")]


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(seed=st.sampled_from(SEEDS), edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 40), st.binary(max_size=12)),
                                                     max_size=8))
def test_a_damaged_message_is_parsed_as_far_as_it_goes(seed, edits):
    raw = seed
    for where, cut, insert in edits:
        at = int(where * len(raw))
        raw = raw[:at] + insert + raw[at + cut:]
    got = parse(raw, MimeLimits(max_parts=50, max_depth=8))
    for value in (got.text, got.html, got.subject, *got.from_, *got.to, *got.defects, *got.headers.values()):
        value.encode("utf-8")  # nothing the store would refuse
    assert len({p.filename.lower() for p in got.attachments}) == len(got.attachments)
    for part in got.attachments:
        assert part.filename and "/" not in part.filename and "\\" not in part.filename
        assert len(part.data()) == part.size
