"""Attachment file names as a sender wrote them made safe to show, store and offer for download.

A name arrives decoded (RFC 2231 parameters, encoded words: ``email`` does that) and may be anything
the sender liked: a path (``../../etc/passwd``, ``C:\\x\\y``), control characters and NUL, bidi
overrides that make ``invoice\u202efdp.exe`` look like ``invoiceexe.pdf``, names Windows refuses
(``CON``, trailing dots), or a kilobyte of text. ``sanitise`` keeps what a person would read as the
name and removes the rest; what is left empty gets a fallback (``attachment-3.pdf``) named after
the part's position and content type, never after the sender's input.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata

MAX_BYTES = 200  # UTF-8 bytes: under every common filesystem's 255 with room for a "-2" suffix

# The built-in table only: /etc/mime.types differs between machines, the names must not.
_TYPES = mimetypes.MimeTypes()
_EXTENSIONS = {
    "application/octet-stream": ".bin", "text/plain": ".txt", "text/html": ".html", "image/jpeg": ".jpg",
    "image/png": ".png", "image/gif": ".gif", "application/pdf": ".pdf", "message/rfc822": ".eml",
    "message/global": ".eml", "text/calendar": ".ics", "application/ms-tnef": ".dat", "text/vcard": ".vcf",
    "text/x-vcard": ".vcf", "message/delivery-status": ".txt", "message/global-delivery-status": ".txt",
    "message/disposition-notification": ".txt", "message/feedback-report": ".txt",
    "text/rfc822-headers": ".txt", "application/pgp-signature": ".asc", "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-signature": ".p7s",
}
# Characters Windows refuses in a name, and the separators of every system.
_RESERVED = re.compile(r'[<>:"|?*\\/]')
_WINDOWS_DEVICES = re.compile(r"^(con|prn|aux|nul|com\d|lpt\d)(\..*)?$", re.IGNORECASE)
# Unicode categories never kept: controls (NUL, ESC, DEL, C1), format characters (bidi overrides,
# zero-width joiners), surrogates, unassigned, line and paragraph separators.
_DROP = {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"}


def extension(content_type: str) -> str:
    """The usual file extension for a content type, ``.bin`` when none is known."""
    found = _EXTENSIONS.get(content_type) or _TYPES.guess_extension(content_type, strict=False)
    return found or ".bin"


def fallback(position: int, content_type: str) -> str:
    """The name of an attachment whose sender gave none (or nothing usable): ``attachment-3.pdf``."""
    return f"attachment-{position}{extension(content_type)}"


def sanitise(name: str) -> str:
    """``name`` as a plain file name: no directories, no traversal, no invisible or control
    characters, nothing Windows refuses, at most ``MAX_BYTES``. May return ''."""
    name = unicodedata.normalize("NFC", name)
    # The last path component, whichever separator the sender's system used.
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(" " if c in "\t\n\r" else c for c in name if c in "\t\n\r" or unicodedata.category(c) not in _DROP)
    name = _RESERVED.sub("_", name)
    name = re.sub(r"\s+", " ", name).strip(" .")
    if not name.strip("_"):
        return ""
    if _WINDOWS_DEVICES.match(name):
        name = "_" + name
    return _shorten(name)


def _shorten(name: str) -> str:
    if len(name.encode("utf-8")) <= MAX_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not 0 < len(ext.encode("utf-8")) <= 16:
        stem, ext = name, ""
    suffix = "." + ext if ext else ""
    room = MAX_BYTES - len(suffix.encode("utf-8"))
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(" .")
    return stem + suffix


class Taken(set):
    """The names a message's attachments got so far (lower case), and for each name asked for the
    last number given, so that the k-th attachment of one name costs one lookup, not k (a message
    of a thousand ``a.txt`` would otherwise cost half a million)."""

    def __init__(self) -> None:
        super().__init__()
        self.counters: dict[str, int] = {}


def unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2.ext``, ``name-3.ext``... when an earlier attachment of the message has it
    (compared without case: downloads land on case-insensitive filesystems too). Adds it to ``taken``
    (a ``Taken`` keeps the count per name)."""
    counters: dict[str, int] = getattr(taken, "counters", {})
    key = name.lower()
    candidate, n = name, counters.get(key, 1)
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, dot, ext = name, "", ""
    if n > 1:
        candidate = _numbered(stem, dot, ext, n)
    while candidate.lower() in taken:
        n += 1
        candidate = _numbered(stem, dot, ext, n)
    counters[key] = n
    taken.add(candidate.lower())
    return candidate


def _numbered(stem: str, dot: str, ext: str, n: int) -> str:
    tail = f"-{n}{dot}{ext}"
    room = max(0, MAX_BYTES - len(tail.encode("utf-8")))
    return stem.encode("utf-8")[:room].decode("utf-8", "ignore") + tail
