"""The pure parts of mailbox polling: incoming settings, UID sets, FETCH parsing, spool spelling, backoff."""

from __future__ import annotations

import pytest

from gateway.config import PollerConfig
from gateway.errors import InvalidArgument
from gateway.inbound.imap import _items, _set
from gateway.inbound.mailbox import Incoming, check, crlf, header_message_id
from gateway.inbound.poller import _groups, backoff

BASE = {"protocol": "imap", "host": "imap.example.net", "username": "support@acme.test", "usecase": "helpdesk"}


def test_defaults_are_filled_in():
    s = check(BASE)
    assert s == {**BASE, "port": 993, "tls": "implicit", "verify_tls": True, "folder": "INBOX", "after": "seen", "enabled": True}
    assert check({**BASE, "tls": "starttls"})["port"] == 143
    assert check({**BASE, "protocol": "pop3", "after": "delete"})["port"] == 995
    assert "folder" not in check({**BASE, "protocol": "pop3"})
    assert check({**BASE, "address": "Help@Acme.Test"})["address"] == "help@acme.test"


@pytest.mark.parametrize("change, text", [
    ({"protocol": "smtp"}, "invalid incoming protocol"),
    ({"host": ""}, "need a host"),
    ({"host": "bad host"}, "host"),
    ({"tls": "none"}, "--insecure-plaintext"),
    ({"tls": "ssl"}, "tls mode"),
    ({"port": 0}, "port must be"),
    ({"username": ""}, "need a username"),
    ({"username": "a\r\nb"}, "username"),
    ({"after": "archive"}, "after must be"),
    ({"after": "move:"}, "after must be"),
    ({"after": "move:INBOX"}, "another folder"),
    ({"folder": "a\"b"}, "folder must be"),
    ({"folder": "{13}"}, "folder must be"),
    ({"protocol": "pop3", "after": "move:Done"}, "pop3 cannot move"),
    ({"protocol": "pop3", "folder": "Archive"}, "pop3 has no folders"),
    ({"usecase": None}, "needs a destination"),
    ({"address": "not-an-address"}, "plain address"),
    ({"password": "x"}, "unknown incoming setting"),
])
def test_bad_settings_are_refused_with_a_reason(change, text):
    settings = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(InvalidArgument) as info:
        check(settings)
    assert text in str(info.value)


def test_plaintext_only_when_asked_and_the_password_never_in_repr():
    assert check({**BASE, "tls": "none"}, insecure_plaintext=True)["port"] == 143
    inc = Incoming.from_settings(check(BASE), "s3cret")
    assert "s3cret" not in repr(inc) and inc.mailbox == "imap://support@acme.test@imap.example.net:993/INBOX"
    assert Incoming.from_settings(check({**BASE, "after": "move:Done"}), "").move_to == "Done"


def test_uid_sets_are_ranges():
    assert _set([1]) == "1"
    assert _set([3, 1, 2, 7, 9, 10, 11]) == "1:3,7,9:11"


def test_fetch_items_pair_each_message_with_its_literal():
    lines = [b"1 FETCH (UID 7 RFC822.SIZE 40 BODY[] {5}", bytearray(b"hello"), b")",
             b"2 FETCH (FLAGS (\\Seen) UID 9)", b"3 FETCH (BODY[] {2}", bytearray(b"hi"), b" UID 12)",
             b"Fetch completed."]
    items = _items(lines)
    assert [i[1] for i in items] == [b"hello", b"", b"hi"]
    assert b"UID 12" in items[2][0]   # a server may name the UID after the literal


def test_spool_spelling():
    assert crlf(b"a\nb\r\nc\n") == b"a\r\nb\r\nc\r\n"
    raw = b"a\r\nb\r\n"
    assert crlf(raw) is raw
    assert header_message_id(b"Subject: x\r\nMessage-ID:\r\n <abc@d.example> \r\n\r\nMessage-ID: <body@x>\r\n") == "abc@d.example"
    assert header_message_id(b"Subject: none\r\n\r\n") == ""


def test_backoff_doubles_to_the_cap_and_fetch_groups_respect_the_byte_bound():
    config = PollerConfig(backoff_base=10.0, backoff_max=60.0)
    # Each wait is the doubled base, capped, with +-10% jitter: within that band, every time.
    for _ in range(200):
        for n, expected in ((1, 10), (2, 20), (3, 40), (4, 60), (9, 60)):
            assert 0.9 * expected <= backoff(n, config) <= 1.1 * expected, (n, expected)
    assert backoff(1, PollerConfig(backoff_base=0.0)) == 0.0
    sizes = {1: 10, 2: 10, 3: 100, 4: 5}
    assert _groups([1, 2, 3, 4], sizes, 25) == [[1, 2], [3], [4]]
