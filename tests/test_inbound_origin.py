"""SRS decoding and forwarded-mail attribution, table-driven, with headers as Gmail, Microsoft 365,
Exchange, Postfix+postsrsd and mail clients write them."""

from __future__ import annotations

import pytest

from gateway.inbound.origin import Origin, attribute, envelope_original, srs_decode

US = "support@help.gateway.test"


@pytest.mark.parametrize("address, original", [
    ("SRS0=HHH=TT=customer.test=carol@forwarder.test", "carol@customer.test"),
    ("srs0+x7Kq=2K=customer.test=carol@forwarder.test", "carol@customer.test"),
    ("SRS0-x7Kq=2K=customer.test=carol@forwarder.test", "carol@customer.test"),
    ("SRS0=x7Kq=2K=customer.test=first=last@forwarder.test", "first=last@customer.test"),  # '=' in the local part
    ("<SRS0=x7Kq=2K=customer.test=carol@forwarder.test>", "carol@customer.test"),
    ("SRS1=Ab1x=first.test==x7Kq=2K=customer.test=carol@second.test", "carol@customer.test"),
    ("SRS1=Ab1x=first.test=+x7Kq=2K=customer.test=carol@second.test", "carol@customer.test"),
    ("SRS0=x7Kq=2K=customer.test@forwarder.test", None),   # no local part
    ("SRS0=x7Kq@forwarder.test", None),
    ("SRS1=Ab1x=first.test@second.test", None),
    ("SRS2=a=b=c=d@forwarder.test", None),
    ("carol@customer.test", None),
    ("", None),
])
def test_srs_decode(address, original):
    assert srs_decode(address) == original


@pytest.mark.parametrize("mail_from, expected", [
    ("alice.acme+caf_=support=help.gateway.test@gmail.com", ("", "alice.acme@gmail.com", "gmail")),
    ("bob+SRS=44ldt=IX=customer.test=carol@contoso.test", ("carol@customer.test", "bob@contoso.test", "srs")),
    ("SRS0=x7Kq=2K=customer.test=carol@forwarder.test", ("carol@customer.test", "", "srs")),
    ("carol@customer.test", ("carol@customer.test", "", "")),
    ("", ("", "", "")),
])
def test_envelope_original(mail_from, expected):
    assert envelope_original(mail_from) == expected


GMAIL = """\
Delivered-To: alice.acme@gmail.com
Received: by 2002:a05:6a10:8c0f:b0:5f3:2a1e:7e4c with SMTP id x15csp1802577pxr;
        Tue, 1 Dec 2026 03:04:05 -0800 (PST)
X-Forwarded-To: support@help.gateway.test
X-Forwarded-For: alice.acme@gmail.com support@help.gateway.test
Return-Path: <carol@customer.test>
Received: from mail.customer.test (mail.customer.test. [198.51.100.20])
        by mx.google.com with ESMTPS id a1si123456qkb.12.2026.12.01.03.04.05
        for <alice.acme@gmail.com>; Tue, 01 Dec 2026 03:04:05 -0800 (PST)
From: Carol Customer <carol@customer.test>
To: Acme Support <alice.acme@gmail.com>
Subject: Order 1234 has not arrived
Message-ID: <c1@customer.test>

Hello.
"""

M365_MAILBOX_FORWARD = """\
Received: from DM6PR11MB4657.namprd11.prod.outlook.com (2603:10b6:5:2a8::9) by
 SN6PR11MB2718.namprd11.prod.outlook.com with HTTPS; Tue, 1 Dec 2026 11:04:05 +0000
X-MS-Exchange-ForwardingLoop: bob@contoso.test;72f988bf-86f1-41af-91ab-2d7cd011db47
X-MS-Exchange-CrossTenant-OriginalArrivalTime: 01 Dec 2026 11:04:05.1234 (UTC)
From: "Carol Customer" <carol@customer.test>
To: Bob at Contoso <bob@contoso.test>
Subject: RE: Your quote
Message-ID: <c2@customer.test>
In-Reply-To: <q9@contoso.test>

Hi Bob,
"""

EXCHANGE_INBOX_RULE = """\
Received: from EX01.corp.example.test (10.0.0.5) by EX02.corp.example.test
 (10.0.0.6) with Microsoft SMTP Server (version=TLS1_2) id 15.2.1118.40;
 Tue, 1 Dec 2026 12:04:05 +0100
X-MS-Exchange-Inbox-Rules-Loop: Sales@Corp.Example.Test
X-MS-Exchange-Organization-AutoForwarded: true
From: Carol Customer <carol@customer.test>
To: <sales@corp.example.test>
Subject: Pricing question
Message-ID: <c3@customer.test>

Hi,
"""

POSTSRSD = """\
Return-Path: <SRS0=x7Kq=2K=customer.test=carol@forwarder.test>
Delivered-To: dave@forwarder.test
Received: from mail.customer.test (mail.customer.test [198.51.100.20])
\tby mail.forwarder.test (Postfix) with ESMTPS id 4Rk2Jq0Xz1z9sVb
\tfor <dave@forwarder.test>; Tue,  1 Dec 2026 12:04:05 +0100 (CET)
From: Carol Customer <carol@customer.test>
To: dave@forwarder.test
Subject: Invoice
Message-ID: <c4@customer.test>

See attached.
"""

POSTSRSD_VIRTUAL_ALIAS = POSTSRSD.replace("Delivered-To: dave@forwarder.test\n", "")

RESENT = """\
Resent-From: Dave <dave@forwarder.test>
Resent-To: support@help.gateway.test
Resent-Date: Tue, 01 Dec 2026 12:05:00 +0100
Resent-Message-ID: <r1@forwarder.test>
From: Carol Customer <carol@customer.test>
To: dave@forwarder.test
Subject: Invoice
Message-ID: <c5@customer.test>

See attached.
"""

DIRECT = """\
Received: from mail.customer.test (mail.customer.test [198.51.100.20])
\tby mx.gateway.test with ESMTPS id 3f2a; Tue, 01 Dec 2026 12:04:05 +0000
From: Carol Customer <carol@customer.test>
To: support@help.gateway.test
Subject: Hello
Message-ID: <c6@customer.test>

Hi.
"""


@pytest.mark.parametrize("raw, mail_from, expected", [
    (GMAIL, "alice.acme+caf_=support=help.gateway.test@gmail.com",
     Origin("carol@customer.test", "alice.acme@gmail.com", "", "gmail")),
    (M365_MAILBOX_FORWARD, "bob+SRS=44ldt=IX=customer.test=carol@contoso.test",
     Origin("carol@customer.test", "bob@contoso.test", "carol@customer.test", "exchange")),
    (EXCHANGE_INBOX_RULE, "carol@customer.test",
     Origin("carol@customer.test", "Sales@corp.example.test", "carol@customer.test", "exchange")),
    (POSTSRSD, "SRS0=x7Kq=2K=customer.test=carol@forwarder.test",
     Origin("carol@customer.test", "dave@forwarder.test", "carol@customer.test", "srs")),
    (POSTSRSD_VIRTUAL_ALIAS, "SRS0=x7Kq=2K=customer.test=carol@forwarder.test",
     Origin("carol@customer.test", "dave@forwarder.test", "carol@customer.test", "srs")),
    (RESENT, "dave@forwarder.test",
     Origin("carol@customer.test", "dave@forwarder.test", "dave@forwarder.test", "resent")),
    (DIRECT, "carol@customer.test", Origin("carol@customer.test", "", "carol@customer.test", "")),
    (DIRECT.replace("From: Carol Customer <carol@customer.test>\n", ""), "SRS0=x7Kq=2K=customer.test=carol@forwarder.test",
     Origin("carol@customer.test", "", "carol@customer.test", "srs")),  # no From: SRS undone; no forwarder named
    (DIRECT.replace("From: Carol Customer <carol@customer.test>", "From: undisclosed"), "",
     Origin("", "", "", "")),
], ids=["gmail", "m365-forwarding", "exchange-inbox-rule", "postsrsd-forward", "postsrsd-virtual-alias", "resent",
        "direct", "srs-without-from", "nothing-usable"])
def test_attribution(raw, mail_from, expected):
    for ending in ("\n", "\r\n"):
        message = raw.replace("\n", ending).encode()
        assert attribute(message, mail_from=mail_from, recipients=[US]) == expected


def test_our_own_address_is_never_the_forwarder():
    # X-Forwarded-For names the forwarding mailbox and the new recipient (us): never us.
    raw = GMAIL.replace("X-Forwarded-For: alice.acme@gmail.com support@help.gateway.test",
                        "X-Forwarded-For: support@help.gateway.test alice.acme@gmail.com").encode()
    assert attribute(raw, mail_from="x@gmail.com", recipients=[US]).forwarded_by == "alice.acme@gmail.com"
    raw = RESENT.replace("Resent-From: Dave <dave@forwarder.test>", f"Resent-From: <{US}>").encode()
    assert attribute(raw, mail_from="dave@forwarder.test", recipients=[US.upper()]) == \
        Origin("carol@customer.test", "", "dave@forwarder.test", "")


def test_header_values_that_are_not_addresses_name_no_forwarder():
    raw = EXCHANGE_INBOX_RULE.replace("Sales@Corp.Example.Test", "not an address; x\"y").encode()
    assert attribute(raw, mail_from="carol@customer.test", recipients=[US]).forwarded_by == ""


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe\x00", b"From: \xff@\xfe\r\nResent-From: =?x?q?y?=\r\n\r\n",
                                 b"X-Forwarded-For: " + b"a@b.test " * 2000 + b"\r\n\r\n"])
def test_hostile_headers_give_an_origin(raw):
    origin = attribute(raw, mail_from="SRS0=%%=x=@", recipients=[US])
    assert isinstance(origin, Origin) and "\n" not in origin.sender + origin.forwarded_by
