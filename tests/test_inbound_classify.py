"""Classification of inbound mail (gateway/inbound/classify.py), over the bounce and ARF corpus."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gateway.inbound.classify import auto_reply_rule, classify, top_headers

BOUNCES = Path(__file__).parent / "data" / "bounces"
EXPECTED = list(csv.DictReader((BOUNCES / "expected.csv").read_text().splitlines()))
AUTO_REPLIES = {"autoreply-out-of-office.eml"}


@pytest.mark.parametrize("row", EXPECTED, ids=[r["file"] for r in EXPECTED])
def test_every_report_at_a_return_path_is_a_dsn_except_auto_replies(row):
    raw = (BOUNCES / row["file"]).read_bytes()
    c = classify(raw, target="return_path", envelope_to="bounces+0h3k9x2a7mq4rt5b.0@bounces.shop.example.com", mail_from="")
    if row["file"] in AUTO_REPLIES:
        assert c.kind == "auto_reply" and c.report is None
        return
    assert c.kind == "dsn", c.rule
    assert c.report["type"] == "bounce"
    kinds = {b["kind"] for b in c.report["bounces"]}
    assert row["class"] in kinds
    if row["recipient"]:
        assert row["recipient"] in {b["recipient"] for b in c.report["bounces"]}


@pytest.mark.parametrize("name", sorted(p.name for p in (BOUNCES / "arf").glob("*.eml")))
def test_feedback_reports_are_arf_at_any_target(name):
    raw = (BOUNCES / "arf" / name).read_bytes()
    for target in ("feedback", "return_path", "address"):
        c = classify(raw, target=target, mail_from="")
        assert c.kind == "arf", (target, c.rule)
        assert c.report["type"] == "complaint" and c.report["feedback_type"]


def test_a_standard_bounce_at_a_channel_address_is_a_dsn_but_a_customer_mail_is_not():
    raw = (BOUNCES / "gmail-no-such-user.eml").read_bytes()
    assert classify(raw, target="address", mail_from="").kind == "dsn"
    customer = (b"From: Ann <ann@example.org>\r\nTo: help@acme.test\r\nSubject: Delivery of my order failed\r\n"
                b"Message-ID: <c1@example.org>\r\n\r\nMy parcel never arrived, can you help?\r\n")
    # A customer writing about a failed delivery is a message, even with bounce words in the subject.
    assert classify(customer, target="address", mail_from="ann@example.org").kind == "message"
    assert classify(customer, target="address", mail_from="ann@example.org", has_parent=True).kind == "reply"


@pytest.mark.parametrize("header, rule", [
    ("Auto-Submitted: auto-replied", "auto-submitted: auto-replied"),
    ("Auto-Submitted: auto-generated; owner-email=x@example.org", "auto-submitted: auto-generated"),
    ("X-Autoreply: yes", "x-autoreply"),
    ("X-Autorespond: Jane is away", "x-autorespond"),
    ("Precedence: auto_reply", "precedence: auto_reply"),
    ("Subject: Automatic reply: your order", "vacation subject"),
    ("Subject: Out of Office: Re: invoice", "vacation subject"),
    ("Subject: Abwesenheitsnotiz: Ihre Anfrage", "vacation subject"),
    ("Subject: Réponse automatique : commande", "vacation subject"),
])
def test_auto_reply_signals(header, rule):
    raw = f"From: j@example.org\r\nTo: help@acme.test\r\n{header}\r\n\r\nAway.\r\n".encode()
    assert auto_reply_rule(top_headers(raw)) == rule
    assert classify(raw, target="address", mail_from="j@example.org").kind == "auto_reply"


@pytest.mark.parametrize("header", ["Auto-Submitted: no", "Precedence: bulk", "Subject: Vacation booking question",
                                    "Subject: Re: Automatic replies are annoying", "X-Autoreply: no"])
def test_not_auto_replies(header):
    raw = f"From: j@example.org\r\n{header}\r\n\r\nHello.\r\n".encode()
    assert auto_reply_rule(top_headers(raw)) == ""


def test_unsubscribe_needs_the_unsubscribe_target_and_a_token():
    token = "A" * 40
    raw = f"From: r@example.org\r\nTo: unsubscribe@bounces.acme.test\r\nSubject: unsubscribe {token}\r\n\r\n\r\n".encode()
    c = classify(raw, target="unsubscribe", envelope_to="unsubscribe@bounces.acme.test", mail_from="r@example.org")
    assert (c.kind, c.token) == ("unsubscribe", token)
    # The same subject sent to a tenant's channel address is the tenant's mail, not a request to us.
    assert classify(raw, target="address", envelope_to="help@acme.test", mail_from="r@example.org").kind == "message"
    # No token: nothing to act on.
    bare = b"From: r@example.org\r\nSubject: please unsubscribe me\r\n\r\n\r\n"
    assert classify(bare, target="unsubscribe", mail_from="r@example.org").kind == "message"
