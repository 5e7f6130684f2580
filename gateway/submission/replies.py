"""aiosmtpd's own reply lines as our clients see them: each with an enhanced status code (RFC 3463).

aiosmtpd answers many malformed commands itself ("501 Syntax: MAIL FROM: <address>", "503 Error:
need RCPT command", ...), mostly without an enhanced code, and a few with texts that echo the
client's input. ``enhance`` is the one place they are rewritten; every reply the listener sends
passes through it (``protocol.SubmissionSMTP.push``). Our own replies already carry a code and pass
unchanged. Since we advertise ENHANCEDSTATUSCODES (RFC 2034), every reply but the greeting, the
answers to HELO/EHLO and 3xx continuations has one.

    exact line            a better text for a line aiosmtpd sends verbatim
    (step, exact line)    the same line means different things at different commands
    prefix                lines with variable tails (echoed input is dropped)
    default by code       anything else aiosmtpd may say: the class's usual code for that reply
"""

from __future__ import annotations

import re

_HAS_CODE = re.compile(rb"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")

_EXACT = {
    b"500 Error: bad syntax": b"500 5.5.2 Syntax error, command unrecognized",
    b"500 Error: strict ASCII mode": b"500 5.6.7 Non-ASCII characters need SMTPUTF8",
    b"500 Command line too long": b"500 5.5.2 Command line too long",
    b"500 Line too long (see RFC5321 4.5.3.1.6)": b"500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)",
    b"552 Error: message size exceeds fixed maximum message size": b"552 5.3.4 Message size exceeds fixed maximum message size",
    b"552 Error: Too much mail data": b"552 5.3.4 Message size exceeds fixed maximum message size",
    b"554 Command refused due to lack of security": b"554 5.7.0 Command refused due to lack of security",
    b"530 Must issue a STARTTLS command first": b"530 5.7.0 Must issue a STARTTLS command first",
    b"503 Error: send HELO first": b"503 5.5.1 Send HELO or EHLO first",
    b"503 Error: send EHLO first": b"503 5.5.1 Send EHLO first",
    b"503 Error: nested MAIL command": b"503 5.5.1 Sender already specified",
    b"503 Error: need MAIL command": b"503 5.5.1 Need MAIL command first",
    b"503 Error: need RCPT command": b"503 5.5.1 Need RCPT command first",
    b"503 Already authenticated": b"503 5.5.1 Already authenticated",
    b"500 Error: command 'AUTH' not recognized": b"503 5.5.1 AUTH needs EHLO first",
    b"501 Not enough value": b"501 5.5.4 Syntax: AUTH mechanism [initial-response]",
    b"501 Too many values": b"501 5.5.4 Syntax: AUTH mechanism [initial-response]",
    b"501 Error: BODY can only be one of 7BIT, 8BITMIME": b"501 5.5.4 BODY can only be one of 7BIT, 8BITMIME",
    b"501 Error: SMTPUTF8 takes no arguments": b"501 5.5.4 SMTPUTF8 takes no arguments",
    b"501 Error: SMTPUTF8 disabled": b"501 5.5.4 SMTPUTF8 is not offered here",
    b"555 MAIL FROM parameters not recognized or not implemented": b"555 5.5.4 MAIL FROM parameters not recognized or not implemented",
    b"555 RCPT TO parameters not recognized or not implemented": b"555 5.5.4 RCPT TO parameters not recognized or not implemented",
    b"502 EXPN not implemented": b"502 5.5.1 EXPN not implemented",
    b"454 TLS not available": b"454 4.7.0 TLS not available",
    b"250 OK": b"250 2.0.0 OK",
    b"221 Bye": b"221 2.0.0 Bye",
    b"220 Ready to start TLS": b"220 2.0.0 Ready to start TLS",
}

# aiosmtpd's _getaddr answers this for any address it cannot parse; we make it a syntax error (501).
_BY_STEP = {
    ("MAIL", b"553 5.1.3 Error: malformed address"): b"501 5.1.7 Syntax error in sender address",
    ("RCPT", b"553 5.1.3 Error: malformed address"): b"501 5.1.3 Syntax error in recipient address",
}

_PREFIX = (
    (b"501 Syntax: ", b"501 5.5.4 Syntax: "),
    (b"500 Error: command ", b"500 5.5.1 Command unrecognized"),     # echoed the command: dropped
    (b"502 Could not VRFY ", b"502 5.5.4 Cannot VRFY that address"),  # echoed the address: dropped
    (b"252 Cannot VRFY user", b"252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery"),
    (b"250 Syntax: ", b"250 2.0.0 Syntax: "),
    (b"250 Supported commands: ", b"250 2.0.0 Supported commands: "),
    (b"501 Supported commands: ", b"501 5.5.4 Supported commands: "),
)

_DEFAULT = {
    b"500": b"5.5.2", b"501": b"5.5.4", b"502": b"5.5.1", b"503": b"5.5.1", b"504": b"5.5.4", b"530": b"5.7.0",
    b"552": b"5.3.4", b"553": b"5.1.0", b"555": b"5.5.4", b"454": b"4.7.0", b"421": b"4.3.0", b"451": b"4.3.0",
}


def enhance(line: bytes, step: str | None) -> bytes:
    """``line`` with an enhanced status code; lines that carry one, and 3xx, are returned as they are."""
    better = _BY_STEP.get((step, line))
    if better is not None:
        return better
    if line[:1] not in b"245" or _HAS_CODE.match(line):
        return line
    better = _EXACT.get(line)
    if better is not None:
        return better
    for prefix, replacement in _PREFIX:
        if line.startswith(prefix):
            # Prefixes ending in a space keep aiosmtpd's tail (a syntax hint); the others replace the line.
            return replacement + line[len(prefix):] if prefix.endswith(b": ") else replacement
    code, text = line[:3], line[4:]
    enhanced = _DEFAULT.get(code, code[:1] + b".0.0")
    return code + b" " + enhanced + (b" " + text if text else b"")


def enhanced_code(line: bytes) -> str:
    """The enhanced code of a reply line ("5.5.2"), or "" when it has none."""
    match = _HAS_CODE.match(line)
    return line[4:match.end()].strip().decode("ascii") if match else ""
