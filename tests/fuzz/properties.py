"""Property checks over the pure parsers and policy functions, one per function under test.

Each ``check_*`` takes plain values, calls the code under test and raises AssertionError when a
property does not hold: only the documented error type, round trips that come back, agreement with
a reference implementation (dkimpy, the ``email`` package). The hypothesis tests and the atheris
harness feed them; a failing input found by either is a regular test (tests/data/fuzz/ or a unit test).
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from collections.abc import Callable

import dkim
from dkim.canonicalization import Relaxed

from gateway.delivery import dkim as ours
from gateway.delivery.dsn import FailedRecipient, build_dsn, original_headers
from gateway.delivery.reply import split_enhanced
from gateway.delivery.smtpclient import MAX_LINE, SmtpReply, _Protocol, format_data
from gateway.domains import names
from gateway.errors import InvalidArgument, SMTPError
from gateway.submission import policy, prepare
from gateway import verp

CRLF = b"\r\n"
ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


def _smtp_error(err: SMTPError, code: int | None = None, enhanced: str | None = None) -> None:
    assert 400 <= err.code < 600, err
    assert ENHANCED.match(err.enhanced) and err.enhanced[0] == str(err.code)[0], err
    assert code is None or err.code == code, err
    assert enhanced is None or err.enhanced == enhanced, err
    assert "\r" not in err.reply and "\n" not in err.reply, err


# --------------------------------------------------------------------------- submission policy


def check_mailbox(address: str) -> None:
    """mailbox_problem never raises; what it accepts is short ASCII with one '@'; the check raises SMTPError only
    (553 with the step's syntax code, or 553 5.6.7 for a non-ASCII address sent without SMTPUTF8)."""
    problem = policy.mailbox_problem(address)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert address.isascii() and len(address) <= policy.MAX_PATH and "@" in address
        assert not any(c in address for c in "\r\n\x00 <>")
        local, _, domain = address.rpartition("@")
        assert 0 < len(local) <= policy.MAX_LOCAL and 0 < len(domain) <= policy.MAX_DOMAIN
    for check, enhanced in ((policy.check_sender_syntax, "5.1.7"), (policy.check_recipient_syntax, "5.1.3")):
        try:
            check(address)
        except SMTPError as err:
            assert problem is not None
            _smtp_error(err, 553, "5.6.7" if problem == policy.NEEDS_SMTPUTF8 else enhanced)
        else:
            assert problem is None


def check_valid_mailbox(address: str) -> None:
    """An address built from the RFC 5321 grammar within the length limits is accepted, in any case."""
    assert policy.mailbox_problem(address) is None, address
    assert policy.sender_allowed(address, [address.upper()])
    assert policy.sender_allowed(address, ["@" + address.rpartition("@")[2].upper()])


def check_command_argument(arg: str) -> None:
    try:
        policy.check_command_argument(arg)
    except SMTPError as err:
        _smtp_error(err, 501, "5.5.2")
        assert any(c in arg for c in "\r\n\x00")
    else:
        assert not any(c in arg for c in "\r\n\x00")


def check_line_endings(data: bytes) -> None:
    bad = data.count(b"\n") != data.count(CRLF) or data.count(b"\r") != data.count(CRLF) or b"\x00" in data
    try:
        policy.check_line_endings(data)
    except SMTPError as err:
        _smtp_error(err, 550, "5.6.0")
        assert bad
    else:
        assert not bad


# --------------------------------------------------------------------------- submission headers


def check_split_header(data: bytes, max_header_bytes: int = 1 << 20) -> None:
    """The header block splits into fields whose raw bytes, with the body, give the message back."""
    try:
        parsed = prepare.split_header(data, max_header_bytes)
    except SMTPError as err:
        _smtp_error(err, 552, "5.3.4")
        return
    rebuilt = b"".join(f.raw for f in parsed.fields)
    for f in parsed.fields:
        assert f.raw.endswith(CRLF) and f.name == f.name.lower() and f.name
        try:
            value = f.value
        except SMTPError as err:   # a value that is not UTF-8 is refused naming its field (gateway/headers.py)
            _smtp_error(err, 550, "5.6.0")
            assert "not valid UTF-8" in err.public
            continue
        assert value == value.strip()
    if data.startswith(rebuilt):
        rest = data[len(rebuilt):]
        # the body is what follows, or (a line that is no field ended the header) CRLF + it
        assert bytes(parsed.body) in (rest, CRLF + rest), (data, parsed)
    else:  # the last field lacked its CRLF, which split_header adds
        assert bytes(parsed.body) == b"" and data + CRLF == rebuilt, (data, parsed)


def check_inspect(data: bytes, max_header_bytes: int = 4096) -> None:
    """inspect raises SMTPError only; what it reports agrees with the fields; prepare keeps the body."""
    try:
        found = prepare.inspect(data, max_header_bytes=max_header_bytes)
    except SMTPError as err:
        # too large a header block, or a field we read (From, Message-ID...) that is not UTF-8
        assert (err.code, err.enhanced) in ((552, "5.3.4"), (550, "5.6.0")), err
        _smtp_error(err)
        return
    fields = found.parsed.fields
    assert found.from_fields == sum(f.name == b"from" for f in fields)
    assert found.received == sum(f.name == b"received" for f in fields)
    assert found.has_date == any(f.name == b"date" for f in fields)
    assert len(found.parents) <= prepare.MAX_PARENTS and len(set(found.parents)) == len(found.parents)
    for ident in (found.message_id, *found.parents):
        if ident is not None:
            assert ident and not re.search(r"[<>\s]", ident), ident
    for add in (True, False):
        out = prepare.prepare(found, received=b"Received: from x\r\n", message_id="q@example.com", add_message_id=add, now=0.0)
        again = prepare.inspect(out, max_header_bytes=len(out) + 1)
        names_out = [f.name for f in again.parsed.fields]
        assert names_out[0] == b"received" and b"bcc" not in names_out
        assert again.has_date and again.from_fields == found.from_fields
        if add:
            assert names_out.count(b"message-id") == 1 and again.message_id == "q@example.com"
        assert out.endswith(bytes(found.parsed.body) or CRLF)


def check_identifiers_storable(data: bytes) -> None:
    """Message-ID and parents as inspect returns them can be stored: valid UTF-8, no surrogates (issue 12 #1)."""
    try:
        found = prepare.inspect(data, max_header_bytes=1 << 20)
    except SMTPError:
        return
    for ident in (found.message_id, *found.parents):
        if ident is not None:
            ident.encode("utf-8")  # UnicodeEncodeError: what reached SQLite


def check_safe_helo(helo: str) -> None:
    cleaned = prepare.safe_helo(helo)
    assert cleaned and len(cleaned) <= 255 and re.fullmatch(r"[A-Za-z0-9.\-\[\]:_]+", cleaned), cleaned


# --------------------------------------------------------------------------- DKIM


def _dkimpy_strips_more(name: bytes, value: bytes) -> bool:
    ends = ours.relaxed_header(name, value).partition(b":")[2]
    return ends[:1] in (b"\x0b", b"\x0c", b"\r", b"\n") or ends[-1:] in (b"\x0b", b"\x0c", b"\r", b"\n")


def check_relaxed_header(name: bytes, value: bytes) -> None:
    """Our relaxed header form is dkimpy's (RFC 6376 3.4.2), except where dkimpy strips more than WSP.

    dkimpy's ``bytes.strip()`` also removes VT, FF and lone CR/LF at the ends of a value; RFC 6376 says
    "WSP" (space and tab), which is what we (and OpenDKIM) strip. Such a value is left out here."""
    if _dkimpy_strips_more(name, value):
        return
    (theirs_name, theirs_value), = Relaxed.canonicalize_headers([(name, value + CRLF)])
    assert ours.relaxed_header(name, value) == theirs_name + b":" + theirs_value[:-2], (name, value)


def check_relaxed_body(body: bytes) -> None:
    """Our relaxed body form is dkimpy's (RFC 6376 3.4.4), for CRLF bodies."""
    assert ours.relaxed_body(body) == Relaxed.canonicalize_body(body), body


def check_split_message(message: bytes) -> None:
    """Our header split agrees with dkimpy's parser wherever dkimpy accepts the message."""
    message = ours.to_crlf(message)
    try:
        theirs, their_body = dkim.rfc822_parse(message)
    except (dkim.MessageFormatError, IndexError):  # dkimpy's IndexError: a message opening with a continuation line
        return
    headers, body = ours.split_message(message)
    if any(not re.fullmatch(rb"[\x21-\x39\x3b-\x7e]+", n) for n, _ in headers):
        return  # a name with spaces before the colon: dkimpy splits elsewhere (and rejects such mail)
    assert [(n, v + CRLF) for n, v in headers] == [(bytes(n), bytes(v)) for n, v in theirs], message
    assert body == their_body or (not body and not their_body.strip(CRLF)), (body, their_body)


def check_signature_verifies(signer: ours.Signer, key: ours.SigningKey, dnsfunc: Callable, message: bytes) -> None:
    """Whatever the header and body shapes, dkimpy verifies our signature (when it can parse the mail,
    and no header value ends in VT/FF, where dkimpy strips more than RFC 6376's WSP: see above; and no
    field is written in the obsolete form with WSP before its colon, RFC 5322 4.5.8, which dkimpy does
    not select by its name while we, as RFC 6376 3.4.2 reads, sign it as that name)."""
    fields = ours.split_message(ours.to_crlf(message))[0]
    if any(_dkimpy_strips_more(n, v) for n, v in fields):
        return
    if any(n != n.rstrip(b" \t") for n, _ in fields):
        return
    signed = signer.sign(message, [key], now=1_700_000_000)
    try:
        dkim.rfc822_parse(signed)
    except (dkim.MessageFormatError, IndexError):
        return
    try:
        ok = dkim.DKIM(signed).verify(dnsfunc=dnsfunc)
    except dkim.DKIMException as exc:
        raise AssertionError(f"dkimpy: {exc}: {signed!r}") from None
    assert ok, signed


# --------------------------------------------------------------------------- VERP, domain names


_VERP_KEY = (7, b"fuzz-key" * 4)


def check_verp_round_trip(local: str, domain: str, queue_id: str, index: int) -> None:
    base = f"{local}@{domain}"
    if policy.mailbox_problem(base) is not None:
        return  # a base is always bounce_address(a verified domain); garbage in, no round trip promised
    try:
        rp = verp.return_path(base, queue_id, index, _VERP_KEY)
    except ValueError:
        return  # documented: a too long local part, a '+' in the base, not a queue id
    tag = verp.decode(rp)
    assert tag is not None and verp.verify(tag, dict([_VERP_KEY])), rp
    want = verp.VerpTag(queue_id.lower(), index, f"{local.lower()}@{domain.lower()}", _VERP_KEY[0], tag.mac)
    assert tag == want, (rp, tag)
    assert verp.decode(rp.upper()) == want and verp.decode(f"<{rp}>") == want
    assert not verp.verify(verp.VerpTag(tag.queue_id, tag.recipient_index + 1, tag.base, tag.key_id, tag.mac), dict([_VERP_KEY]))
    assert len(rp.rpartition("@")[0]) <= verp.MAX_LOCAL


def check_verp_decode(address: str) -> None:
    tag = verp.decode(address)
    if tag is not None:
        assert tag.recipient_index >= 0 and tag.queue_id == tag.queue_id.lower() and "@" in tag.base


def check_domain(raw: str) -> None:
    """normalise_domain raises InvalidArgument only; its result is a fixed point; display_domain never raises."""
    try:
        name = names.normalise_domain(raw)
    except InvalidArgument:
        return
    assert name.isascii() and name == name.lower() and len(name) <= 253 and not name.endswith("."), name
    assert names.normalise_domain(name) == name
    shown = names.display_domain(name)
    assert names.normalise_domain(shown) == name, (raw, name, shown)


def check_address(raw: str) -> None:
    try:
        address = names.normalise_address(raw)
    except InvalidArgument:
        return
    assert names.normalise_address(address) == address and len(address) <= 254
    assert policy.mailbox_problem(address) is None, address  # what we store, submission accepts


# --------------------------------------------------------------------------- DSN


def check_dsn(original: bytes, envelope_from: str, failed: list[FailedRecipient]) -> None:
    """A DSN is 7-bit, lines of at most 998 octets, and parses as multipart/report naming every recipient."""
    message, message_id = build_dsn(original=original, queue_id="0h3k9x2a7mq4rt5b", arrival=0.0, envelope_from=envelope_from,
                                    failed=failed, reporting_mta="mx.example.com", sender="postmaster@example.com", now=1.0)
    assert message_id.endswith("@mx.example.com")
    generated = message.replace(original_headers(original), b"")
    assert all(b < 0x80 for b in generated), "8-bit byte in the generated part"
    long_lines = [line for line in generated.split(CRLF) if len(line) > 998]
    assert not long_lines, f"{len(long_lines)} lines over 998 octets, longest {max(map(len, long_lines))}"
    parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(message)
    assert parsed.get_content_type() == "multipart/report"
    parts = parsed.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]


# --------------------------------------------------------------------------- SMTP client replies


def parse_replies(chunks: list[bytes]) -> tuple[list[SmtpReply], str | None]:
    """What the delivery client makes of the server's bytes arriving in these chunks."""
    proto = _Protocol(None)  # type: ignore[arg-type] - the loop is only stored; no transport: nothing to abort
    for chunk in chunks:
        proto.data_received(chunk)
        if proto.error is not None:
            break
    return list(proto.replies), (type(proto.error).__name__ if proto.error else None)


def check_reply_parsing(data: bytes, cuts: list[int]) -> None:
    """Never an exception out of data_received; the same replies however the bytes are chunked."""
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    whole, whole_error = parse_replies([data])
    split, split_error = parse_replies(chunks)
    for reply in whole + split:
        assert 0 <= reply.code <= 999
    # A line within MAX_LINE - 1 octets is judged alike however it arrives (the buffer check sees its CR too).
    if all(len(line) < MAX_LINE for line in data.split(b"\n")):
        assert whole == split and whole_error == split_error, (data, cuts)


def check_split_enhanced(text: str) -> None:
    enhanced, rest = split_enhanced(text)
    assert enhanced == "" or ENHANCED.match(enhanced)
    assert "\r" not in rest and "\n" not in rest


def check_format_data(data: bytes) -> None:
    """On the wire: CRLF lines, dot-stuffed, one terminating dot; un-stuffing gives the CRLF message back."""
    wire = format_data(data)
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[:-3]
    lines = body.split(CRLF)
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    unstuffed = CRLF.join(line[1:] if line.startswith(b".") else line for line in lines)
    normal = ours.to_crlf(data)
    if normal and not normal.endswith(CRLF):
        normal += CRLF
    assert unstuffed == normal, (data, wire)
