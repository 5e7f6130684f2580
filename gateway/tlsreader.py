"""What a TLS transport reads into: one buffer per connection, not a new 256 KiB one per read.

uvloop's SSLProtocol (and asyncio's, which is its port) hands decrypted bytes to a plain
``asyncio.Protocol`` (aiosmtpd's SMTP is a StreamReaderProtocol, the delivery client's is one too)
by calling ``SSLObject.read(262144)`` for every read: a fresh 256 KiB bytes
object, which glibc maps (mmap) and, once the few bytes of a command are in, shrinks (mremap) and
later unmaps (munmap, a TLB shootdown with the daemon's other threads running). Every MAIL, RCPT,
DATA and message of a session paid that: 29.0 -> 3.7 us of CPU per read measured alone
(scripts/bench_cpu.py tls_read), four reads per message.

A protocol that is a ``BufferedProtocol`` (and not a ``Protocol``) gets the other path: uvloop
reads into the buffer ``get_buffer`` returns. ``TlsReader`` is that protocol, standing between the
TLS transport and the SMTP protocol: the bytes read are copied out (a copy of what arrived, a few
bytes for a command) and given to the SMTP protocol's ``data_received``, exactly as uvloop would
have; the connection's other events are passed on unchanged. A read larger than the buffer is
taken in pieces by the transport itself (it reads again on the next loop iteration), so nothing is
lost or reordered. Used by the submission and MX listeners after STARTTLS (protocol.py) and by the
delivery client for STARTTLS and implicit TLS (delivery/smtpclient.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

BUFFER = 32 * 1024   # two full TLS records (16 KiB of plaintext each) per read


class TlsReader(asyncio.BufferedProtocol):
    """The TLS transport's protocol; ``target`` (the SMTP protocol) gets every event."""

    def __init__(self, target: asyncio.Protocol, size: int = BUFFER):
        self.target = target
        self._view = memoryview(bytearray(size))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.target.data_received(self._view[:nbytes].tobytes())

    def connection_made(self, transport: Any) -> None:
        self.target.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.target.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.target.eof_received()

    def pause_writing(self) -> None:
        self.target.pause_writing()

    def resume_writing(self) -> None:
        self.target.resume_writing()
