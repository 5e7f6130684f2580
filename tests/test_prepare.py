"""Header preparation: pure functions on bytes, table-driven, with a corpus message."""

from __future__ import annotations

from email import message_from_bytes, policy as email_policy
from email.utils import getaddresses
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.errors import SMTPError
from gateway.headers import mailbox_addresses
from gateway.submission import prepare

DATA = Path(__file__).parent / "data"
NOW = 1_700_000_000.0


def prepared(raw: bytes, *, message_id: str = "q1@example.com") -> tuple[prepare.Inspected, bytes]:
    found = prepare.inspect(raw, max_header_bytes=65536)
    received = prepare.received_header(helo="client.example", client_ip="192.0.2.7", hostname="gw.example", queue_id="q1",
                                       tls="version=TLSv1.3 cipher=X", recipients=["bob@example.org"], now=NOW)
    out = prepare.prepare(found, received=received, message_id=found.message_id or message_id,
                          add_message_id=found.message_id is None, now=NOW)
    return found, out


def test_corpus_message_keeps_everything_but_bcc_byte_for_byte():
    raw = (DATA / "folded.eml").read_bytes()
    found, out = prepared(raw)
    assert found.received == 1
    assert found.from_addresses == ["app@example.com"] and found.from_fields == 1
    assert found.parents == ("parent@app.example", "root@app.example")
    assert found.message_id is None and not found.has_date
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"hidden@example.net" not in head
    assert body == b"Body line one.\r\n\r\nBcc: this is body text, not a header\r\n"  # the body is untouched
    for kept in (b"To: Bob <bob@example.org>,\r\n  Carol <carol@example.org>\r\n", b"Subject: folded\r\n  subject line\r\n",
                 b"From: =?utf-8?q?Caf=C3=A9?= <app@example.com>\r\n"):
        assert kept in head + b"\r\n"
    parsed = message_from_bytes(out, policy=email_policy.default)
    assert parsed["Message-ID"] == "<q1@example.com>"
    assert parsed["Date"] is not None and parsed["Bcc"] is None
    assert parsed.get_all("Received")[0].startswith("from client.example ([192.0.2.7])")
    assert "for <bob@example.org>" in parsed.get_all("Received")[0]
    assert all(len(line) <= 998 for line in out.split(b"\r\n"))


@pytest.mark.parametrize("raw, fields, body", [
    (b"Subject: no body\r\n", [b"subject"], b""),
    (b"Subject: a\r\n\r\n", [b"subject"], b"\r\n"),
    (b"Subject: a\r\nthis is not a header\r\nmore\r\n", [b"subject"], b"\r\nthis is not a header\r\nmore\r\n"),
    (b"\r\nbody only\r\n", [], b"\r\nbody only\r\n"),
    (b"X-A: 1\r\n\tcontinued\r\nX-B : 2\r\n\r\nb\r\n", [b"x-a", b"x-b"], b"\r\nb\r\n"),
])
def test_split_header(raw, fields, body):
    parsed = prepare.split_header(raw, 65536)
    assert [f.name for f in parsed.fields] == fields
    assert parsed.body == body
    if b"not a header" not in raw:  # there a blank line is inserted before the body
        assert b"".join(f.raw for f in parsed.fields) + parsed.body == raw


def test_header_block_over_the_limit_is_refused():
    raw = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 70) for i in range(100)) + b"\r\nbody\r\n"
    with pytest.raises(SMTPError) as err:
        prepare.split_header(raw, 2048)
    assert (err.value.code, err.value.enhanced) == (552, "5.3.4")


def test_existing_message_id_and_date_are_kept():
    raw = b"From: app@example.com\r\nMessage-ID: <mine@app.example>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nhi\r\n"
    found, out = prepared(raw)
    assert found.message_id == "mine@app.example" and found.has_date
    assert out.count(b"Message-ID:") == 1 and out.count(b"Date:") == 1


def test_unusable_message_id_is_replaced_not_duplicated():
    found, out = prepared(b"From: app@example.com\r\nMessage-ID: garbage\r\n\r\nhi\r\n")
    assert found.message_id is None
    assert out.count(b"Message-ID:") == 1 and b"Message-ID: <q1@example.com>" in out


def test_from_with_several_addresses_and_several_fields():
    found = prepare.inspect(b"From: a@example.com, \"B, Jr\" <b@example.com>\r\nFrom: c@example.com\r\n\r\n", max_header_bytes=4096)
    assert found.from_addresses == ["a@example.com", "b@example.com", "c@example.com"]
    assert found.from_fields == 2


@pytest.mark.parametrize("helo, shown", [
    ("client.example", "client.example"),
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("evil (fake) host\x00", "evilfakehost"),
    ("", "unknown"),
    (None, "unknown"),
])
def test_helo_is_sanitised_in_received(helo, shown):
    header = prepare.received_header(helo=helo, client_ip="2001:db8::1", hostname="gw", queue_id="q", tls=None,
                                     recipients=["a@x.example", "b@x.example"], now=NOW)
    assert header.startswith(f"Received: from {shown} ([IPv6:2001:db8::1])\r\n".encode())
    assert b" for " not in header  # several recipients: none named
    assert b"with ESMTPA id q" in header


def test_parents_are_bounded_and_deduplicated():
    refs = " ".join(f"<r{i}@x>" for i in range(100))
    found = prepare.inspect(f"From: a@x.example\r\nIn-Reply-To: <r99@x>\r\nReferences: {refs}\r\n\r\n".encode(), max_header_bytes=1 << 20)
    assert found.parents[0] == "r99@x" and found.parents[1] == "r98@x"
    assert len(found.parents) == prepare.MAX_PARENTS and len(set(found.parents)) == len(found.parents)


@pytest.mark.parametrize("name", [b"From", b"Message-ID", b"In-Reply-To", b"References"])
def test_fields_read_must_be_utf8(name):
    """The one rule for a field we read (gateway/headers.py): UTF-8 text, or 550 5.6.0 naming it."""
    with pytest.raises(SMTPError) as err:
        prepare.inspect(b"From: x <app@example.com>\r\n" * (name != b"From") + name + b": <\xc3(@x>\r\n\r\n", max_header_bytes=4096)
    assert (err.value.code, err.value.enhanced) == (550, "5.6.0")
    assert name.decode() in err.value.public


def test_utf8_fields_are_read_and_unread_fields_pass_untouched():
    raw = "From: Jörg <app@example.com>\r\nReferences: <wurzel.ä@app.example>\r\n".encode() + b"X-Legacy: caf\xe9\r\n\r\nhi\r\n"
    found, out = prepared(raw)
    assert found.from_addresses == ["app@example.com"] and found.parents == ("wurzel.ä@app.example",)
    assert b"X-Legacy: caf\xe9\r\n" in out  # never decoded, never refused


@pytest.mark.parametrize("raw, refused", [
    (b"From: a@x\r\nTo: b@x\r\nCC: c@x\r\ncc: d@x\r\n\r\n", "Cc"),
    (b"From: a@x\r\nSubject: 1\r\nsubject: 2\r\n\r\n", "Subject"),
    (b"From: a@x\r\nFrom: b@x\r\n\r\n", "From"),
    (b"From: a@x\r\nBcc: b@x\r\nBcc: c@x\r\nReceived: 1\r\nReceived: 2\r\nX-A: 1\r\nX-A: 2\r\n\r\n", None),
])
def test_fields_allowed_once(raw, refused):
    from gateway import headers

    fields = headers.split_header(raw, 4096).fields
    if refused is None:
        headers.check_single(fields)
        return
    with pytest.raises(SMTPError) as err:
        headers.check_single(fields)
    assert (err.value.code, err.value.enhanced) == (550, "5.6.0") and f"one {refused} header" in err.value.public


# Values made of the pieces a From field is written with: the common forms and everything that must
# leave the regular expression's way (quotes, comments, groups, commas, routes, literals, UTF-8).
_FROM_PIECES = ["app@example.com", "a.b@x.example", "Shop", "Jörg", " ", "\t", "<", ">", "@", ".", ",", ";", ":", "\"", "(", ")",
                "[", "]", "\\", "x", "-", "'", "=?utf-8?q?Caf=C3=A9?=", "<app@example.com>", "\"Shop, Inc\""]


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.lists(st.lists(st.sampled_from(_FROM_PIECES), max_size=8).map("".join), min_size=1, max_size=2))
@example(["Bench <app@bench.test>"])
@example(["  app@bench.test  "])
@example(["<a@b.example>", "Team <t@b.example>"])
@example(["Bench <app@bench.test"])
def test_from_addresses_are_getaddresses(values):
    """headers.mailbox_addresses reads plain mailboxes itself: the same addresses as email.utils."""
    assert mailbox_addresses(values) == [addr for _, addr in getaddresses(values) if addr]


def test_plain_mailboxes_do_not_reach_the_email_parser(monkeypatch):
    """The point of the fast path: the common From forms never call getaddresses."""
    import gateway.headers

    def refuse(values):
        raise AssertionError(f"getaddresses called for {values}")

    monkeypatch.setattr(gateway.headers, "getaddresses", refuse)
    assert mailbox_addresses(["Bench <app@bench.test>", "app@bench.test", "\t<x.y@a-b.example> "]) == [
        "app@bench.test", "app@bench.test", "x.y@a-b.example"]
