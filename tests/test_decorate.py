"""A channel address's header, footer, vCard and reply copy on the prepared message (pure), and the
References chain rebuilt from our records."""

from __future__ import annotations

import email
import email.policy

import pytest

from gateway.headers import split_header
from gateway.submission import prepare
from gateway.submission.decorate import REPLACED, Decorations, decorate, reply_to, vcard

DECO = Decorations(header_text="Hello from Acme", footer_text="-- \nAcme, caf\u00e9 \u20ac", header_html="<p>HEAD</p>",
                   footer_html="<p>caf\u00e9 \u20ac</p>")


def apply(raw: bytes, decorations: Decorations = DECO, card=None) -> bytes:
    parsed = split_header(raw, 65536)
    done = decorate(parsed.fields, parsed.body, decorations, card)
    assert done is not None
    return b"".join(f.raw for f in parsed.fields if f.name not in REPLACED) + b"".join(done.fields) + b"".join(done.body)


def leaves(raw: bytes) -> list[tuple[str, str | None, str]]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert not msg.defects
    out = []
    for part in msg.walk():
        if not part.is_multipart() and part.get_content_type() != "message/rfc822":
            content = part.get_content()
            out.append((part.get_content_type(), part.get_content_disposition(), content if isinstance(content, str) else "<bytes>"))
    return out


NESTED = (b"From: a@acme.test\r\nTo: b@x.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: multipart/mixed; boundary=\"OUT\"\r\n\r\npreamble\r\n--OUT\r\n"
          b"Content-Type: multipart/related; boundary=\"REL\"\r\n\r\n--REL\r\n"
          b"Content-Type: multipart/alternative; boundary=\"ALT\"\r\n\r\n--ALT\r\n"
          b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nH=E9llo\r\n--ALT\r\n"
          b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
          b"PGh0bWw+PEJPRFkgY2xhc3M9Im0iPjxwPkjDqWxsbzwvcD48L0JPRFk+PC9odG1sPg==\r\n--ALT--\r\n"
          b"--REL\r\nContent-Type: image/png\r\nContent-ID: <img1>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--REL--\r\n"
          b"--OUT\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=notes.txt\r\n\r\nattached text\r\n"
          b"--OUT\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@x.test\r\nSubject: fwd\r\nContent-Type: text/plain\r\n\r\nforwarded body\r\n"
          b"--OUT--\r\nepilogue\r\n")


def test_nested_parts_get_the_texts_attachments_and_attached_messages_do_not():
    out = apply(NESTED)
    got = leaves(out)
    plain, html = got[0], got[1]
    assert plain[0] == "text/plain" and plain[2].startswith("Hello from Acme") and "H\u00e9llo" in plain[2]
    assert plain[2].rstrip().endswith("Acme, caf\u00e9 \u20ac")   # iso-8859-1 cannot carry the euro sign: now UTF-8
    assert html[0] == "text/html" and html[2] == '<html><BODY class="m"><p>HEAD</p><p>H\u00e9llo</p><p>caf\u00e9 \u20ac</p></BODY></html>'
    assert ("text/plain", "attachment", "attached text") in got
    assert b"forwarded body\r\n--OUT--" in out and out.count(b"Hello from Acme") == 1
    # Untouched parts are byte for byte what the client sent, preamble and epilogue included.
    for kept in (b"preamble\r\n--OUT\r\n", b"Content-ID: <img1>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--REL--",
                 b"--OUT--\r\nepilogue\r\n", b"From: a@acme.test\r\nTo: b@x.test\r\nSubject: hi\r\n"):
        assert kept in out
    # The HTML part kept its transfer encoding; the plain one its quoted-printable.
    msg = email.message_from_bytes(out, policy=email.policy.default)
    parts = [p for p in msg.walk() if p.get_content_type() in ("text/plain", "text/html")]
    assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable" and parts[0].get_content_charset() == "utf-8"
    assert parts[1]["Content-Transfer-Encoding"] == "base64" and parts[1].get_content_charset() == "utf-8"


def test_html_charset_that_cannot_carry_the_footer_gets_character_references():
    raw = b"From: a@acme.test\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n<p>hi</p>\r\n"
    out = apply(raw)
    assert leaves(out) == [("text/html", None, "<p>HEAD</p><p>hi</p>\r\n<p>caf&#233; &#8364;</p>")]


def test_plain_message_without_mime_headers():
    raw = b"From: a@acme.test\r\nSubject: x\r\n\r\nplain body\r\n"
    out = apply(raw)
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert msg["MIME-Version"] == "1.0" and msg.get_content_charset() == "utf-8"
    assert msg.get_content().replace("\r\n", "\n") == "Hello from Acme\n\nplain body\n\n-- \nAcme, caf\u00e9 \u20ac\n"
    # ASCII-only decorations keep a 7bit message 7bit.
    out = apply(raw, Decorations(footer_text="bye"))
    assert out.endswith(b"\r\n\r\nplain body\r\n\r\nbye\r\n") and b"Content-Transfer-Encoding" not in out


def test_part_in_unknown_charset_or_undecodable_is_left_alone():
    raw = b"From: a@acme.test\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\nbody\r\n"
    parsed = split_header(raw, 65536)
    assert decorate(parsed.fields, parsed.body, DECO) is None
    raw = b"From: a@acme.test\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xff\xfe\r\n"
    parsed = split_header(raw, 65536)
    assert decorate(parsed.fields, parsed.body, DECO) is None


def test_signed_content_and_unknown_transfer_encodings_are_left_whole():
    signed = (b"From: a@acme.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pgp-signature\";"
              b" boundary=\"S\"\r\n\r\n--S\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--S\r\n"
              b"Content-Type: application/pgp-signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\n--S--\r\n")
    parsed = split_header(signed, 65536)
    assert decorate(parsed.fields, parsed.body, DECO) is None
    # With a vCard the signed entity is wrapped whole: its bytes (and its signature) unchanged.
    out = apply(signed, DECO, vcard("A", "a@acme.test"))
    assert signed.split(b"\r\n\r\n", 1)[1] in out and b"Hello from Acme" not in out
    uu = b"From: a@acme.test\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 a\r\nend\r\n"
    parsed = split_header(uu, 65536)
    assert decorate(parsed.fields, parsed.body, DECO) is None


def test_vcard_wraps_the_message_in_multipart_mixed():
    raw = b"From: a@acme.test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody \xc3\xa9\r\n"
    out = apply(raw, Decorations(), vcard("Acme Support \u00e9", "support@acme.test"))
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/mixed" and out.count(b"MIME-Version") == 1
    first, card = msg.get_payload()
    assert first.get_content() == "body \u00e9\r\n"
    assert card.get_content_type() == "text/vcard" and card.get_filename() == "Acme-Support.vcf"
    text = card.get_content()
    assert "FN:Acme Support \u00e9" in text and "EMAIL;TYPE=INTERNET:support@acme.test" in text
    import vobject

    parsed = vobject.readOne(text)
    assert parsed.fn.value == "Acme Support \u00e9" and parsed.email.value == "support@acme.test"


def test_reply_to_added_or_extended():
    fields = split_header(b"From: a@acme.test\r\n\r\n", 1000).fields
    assert reply_to(fields, "desk@acme.test") == b"Reply-To: <desk@acme.test>\r\n"
    fields = split_header(b"From: a@acme.test\r\nReply-To: Team <team@acme.test>\r\n\r\n", 1000).fields
    assert reply_to(fields, "desk@acme.test") == b"Reply-To: Team <team@acme.test>, <desk@acme.test>\r\n"
    fields = split_header(b"From: a@acme.test\r\nReply-To: Desk@Acme.test\r\n\r\n", 1000).fields
    assert reply_to(fields, "desk@acme.test") is None
    fields = split_header(b"From: a@acme.test\r\nReply-To: frontdesk@acme.test\r\n\r\n", 1000).fields
    assert reply_to(fields, "desk@acme.test") is not None


@pytest.mark.parametrize("client, in_reply_to, chain, want", [
    ([], ["in1"], ["out1", "in1"], ["out1", "in1"]),                      # stripped References
    (["in2"], ["in2"], ["out1", "in1", "out2", "in2"], ["out1", "in1", "out2", "in2"]),
    (["old", "out1", "in1"], ["in1"], ["out1", "in1"], None),             # already complete: unchanged
    (["old", "in1", "x"], ["x"], ["out1", "in1"], ["old", "out1", "in1", "x"]),
    (["a"], ["a"], [], None),                                              # nothing recorded
])
def test_references_from_our_records(client, in_reply_to, chain, want):
    assert prepare.references(client, in_reply_to, chain) == want


def test_references_are_bounded_keeping_the_root():
    chain = [f"m{i}" for i in range(150)]
    got = prepare.references([], ["m149"], chain, limit=100)
    assert len(got) == 100 and got[0] == "m0" and got[-1] == "m149" and got[1] == "m51"
    assert prepare.references_field(["a@x", "b@y"]) == b"References: <a@x>\r\n <b@y>\r\n"
