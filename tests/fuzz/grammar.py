"""SMTP dialogs for the network fuzzer: well-formed ones from a small grammar, then mutated.

``dialog(seed, index, endpoint)`` is a pure function: the same seed and index give the same dialog,
so a finding is replayed by its number (``python -m tests.fuzz.runner --replay N``). 80% of the
dialogs against an endpoint that wants AUTH start with a real STARTTLS (or implicit TLS) and a
successful AUTH, the rest stay before it.

A dialog is a list of steps. ``Send.replies`` is how many replies the bytes call for and ``exact``
whether that count is certain (a mutated line may be one command, two or half of one): the player
waits only for certain counts, and judges a message's verdict only while every count so far held.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field

from tests.fuzz.targets import Endpoint

CRLF = b"\r\n"


@dataclass(frozen=True)
class Send:
    data: bytes
    replies: int = 1
    exact: bool = True
    kind: str = ""            # "data" (the DATA command), "message" (content + dot), "" otherwise
    refuse: str = ""          # a message that must not get 2xx, and why (bare LF, two From...)


@dataclass(frozen=True)
class StartTLS:
    pass


@dataclass(frozen=True)
class Login:
    pass


@dataclass(frozen=True)
class Close:
    abort: bool = False       # an early disconnect (RST) instead of a clean close


@dataclass(frozen=True)
class Finish:
    """End the dialog the polite way: leave DATA / an AUTH challenge if one may be open, QUIT, wait for close."""
    prefix: bytes = b""


@dataclass
class Dialog:
    index: int
    endpoint: str
    authed: bool
    steps: list = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- pieces


def _soup(rng: random.Random, n: int) -> bytes:
    alphabet = b"abc@<>.:;\"\\[]()= ,+-_\t\x00\x7f\x80\xc3\xa9\xff\r\n0123456789"
    return bytes(rng.choice(alphabet) for _ in range(n))


def _address(rng: random.Random, ep: Endpoint, good: str) -> bytes:
    r = rng.random()
    if r < 0.6:
        return good.encode()
    choices = [
        b"", b"<", b"<<>", b"a@", b"@b.example", b"a@@b.example", b"a..b@example.com", b".a@example.com",
        b'"quoted local"@example.com', b'"a\\"b"@example.com', b"a@[127.0.0.1]", b"a@[IPv6:::1]", b"a@[", b"a@b",
        b"x" * 65 + b"@example.com", b"a@" + b"b." * 130 + b"com", b"\xc3\xa9t\xc3\xa9@exampl\xc3\xa9.com", b"a@-b.com",
        b"postmaster", b"a b@example.com", b"a@example.com.", b"@a.example:b@example.com", good.upper().encode(),
    ]
    if r < 0.85:
        return rng.choice(choices)
    return _soup(rng, rng.randint(1, 40))


def _path(rng: random.Random, ep: Endpoint, good: str, verb: bytes) -> bytes:
    addr = _address(rng, ep, good)
    shape = rng.random()
    if shape < 0.7:
        arg = b"<" + addr + b">"
    elif shape < 0.8:
        arg = addr
    elif shape < 0.9:
        arg = b"<" + addr
    else:
        arg = b" <" + addr + b"> "
    return verb + arg


def _mail_params(rng: random.Random) -> bytes:
    params = [b"SIZE=1000", b"SIZE=99999999999", b"SIZE=-1", b"SIZE=abc", b"SIZE=", b"BODY=8BITMIME", b"BODY=7BIT",
              b"BODY=BINARYMIME", b"BODY=junk", b"SMTPUTF8", b"SMTPUTF8=yes", b"AUTH=<>", b"AUTH=app@example.com", b"RET=FULL",
              b"ENVID=abc", b"X=Y", b"=Y", b"X=", b"\xff=\xfe", b"size=10"]
    return b"".join(b" " + rng.choice(params) for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 4])))


def _rcpt_params(rng: random.Random) -> bytes:
    params = [b"NOTIFY=SUCCESS,FAILURE", b"NOTIFY=NEVER", b"NOTIFY=junk", b"ORCPT=rfc822;a@b.example", b"ORCPT=", b"X=Y", b"SMTPUTF8"]
    return b"".join(b" " + rng.choice(params) for _ in range(rng.choice([0, 0, 0, 1, 2])))


def mutate_line(rng: random.Random, line: bytes) -> bytes:
    """One command line (without its CRLF) mutated, with the line ending it gets."""
    op = rng.randrange(12)
    pos = rng.randint(0, len(line))
    if op == 0:
        line = line[:pos] + b"\x00" + line[pos:]
    elif op == 1:
        line = line[:pos] + bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randint(1, 4))) + line[pos:]
    elif op == 2:
        line = line[:pos]
    elif op == 3:
        line = line + b"x" * rng.choice([600, 1000, 1100, 5000, 70000 if rng.random() < 0.05 else 2000])
    elif op == 4:
        line = line.lower() if rng.random() < 0.5 else line.swapcase()
    elif op == 5:
        line = line[:pos] + rng.choice([b" ", b"\t", b"  ", b":", b"<", b">", b"\r", b"\n"]) + line[pos:]
    elif op == 6:
        line = line[:pos] + line[pos:][::-1]
    elif op == 7:
        line = _soup(rng, rng.randint(1, 30))
    ending = rng.choice([CRLF, CRLF, CRLF, b"\n", b"\r", b"", b"\r\r\n", b"\n\r"]) if op >= 8 else CRLF
    return line + ending


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _auth_steps(rng: random.Random, ep: Endpoint) -> tuple[list, bool]:
    """An AUTH attempt (mostly failing); returns the steps and whether a challenge may stay open."""
    user, password = ep.credentials or ("app", "pw")
    blobs = [_b64(b"\0" + user.encode() + b"\0wrong"), _b64(b"\0\0"), _b64(b"x\0y"), b"=", b"*", b"!!!!", b"",
             _b64(b"\0" + b"u" * 300 + b"\0" + b"p" * 2000), _b64(b"\0\xff\xfe\0\xc3("), _soup(rng, 20),
             _b64(b"\0" + user.encode() + b"\0" + password.encode())]
    mech = rng.choice([b"PLAIN", b"PLAIN", b"LOGIN", b"LOGIN", b"CRAM-MD5", b"XOAUTH2", b"", b"plain", b"PLAIN\x00", b"\xff"])
    r = rng.random()
    if r < 0.4:  # initial response
        return [Send(b"AUTH " + mech + b" " + rng.choice(blobs) + CRLF, exact=False)], True
    if r < 0.8 and mech.upper() in (b"PLAIN", b"LOGIN"):  # a challenge, answered (maybe badly)
        answer = rng.choice(blobs)
        if rng.random() < 0.1:
            answer = b"A" * rng.choice([1000, 5000, 70000 if rng.random() < 0.3 else 3000])
        steps = [Send(b"AUTH " + mech + CRLF, exact=True), Send(answer + rng.choice([CRLF, CRLF, b"\n", b""]), exact=False)]
        if mech.upper() == b"LOGIN":
            steps.append(Send(rng.choice(blobs) + CRLF, exact=False))
        return steps, True
    return [Send(mutate_line(rng, b"AUTH " + mech), exact=False)], True


def _commands(rng: random.Random) -> bytes:
    return rng.choice([b"NOOP", b"NOOP x", b"RSET", b"HELP", b"HELP MAIL", b"VRFY app", b"VRFY <a@b>", b"EXPN list",
                       b"EHLO", b"HELO", b"EHLO \xff", b"EHLO a b c", b"HELO [127.0.0.1]", b"BDAT 10", b"ETRN x",
                       b"XCLIENT ADDR=1.2.3.4", b"STARTTLS x", b"DATA x", b"MAIL", b"RCPT", b"MAIL FROM", b"RCPT TO:",
                       b"QUIT x", b"x" * 20, b"", b" ", b"\t", b"MAIL FROM:<", b"RCPT TO:<"])


# --------------------------------------------------------------------------- messages


SINGLETONS = (b"To", b"Cc", b"Subject", b"Date", b"Message-ID")


def _mime(rng: random.Random, depth: int) -> bytes:
    out = b""
    for level in range(depth):
        out += f"--b{level}\r\nContent-Type: multipart/mixed; boundary=b{level + 1}\r\n\r\n".encode()
    out += b"text\r\n"
    for level in reversed(range(depth)):
        out += f"--b{level}--\r\n".encode()
    return out


def _must_refuse(ep: Endpoint, headers: list[bytes], flags: set[str]) -> str:
    """Why the listener must refuse this message, or "": judged on the header as the listener sees it
    (it ends at the first line that is no field; what follows is body)."""
    effective = []
    for h in headers:
        if b":" not in h:
            break
        effective.append(h)
    names = [h.partition(b":")[0].lower() for h in effective]
    if sum(len(h) + 2 for h in effective) > ep.limits.get("max_header_bytes", 1 << 30):
        return "header-too-big"
    if flags:
        return sorted(flags)[0]
    if names.count(b"received") > ep.limits.get("max_received_headers", 1 << 30):
        return "too-many-received"
    if ep.credentials is None:
        return ""  # an MX takes mail from the internet as it comes: defects are recorded, not refused
    if names.count(b"from") != 1:
        return "from-count"
    if any(names.count(n.lower()) > 1 for n in SINGLETONS):
        return "duplicate-singleton"
    return ""


def message(rng: random.Random, ep: Endpoint) -> tuple[bytes, str, bool]:
    """(message bytes without the final dot, why it must be refused or "", whether it is dot-stuffed)."""
    sender = ep.sender
    headers = [b"From: App <" + sender.encode() + b">", b"To: " + ep.recipients[0].encode(), b"Subject: fuzz",
               b"Date: Mon, 1 Jan 2024 00:00:00 +0000", b"Message-ID: <m" + str(rng.randrange(10**9)).encode() + b"@app.example>",
               b"MIME-Version: 1.0"]
    body = [b"Hello.", b"", b".leading dot", b"..two", b"line with trailing space ", b"\xc3\xa9t\xc3\xa9"]
    flags: set[str] = set()
    stuffed = True
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        op = rng.randrange(15)
        if op == 0:
            name = rng.choice([b"Message-ID", b"In-Reply-To", b"References", b"Subject", b"X-Thing", b"From"])
            headers.append(name + b": <" + rng.choice([b"\xc3(", b"\xff\xfe", b"ok", b"\x80"]) + b"@x>")
        elif op == 1:
            headers.append(rng.choice(SINGLETONS) + b": again")
        elif op == 2:
            headers.append(b"X-Huge: " + b"h" * rng.choice([900, 5000, 20000]))
        elif op == 3:
            headers += [b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000"] * rng.choice([3, 11, 60])
        elif op == 4:
            headers = [h for h in headers if not h.startswith(b"From:")]
        elif op == 5:
            headers.append(b"From: other <other@else.example>")
        elif op == 6:
            headers.append(b"X-Folded: a\r\n\tb\r\n  c")
        elif op == 7:
            headers.append(b"no colon here")
        elif op == 8:
            body.append(b"bare LF\nin body")
            flags.add("bare-lf")
        elif op == 9:
            body.append(b"NUL \x00 in body")
            flags.add("nul")
        elif op == 10:
            headers += [b"Content-Type: multipart/mixed; boundary=b0"]
            body.append(_mime(rng, rng.choice([5, 50, 300])))
        elif op == 11:
            body.append(b"y" * rng.choice([998, 1500, 10000]))
        elif op == 12:
            stuffed = False  # a line of one dot ends DATA early: the rest arrives as commands
        elif op == 13:
            body.append(b"bare CR\rin body")
            flags.add("bare-cr")
        else:
            headers.insert(rng.randrange(len(headers) + 1), b"Bcc: hidden@else.example")
    refuse = _must_refuse(ep, headers, flags)
    data = CRLF.join(headers) + CRLF + CRLF + CRLF.join(body) + CRLF
    if stuffed:
        lines = data.split(CRLF)
        data = CRLF.join(b"." + line if line.startswith(b".") else line for line in lines)
    else:
        data = data.replace(b".leading dot", b".")
    return data, refuse, stuffed


def _transaction(rng: random.Random, ep: Endpoint) -> tuple[list, bool]:
    """MAIL, RCPT..., DATA, message; sometimes pipelined in one write. Returns (steps, maybe still in DATA)."""
    mail = _path(rng, ep, ep.sender, b"MAIL FROM:") + _mail_params(rng)
    rcpts = [_path(rng, ep, rng.choice(ep.recipients), b"RCPT TO:") + _rcpt_params(rng) for _ in range(rng.choice([1, 1, 2, 3, 7]))]
    mutated = rng.random() < 0.25
    lines = [mail, *rcpts]
    i = rng.randrange(len(lines))
    mutated_line = mutate_line(rng, lines[i]) if mutated else b""
    steps: list = []
    if rng.random() < 0.2:  # pipelined burst (RFC 2920): MAIL, RCPTs and DATA in one write
        data = b"".join(line + CRLF for line in lines) + b"DATA\r\n"
        if mutated:
            data = b"".join((mutated_line if j == i else line + CRLF) for j, line in enumerate(lines)) + b"DATA\r\n"
        steps.append(Send(data, replies=len(lines) + 1, exact=not mutated, kind="data"))
    else:
        for j, line in enumerate(lines):
            if mutated and j == i:
                steps.append(Send(mutated_line, exact=False))
            else:
                steps.append(Send(line + CRLF))
        steps.append(Send(b"DATA\r\n", kind="data"))
    body, refuse, stuffed = message(rng, ep)
    if rng.random() < 0.05:  # the client goes away in the middle of the message
        steps.append(Send(body[: rng.randint(0, len(body))], replies=0, exact=False))
        return steps, True
    steps.append(Send(body + b".\r\n", replies=1 if stuffed else 0, exact=stuffed, kind="message", refuse=refuse))
    return steps, not stuffed


# --------------------------------------------------------------------------- dialogs


def dialog(seed: int, index: int, ep: Endpoint) -> Dialog:
    rng = random.Random(f"{seed}:{ep.name}:{index}")
    authed = ep.credentials is not None and rng.random() < 0.8
    d = Dialog(index=index, endpoint=ep.name, authed=authed)
    steps = d.steps
    in_tls = ep.tls == "implicit"
    if ep.tls == "starttls" and (authed or rng.random() < 0.3):
        if not authed and rng.random() < 0.3:
            # STARTTLS with plaintext pipelined behind it (RFC 3207 4.2: to be discarded)
            steps.append(Send(b"EHLO fuzz.example\r\n"))
            steps.append(Send(b"STARTTLS\r\n" + rng.choice([b"NOOP\r\n", b"MAIL FROM:<a@b>\r\n", _soup(rng, 30)]), exact=False))
            steps.append(Close(abort=rng.random() < 0.5))
            d.tags.append("starttls-pipelined")
            return d
        steps.append(Send(b"EHLO fuzz.example\r\n"))
        steps.append(StartTLS())
        in_tls = True
    open_mx = ep.credentials is None  # an MX: anyone may send mail, after EHLO
    if authed:
        steps.append(Login())
        d.tags.append("authed")
    else:
        d.tags.append("tls" if in_tls else "plain")
        if open_mx:
            steps.append(Send(b"EHLO fuzz.example\r\n"))
    pending = False  # a DATA or an AUTH challenge may still wait for more lines
    for _ in range(rng.choice([1, 1, 2, 3, 5, 8])):
        r = rng.random()
        if (authed or open_mx) and r < 0.45:
            more, pending = _transaction(rng, ep)
            d.tags.append("transaction")
        elif r < 0.6:
            more, pending = _auth_steps(rng, ep)
            d.tags.append("auth")
        elif r < 0.8:
            more, pending = [Send(mutate_line(rng, _commands(rng)), exact=False)], False
            d.tags.append("command")
        elif r < 0.9:
            burst = [mutate_line(rng, _commands(rng)) if rng.random() < 0.3 else _commands(rng) + CRLF for _ in range(rng.randint(2, 12))]
            more, pending = [Send(b"".join(burst), exact=False)], False
            d.tags.append("burst")
        else:
            more, pending = [Send(mutate_line(rng, _path(rng, ep, ep.sender, rng.choice([b"MAIL FROM:", b"RCPT TO:"]))), exact=False)], False
            d.tags.append("path")
        steps += more
        if pending:
            break
    if rng.random() < 0.1:
        steps.append(Close(abort=rng.random() < 0.5))
        d.tags.append("disconnect")
    else:
        steps.append(Finish(prefix=b"*\r\n\r\n.\r\n" if pending or any(isinstance(s, Send) and not s.exact for s in steps) else b""))
    return d
