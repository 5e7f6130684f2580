"""Pure parts of submission: policy predicates, VERP, counters, queue ids."""

from __future__ import annotations

import asyncio

import pytest

from gateway import verp
from gateway.errors import SMTPError
from gateway.store.queue import QueueIds
from gateway.submission import policy, replies
from gateway.submission.protocol import LogThrottle
from gateway.submission.ratelimit import BUSY, Attempt, AuthCooldown, ConnectionCounter, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("address, ok", [
    ("app@example.com", True),
    ("first.last+tag@sub.example.co.uk", True),
    ('"quoted local"@example.com', True),
    ("user@[192.0.2.1]", True),
    ("user@localhost", True),
    ("a..b@example.com", False),
    (".a@example.com", False),
    ("a@-example.com", False),
    ("a@exa_mple.com", False),
    ("no-at-sign", False),
    ("a@b@example.com", False),
    ("x" * 65 + "@example.com", False),
    ("a@" + "b" * 64 + ".com", False),
    ("a\r@example.com", False),
    ("a@example.com\n", False),
    ("a\x00@example.com", False),
    ("é@example.com", False),
])
def test_mailbox_grammar(address, ok):
    assert (policy.mailbox_problem(address) is None) is ok


@pytest.mark.parametrize("address, problem", [
    ("jörg@example.com", None),
    ("用户@例子.广告", None),
    ("jörg@Bücher.example", None),               # UTS #46 maps the capital
    ('"jö rg"@example.com', None),
    ("app@example.com", None),
    ("a\u00a0b@example.com", "not an RFC 5321 mailbox"),   # white space is not atext
    ("a\x85b@example.com", "not an RFC 5321 mailbox"),     # nor a C1 control
    ("jörg@exa mple.example", "not an RFC 5321 mailbox"),
    ("jörg@bü cher.example", "domain is not a valid internationalised domain name"),
    ("jörg@-bücher.example", "domain is not a valid internationalised domain name"),
    ("ö" * 33 + "@example.com", "local part longer than 64 octets"),  # 66 octets in UTF-8
])
def test_mailbox_grammar_with_smtputf8(address, problem):
    assert policy.mailbox_problem(address, utf8=True) == problem


def test_non_ascii_address_needs_smtputf8():
    with pytest.raises(SMTPError) as err:
        policy.check_recipient_syntax("jörg@example.com")
    assert (err.value.code, err.value.enhanced) == (553, "5.6.7")
    with pytest.raises(SMTPError) as err:
        policy.check_sender_syntax("jörg@example.com")
    assert (err.value.code, err.value.enhanced) == (553, "5.6.7")
    policy.check_recipient_syntax("jörg@example.com", utf8=True)


def test_sender_checks():
    senders = ["app@example.com", "@news.example.com"]
    assert policy.sender_allowed("APP@Example.com", senders)
    assert policy.sender_allowed("anyone@news.example.com", senders)
    assert not policy.sender_allowed("app@evil.example", senders)
    assert not policy.sender_allowed("anyone@example.com", senders)
    with pytest.raises(SMTPError) as err:
        policy.check_envelope_sender("ceo@example.com", senders)
    assert (err.value.code, err.value.enhanced) == (553, "5.7.1")
    with pytest.raises(SMTPError) as err:
        policy.check_header_senders(["app@example.com", "ceo@example.com"], senders)
    assert (err.value.code, err.value.enhanced) == (553, "5.7.1") and "ceo@example.com" in err.value.reason


@pytest.mark.parametrize("ctx, reason", [
    ({"tenant_enabled": False, "outbound_enabled": True, "domain_state": "verified"}, "disabled"),
    ({"tenant_enabled": True, "outbound_enabled": False, "domain_state": "verified"}, "outbound disabled"),
    ({"tenant_enabled": True, "outbound_enabled": True, "domain_state": "pending"}, "is pending"),
    ({"tenant_enabled": True, "outbound_enabled": True, "domain_state": "failing"}, "is failing"),
])
def test_account_refusals(ctx, reason):
    with pytest.raises(SMTPError) as err:
        policy.check_account({"tenant": "acme", "domain": "example.com", **ctx})
    assert (err.value.code, err.value.enhanced) == (550, "5.7.1") and reason in err.value.reason


def test_account_ok():
    policy.check_account({"tenant_enabled": True, "outbound_enabled": True, "domain_state": "verified"})


@pytest.mark.parametrize("fn, args, code, enhanced", [
    (policy.check_size, (5000, 4096), 552, "5.3.4"),
    (policy.check_recipient_count, (2, 2), 452, "4.5.3"),
    (policy.check_quota, (10, 10), 452, "4.5.3"),
    (policy.check_received_count, (51, 50), 554, "5.4.6"),
    (policy.check_line_endings, (b"a\nb\r\n",), 550, "5.6.0"),
    (policy.check_line_endings, (b"a\rb\r\n",), 550, "5.6.0"),
    (policy.check_line_endings, (b"a\r\r\n",), 550, "5.6.0"),
    (policy.check_line_endings, (b"a\x00b\r\n",), 550, "5.6.0"),
    (policy.check_command_argument, ("FROM:<a\rb@x>",), 501, "5.5.2"),
    (policy.check_command_argument, (b"NOOP \x00",), 501, "5.5.2"),
])
def test_refusal_codes(fn, args, code, enhanced):
    with pytest.raises(SMTPError) as err:
        fn(*args)
    assert (err.value.code, err.value.enhanced) == (code, enhanced)
    assert err.value.reason


def test_checks_that_pass():
    policy.check_size(None, 10)
    policy.check_size(10, 10)
    policy.check_recipient_count(1, 2)
    policy.check_quota(5, 0)  # 0 = unlimited
    policy.check_received_count(50, 50)
    policy.check_line_endings(b"a\r\nb\r\n\r\n")
    policy.check_command_argument(None)


def test_queue_ids_are_unique_sortable_and_verp_safe():
    ids = QueueIds()
    made = [ids.new(1_700_000_000.0) for _ in range(1000)] + [ids.new(1_700_000_000.001)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(len(q) == 16 and verp.decode(verp.return_path("b@x.example", q, 0, (1, b"k" * 32))).queue_id == q for q in made[:50])


async def test_rate_limiter_token_bucket():
    clock = Clock()
    rates = RateLimiter(clock)
    assert [await rates.allow("uc", 3) for _ in range(4)] == [True, True, True, False]
    clock.now += 20  # a third of a minute: one token back
    assert await rates.allow("uc", 3) and not await rates.allow("uc", 3)
    assert all([await rates.allow("other", 0) for _ in range(100)])  # 0 = unlimited


def test_auth_cooldown():
    clock = Clock()
    cool = AuthCooldown(3, 60.0, clock=clock)
    assert not cool.failed(cool.reserve("192.0.2.1", "app")) and not cool.failed(cool.reserve("192.0.2.1", "app"))
    assert not cool.blocked("192.0.2.1", "app")
    assert cool.failed(cool.reserve("192.0.2.1", "app")) and cool.blocked("192.0.2.1", "app")
    assert cool.reserve("192.0.2.1", "app") is None
    assert not cool.blocked("192.0.2.2", "app")
    clock.now += 61
    assert not cool.blocked("192.0.2.1", "app")


def test_auth_cooldown_counts_attempts_before_they_are_checked():
    """Slots are taken when an attempt starts: parallel attempts cannot outrun the limit; a success
    gives its slot back; a full set of slots still being checked makes the next attempt wait (BUSY)."""
    clock = Clock()
    cool = AuthCooldown(3, 60.0, address_limit=6, clock=clock)
    pending = [cool.reserve("192.0.2.1", "app") for _ in range(4)]
    assert all(isinstance(a, Attempt) for a in pending[:3]) and pending[3] is BUSY
    cool.succeeded(pending[0])                       # the right password: its slot is free again
    again = cool.reserve("192.0.2.1", "app")
    assert isinstance(again, Attempt)
    # Another login from the same address is not cooled down by this one's attempts ...
    other = [cool.reserve("192.0.2.1", f"user{i}") for i in range(3)]
    assert all(isinstance(a, Attempt) for a in other)
    # ... but the address as a whole has a (looser) limit: 3 counted for app + 3 for the others.
    assert cool.reserve("192.0.2.1", "someone-else") is BUSY
    assert isinstance(cool.reserve("192.0.2.9", "app"), Attempt)
    for attempt in [*other, *pending[1:3], again]:
        cool.failed(attempt)
    # Failures, not pending checks, now fill the address's slots: refused, not waiting.
    assert cool.reserve("192.0.2.1", "someone-else") is None and cool.blocked("192.0.2.1")
    clock.now += 61
    assert isinstance(cool.reserve("192.0.2.1", "someone-else"), Attempt)


async def test_auth_cooldown_waiters_get_in_when_a_check_succeeds():
    cool = AuthCooldown(2, 60.0)
    first, second = cool.reserve("192.0.2.1", "app"), cool.reserve("192.0.2.1", "app")
    waiter = asyncio.ensure_future(cool.begin("192.0.2.1", "app"))
    await asyncio.sleep(0)
    assert not waiter.done()
    cool.succeeded(first)
    third = await waiter
    assert isinstance(third, Attempt)
    cool.failed(second)
    cool.failed(third)
    assert await cool.begin("192.0.2.1", "app") is None  # two failures: refused at once, no waiting


def test_connection_counter():
    c = ConnectionCounter(total=3, per_client=2)
    assert c.admit("a") is None and c.admit("a") is None
    assert c.admit("a") == "client"
    assert c.admit("b") is None
    assert c.admit("c") == "total"
    c.release("a")
    assert c.admit("c") is None and c.total == 3


def test_log_throttle_counts_what_it_held_back():
    throttle = LogThrottle(60.0, max_keys=4)
    assert throttle.allow("a", now=0.0) == 0
    assert throttle.allow("a", now=1.0) is None and throttle.allow("a", now=2.0) is None
    assert throttle.allow("b", now=2.0) == 0
    assert throttle.allow("a", now=61.0) == 2
    for key in "cdefgh":  # bounded: old keys are forgotten, not kept forever
        throttle.allow(key, now=62.0)
    assert len(throttle._last) <= 4


@pytest.mark.parametrize("line, step, expected", [
    (b"503 Error: need RCPT command", "DATA", b"503 5.5.1 Need RCPT command first"),
    (b"501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]", "MAIL", b"501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
    (b'500 Error: command "XYZZY" not recognized', "COMMAND", b"500 5.5.1 Command unrecognized"),
    (b"502 Could not VRFY <evil\x1b[31m>", "VRFY", b"502 5.5.4 Cannot VRFY that address"),
    (b"553 5.1.3 Error: malformed address", "MAIL", b"501 5.1.7 Syntax error in sender address"),
    (b"553 5.1.3 Error: malformed address", "RCPT", b"501 5.1.3 Syntax error in recipient address"),
    (b"250 OK", "NOOP", b"250 2.0.0 OK"),
    (b"599 Something new", "NOOP", b"599 5.0.0 Something new"),          # a line we do not know yet
    (b"550 5.7.1 Already has one", "MAIL", b"550 5.7.1 Already has one"),  # ours: unchanged
    (b"334 VXNlcm5hbWU6", "AUTH", b"334 VXNlcm5hbWU6"),                     # continuations carry none
])
def test_aiosmtpd_replies_get_enhanced_codes(line, step, expected):
    assert replies.enhance(line, step) == expected


def test_every_literal_aiosmtpd_reply_is_mapped():
    """aiosmtpd's own reply texts (read from its source) all come out with an enhanced code."""
    import re
    from pathlib import Path

    import aiosmtpd.smtp

    source = Path(aiosmtpd.smtp.__file__).read_text()
    literals = {m.group(2) for m in re.finditer(r"""push\(\s*f?(['"])([2-5]\d\d [^'"{]*)\1""", source)}
    assert len(literals) > 30
    for text in literals:
        out = replies.enhance(text.encode(), "MAIL")
        assert replies.enhanced_code(out) or out.startswith((b"354", b"334")), (text, out)
