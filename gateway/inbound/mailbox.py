"""A connector's incoming settings and what the IMAP and POP3 clients share.

Incoming settings live in the connector's ``settings`` JSON under ``incoming``:

    {protocol: imap|pop3, host, port, tls: implicit|starttls|none, verify_tls, username,
     folder (IMAP, default INBOX), after: seen|move:FOLDER|delete, enabled, usecase, address}

The password is the connector's ``incoming_secret``. ``tls none`` is refused unless the caller says
``insecure_plaintext`` (the password would cross the network in clear). POP3 has no folders and no
flags: ``after seen`` keeps the message on the server (the UIDL checkpoint remembers it), and
``move`` is refused.

``Incoming`` is the checked form the poller runs with; ``check`` validates what an operator gives.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
import ssl
from dataclasses import dataclass
from typing import Any

from .. import validate
from ..errors import GatewayError, InvalidArgument

PROTOCOLS = ("imap", "pop3")
TLS_MODES = ("implicit", "starttls", "none")
DEFAULT_PORTS = {("imap", "implicit"): 993, ("imap", "starttls"): 143, ("imap", "none"): 143,
                 ("pop3", "implicit"): 995, ("pop3", "starttls"): 110, ("pop3", "none"): 110}
KEYS = ("protocol", "host", "port", "tls", "verify_tls", "username", "folder", "after", "enabled", "usecase", "address")
ADDRESS = re.compile(r"^[^@\s<>\"]{1,64}@[A-Za-z0-9.-]{1,253}$")
# IMAP mailbox names as we accept them: printable, no quoting tricks (aioimaplib sends them as atoms).
FOLDER = re.compile(r"^[A-Za-z0-9._/ -]{1,200}$")


class MailboxError(GatewayError):
    """A mailbox session failed: connect, TLS, login, folder or a command. ``step`` names which; the
    message is safe to show (it never carries the password)."""

    def __init__(self, step: str, message: str):
        self.step = step
        super().__init__(message)


class MailboxAuthError(MailboxError):
    """The server refused the login (a wrong password is the operator's fix, not a reason to hammer)."""


@dataclass(frozen=True, kw_only=True)
class Incoming:
    protocol: str
    host: str
    port: int
    tls: str
    username: str
    password: str
    verify_tls: bool = True
    folder: str = "INBOX"
    after: str = "seen"              # seen | move:FOLDER | delete
    usecase: str = ""
    address: str = ""

    def __repr__(self) -> str:
        return f"Incoming({self.protocol}://{self.username}@{self.host}:{self.port}/{self.folder})"

    @property
    def mailbox(self) -> str:
        """What a checkpoint is about: another user, server or folder is another mailbox."""
        folder = f"/{self.folder}" if self.protocol == "imap" else ""
        return f"{self.protocol}://{self.username}@{self.host}:{self.port}{folder}"

    @property
    def move_to(self) -> str:
        return self.after.partition(":")[2] if self.after.startswith("move:") else ""

    @property
    def client(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_settings(cls, incoming: dict[str, Any], password: str) -> "Incoming":
        protocol = incoming["protocol"]
        tls = incoming.get("tls", "implicit")
        return cls(protocol=protocol, host=incoming["host"], port=int(incoming.get("port") or DEFAULT_PORTS[(protocol, tls)]),
                   tls=tls, username=incoming.get("username", ""), password=password,
                   verify_tls=bool(incoming.get("verify_tls", True)), folder=incoming.get("folder", "INBOX"),
                   after=incoming.get("after", "seen"), usecase=incoming.get("usecase", ""), address=incoming.get("address", ""))


def check(incoming: dict[str, Any], *, insecure_plaintext: bool = False) -> dict[str, Any]:
    """The complete incoming settings, defaults filled in; InvalidArgument names what is wrong."""
    unknown = sorted(set(incoming) - set(KEYS))
    if unknown:
        raise InvalidArgument(f"unknown incoming setting(s): {', '.join(validate.shown(k) for k in unknown[:5])}")
    s = dict(incoming)
    protocol = validate.choice(s.get("protocol"), "incoming protocol", PROTOCOLS)
    if not s.get("host"):
        raise InvalidArgument("incoming settings need a host")
    validate.host(s["host"])
    s["tls"] = validate.choice(s.get("tls") or "implicit", "incoming tls mode", TLS_MODES)
    if s["tls"] == "none" and not insecure_plaintext:
        raise InvalidArgument("tls none sends the mailbox password in clear: say --insecure-plaintext to allow it")
    s["port"] = validate.integer(s.get("port") or DEFAULT_PORTS[(protocol, s["tls"])], "port", low=1, high=65535)
    if not s.get("username"):
        raise InvalidArgument("incoming settings need a username")
    validate.line(s["username"], "username", max_len=validate.MAX_HOST)
    s["verify_tls"] = bool(s.get("verify_tls", True))
    after = s.get("after") or "seen"
    if after not in ("seen", "delete") and not (after.startswith("move:") and FOLDER.match(after[5:])):
        raise InvalidArgument(f"after must be seen, delete or move:FOLDER, got {validate.shown(after)}")
    s["after"] = after
    if protocol == "imap":
        folder = s.get("folder") or "INBOX"
        if not FOLDER.match(folder):
            raise InvalidArgument(f"folder must be a plain mailbox name (letters, digits, . _ / - space), got {validate.shown(folder)}")
        if after == f"move:{folder}":
            raise InvalidArgument("after move: needs another folder than the one polled")
        s["folder"] = folder
    else:
        if s.get("folder") not in (None, "", "INBOX"):
            raise InvalidArgument("pop3 has no folders")
        s.pop("folder", None)
        if after.startswith("move:"):
            raise InvalidArgument("pop3 cannot move messages: after must be seen (keep them) or delete")
    s["enabled"] = bool(s.get("enabled", True))
    if s.get("address"):
        if not (len(s["address"]) <= 254 and ADDRESS.match(s["address"])):
            raise InvalidArgument(f"address must be a plain address (local@domain), got {validate.shown(s['address'])}")
        s["address"] = s["address"].lower()
    else:
        s.pop("address", None)
    if s.get("usecase"):
        validate.name(s["usecase"], "use case")
    else:
        s.pop("usecase", None)
    if not s.get("usecase") and not s.get("address"):
        raise InvalidArgument("incoming mail needs a destination: --usecase NAME or --address ADDRESS (a channel address)")
    for key, value in s.items():
        if isinstance(value, str) and validate.unprintable(value):
            raise InvalidArgument(f"{key} must not contain CR, LF, NUL or other control characters")
    return {k: s[k] for k in KEYS if k in s}


def tls_context(incoming: Incoming, ca_file: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    if not incoming.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def describe_tls(obj: Any) -> str:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384' of an SSLObject/SSLSocket, for the test step's detail."""
    try:
        cipher = obj.cipher()
        return f"{obj.version()} {cipher[0] if cipher else ''}".strip()
    except (AttributeError, ValueError):
        return "TLS"


_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)


def header_message_id(raw: bytes) -> str:
    """The Message-ID header without <>, '' when none (the spool's spelling)."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    value = _HEADERS.parsebytes(head).get("Message-ID", "")
    return " ".join(str(value).split()).strip().strip("<>").strip()[:998]


def crlf(raw: bytes) -> bytes:
    """Line ends as the spool keeps them (CRLF), whatever the server stored."""
    if b"\n" not in raw.replace(b"\r\n", b""):
        return raw
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def describe(exc: BaseException) -> str:
    """One safe line for an unexpected failure (the class and the library's text)."""
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
