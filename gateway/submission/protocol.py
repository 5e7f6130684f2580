"""One submission connection: aiosmtpd's ``SMTP`` protocol, adapted where it must not decide for us.

aiosmtpd parses commands and runs the SMTP state machine; this subclass takes over the edges where
its defaults are wrong for a listener facing the internet:

- Command lines are read here (``_next_command``), not in aiosmtpd's loop, so every line is checked
  before dispatch: CRLF ending only (RFC 5321 2.3.8: a bare LF is refused, 500 5.5.2), length, no CR
  or NUL inside, valid UTF-8 (SMTPUTF8 is offered). At debug level each line is logged, AUTH
  arguments masked.
- AUTH prompts are answered through the same bounded line reading (``challenge_auth``): an over-long
  answer is ``500 5.5.6`` (RFC 4954), not a ValueError from asyncio's readline.
- DATA is read by ``data.receive``, charged to the in-flight memory budget as it arrives (452 4.3.1
  past it), into one buffer that is prepared in place.
- Any exception from aiosmtpd's address parsing is a syntax error (``_getaddr``), never a traceback.
- Every reply passes through ``push``: aiosmtpd's own lines get enhanced status codes
  (``replies.enhance``) and every refusal, whoever made it, is logged once and counted. After
  ``MAX_ERRORS`` protocol errors (refusals other than policy's and AUTH verdicts: bad lines, syntax,
  commands out of sequence) the session is closed with 421 4.7.0, which also bounds the log lines
  one connection can cause.
- Plaintext pipelined behind STARTTLS (RFC 3207 4) is refused (554 5.5.1), and a TLS handshake
  that fails after STARTTLS closes the connection: one rate-limited info line either way, since it
  is the client's fault, not an internal error.

Nothing a client sends should reach ``handle_exception``; if something does, the client gets
``451 4.3.0`` and the log the traceback.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import re
import time
from base64 import b64decode, b64encode
from email._header_value_parser import get_addr_spec, get_angle_addr   # aiosmtpd's path parser
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Session, TLSSetupException, sanitize

from .. import logs
from ..errors import SMTPError
from . import data, policy, replies
from .hooks import client_ip
from ..tlsreader import TlsReader

log = logs.get_logger("submission")   # assembled once per configuration (logs.py)

SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down, try again later"
MAX_ERRORS = 10             # protocol errors before the session is closed (as Postfix's smtpd_hard_error_limit)
TOO_MANY_ERRORS = b"421 4.7.0 Too many errors, closing connection"
_GREETING_STEPS = (None, "HELO", "EHLO")  # their 2xx replies carry no enhanced code (RFC 2034)
_BASE64_TOKEN = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_MIN_MASKED_BLOB = 8   # a lone token this long that is no verb is masked anywhere (a password's base64)
# AUTH verdicts: counted here, logged by the authentication code (auth_failed, auth_refused_cooldown).
_AUTH_VERDICTS = (b"535", b"454")
# Replies that may wait for the next one when the client pipelined more commands (RFC 2920 lets
# MAIL, RCPT, RSET and NOOP be sent in a group; DATA's 354, the final dot's reply, QUIT, STARTTLS
# and AUTH are always sent at once). At most MAX_HELD bytes wait.
# A path the header parser would return unchanged: <local@domain>, local a dot-atom of ASCII atext,
# domain ASCII labels (anything else, quoted, routed, literal or UTF-8, takes aiosmtpd's parser).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)>")
_HOLDABLE_STEPS = frozenset({"MAIL", "RCPT", "RSET", "NOOP"})
MAX_HELD = 16384


class _Session(Session):
    """aiosmtpd's Session logs a deprecation warning whenever login_data is set; we keep it quiet."""

    login_data = None  # plain attribute instead of the warning property


class LogThrottle:
    """At most one log line per key per ``interval`` seconds; the lines held back are counted into the next.

    Bounded: past ``max_keys`` remembered keys the oldest half is forgotten."""

    def __init__(self, interval: float, max_keys: int = 4096):
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}

    def allow(self, key: str, now: float | None = None) -> int | None:
        """None: stay quiet; else the number of lines suppressed since the last one logged."""
        now = time.monotonic() if now is None else now
        last, suppressed = self._last.get(key, (None, 0))
        if last is not None and now - last < self.interval:
            self._last[key] = (last, suppressed + 1)
            return None
        if len(self._last) >= self.max_keys:
            for old in list(self._last)[: self.max_keys // 2]:
                del self._last[old]
        self._last[key] = (now, 0)
        return suppressed


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")


class _TlsUp:
    """Stands where aiosmtpd keeps its SSLProtocol once STARTTLS is done: it only reads ``_extra``."""

    def __init__(self, transport: asyncio.BaseTransport):
        self._extra = {key: transport.get_extra_info(key) for key in
                       ("sslcontext", "ssl_object", "peercert", "cipher", "compression", "peername", "sockname")}


class SubmissionSMTP(SMTP):
    """One client connection. ``owner`` is the listener (server.SmtpServer: its ``name`` prefixes the
    log events, its ``refusals`` and ``connections`` metrics, limits, the session set). The MX
    listener's protocol (gateway/inbound/server.py) is this class with AUTH taken away."""

    def __init__(self, handler: Any, *, owner: Any, implicit_tls: bool, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.owner = owner
        self.implicit_tls = implicit_tls
        self.busy = False              # a message is being committed: a close waits for its reply
        self.hangup = False            # we decided to close: nothing more is dispatched, answered or committed
        self._close_reply: bytes | None = None  # a close decided while busy, made after the reply (_close_soon)
        self.step: str | None = None   # the command being answered: the refusal's step in logs and metrics
        self.accounted = False         # the handler logged and counted the refusal about to be pushed
        self.errors = 0                # protocol errors so far (refusals not made by policy)
        self._auth_answers = False     # the lines read now may be answers to an AUTH (_loggable)
        self._held = bytearray()       # replies to pipelined commands not sent yet (push, _write)
        self.commit: asyncio.Future[str] | None = None  # the handler's commit of this DATA (handler._accept)
        # Command lines are logged at debug level: asked once per connection, since structlog's
        # lazy logger binds a new logger for every question (a fortieth of the MX's loop time).
        self._debug = log.is_enabled_for(logging.DEBUG)
        self._idle_until = 0.0         # the command timeout's deadline (_reset_timeout)
        self._idle_at: float | None = None   # when the timer is set to fire, None when none is
        if implicit_tls:
            # The whole connection is TLS: AUTH is allowed at once (aiosmtpd only knows STARTTLS).
            self._auth_require_tls = False

    def _create_session(self) -> Session:
        return _Session(self.loop)

    @property
    def client(self) -> str:
        return client_ip(self)

    def tls_description(self) -> str | None:
        transport = self.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        if sslobj is None:
            return None
        cipher = sslobj.cipher()
        return f"version={sslobj.version()} cipher={cipher[0] if cipher else '?'}"

    # ------------------------------------------------------------------ the connection

    async def _handle_client(self) -> None:
        ip = self.client
        refused = self.owner.counter.admit(ip)
        if refused:
            log.warning(f"{self.owner.name}_connection_refused", client=ip, limit=refused)
            self.owner.refusals.labels(step="CONNECT", code="421").inc()
            self.step, self.accounted = "CONNECT", True
            await self.push("421 4.7.0 Too many connections, try again later")
            self.transport.close()
            return
        self.owner.session_started(self)
        self.owner.connections.inc()
        timer = self.loop.call_later(self.owner.config.session_timeout, self._session_expired)
        try:
            await self._serve()
        finally:
            timer.cancel()
            self.owner.counter.release(ip)
            self.owner.connections.dec()
            self.owner.session_ended(self)

    async def _serve(self) -> None:
        """Greet, then read and dispatch commands until the connection ends."""
        await self.push(f"220 {self.hostname} {self.__ident__}")
        while self.transport is not None and not self.hangup:
            try:
                command = await self._next_command()
                if command is None or self.hangup:  # a close decided while the line was read: not run
                    continue
                verb, arg = command
                self._reset_timeout()
                await self._smtp_methods[verb](arg)
            except asyncio.CancelledError:
                self._writer.close()
                raise
            except (ConnectionError, asyncio.IncompleteReadError):
                self._writer.close()
                return
            except TLSSetupException as exc:
                self._tls_failed(exc)
                return
            except Exception as exc:  # noqa: BLE001 - our bug, not the client's: 451, the traceback to the log
                status = await self.handle_exception(exc)
                if self.transport is not None:
                    await self.push(status)  # nothing once we have hung up (push)

    async def _read_line(self) -> bytes | None:
        """The next line up to LF (at most the reader's limit), or None when it was longer (discarded)."""
        if self._held and b"\n" not in self._reader._buffer:  # noqa: SLF001
            self._write(b"")   # about to wait for the client: it must have every reply first
        try:
            return await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            consumed = exc.consumed
        while True:  # drop the rest of the over-long line, in bounded pieces
            await self._reader.read(consumed)
            try:
                await self._reader.readuntil(b"\n")
                return None
            except asyncio.LimitOverrunError as exc:
                consumed = exc.consumed

    async def _next_command(self) -> tuple[str, str | None] | None:
        """(verb, argument) of the next acceptable command line; None when the line was refused."""
        self.step = "COMMAND"
        line = await self._read_line()
        if line is None:
            return await self._bad_line("500 5.5.2 Command line too long")
        verb_bytes = line.split(b" ", 1)[0].rstrip(b"\r\n").upper()
        verb = verb_bytes.decode("ascii") if verb_bytes.isalpha() and verb_bytes.isascii() else ""
        if self._debug:  # masking the line costs a base64 match: only when it is logged
            log.debug(f"{self.owner.name}_command", client=self.client, line=self._loggable(line, verb))
        if verb in self._smtp_methods:
            self.step = verb
        if not line.endswith(b"\r\n"):
            return await self._bad_line("500 5.5.2 Command line must end with CRLF (RFC 5321 2.3.8)")
        content = line[:-2]
        try:
            policy.check_command_argument(content)
        except SMTPError as err:
            return await self._bad_line(err.reply)
        if not content:
            return await self._bad_line("500 5.5.2 Syntax error, empty command")
        if not verb:
            return await self._bad_line("500 5.5.2 Syntax error, command unrecognized")
        if verb not in self._smtp_methods:
            return await self._bad_line("500 5.5.1 Command unrecognized")
        _, _, arg_bytes = content.partition(b" ")
        arg_bytes = arg_bytes.strip()
        try:
            arg = arg_bytes.decode("utf-8") if arg_bytes else None
        except UnicodeDecodeError:
            return await self._bad_line("501 5.5.2 Command is not valid UTF-8")
        return verb, arg

    def _loggable(self, line: bytes, verb: str) -> str:
        """The command line as the debug log may show it: never what might be a credential. AUTH's
        own argument is masked, and so are the lines after an AUTH while they could be its answers
        (one base64 token each: a refused AUTH, 538 or 454, leaves those the client pipelined
        behind it to be read as commands; "QUIT" is valid base64 too), and any other line that is
        one long base64 token."""
        text = line.rstrip(b"\r\n")
        if verb == "AUTH":
            self._auth_answers = True
            return sanitize(line).rstrip(b"\r\n").decode("utf-8", "replace")
        blob = _BASE64_TOKEN.fullmatch(text) is not None
        if self._auth_answers and blob:
            return f"<{len(text)} bytes masked: may answer an AUTH>"
        self._auth_answers = False
        if blob and len(text) >= _MIN_MASKED_BLOB and verb not in self._smtp_methods:
            return f"<{len(text)} bytes masked: looks like base64>"
        return sanitize(line).rstrip(b"\r\n").decode("utf-8", "replace")

    async def _bad_line(self, reply: str) -> None:
        """Refuse a command line (not dispatched)."""
        await self.push(reply)
        return None

    # ------------------------------------------------------------------ closes we decide

    def _write(self, data: bytes) -> None:
        """Send ``data`` after any replies held back for a pipelined group (push)."""
        if self._held:
            data, self._held = bytes(self._held) + data, bytearray()
        if self.transport is not None:
            self._writer.write(data)

    def _close(self, reply: bytes) -> None:
        """Answer ``reply`` and close. From here on nothing the client sent is acted on: a closing
        TLS transport stays set until connection_lost, and commands pipelined behind the reply are
        already buffered, so ``hangup`` (checked before every dispatch, in DATA and by ``push``) is
        what stops them, not the transport."""
        if self.hangup:
            return
        self.hangup = True
        if self.transport is not None:
            self._write(reply + b"\r\n")
            self.transport.close()

    def _close_soon(self, reply: bytes) -> None:
        """``_close``, but a session committing a message gets its reply first (``push``): a 421
        instead of the 250 of a queued message would make the client send it again."""
        if self.busy:
            self._close_reply = self._close_reply or reply
        else:
            self._close(reply)

    def _closed_by_limit(self, event: str, reply: bytes, limit: float) -> None:
        if self.hangup or self.transport is None:
            return
        log.info(event, client=self.client, step=self.step, limit=limit)
        self.owner.refusals.labels(step=self.step or "COMMAND", code="421").inc()
        self._close_soon(reply)

    def _session_expired(self) -> None:
        self._closed_by_limit(f"{self.owner.name}_session_expired", b"421 4.4.2 Session time limit reached",
                              self.owner.config.session_timeout)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's command timeout, moved instead of replaced: aiosmtpd cancels one timer and
        schedules another for every command; here a command only notes the new deadline, and the
        one timer, when it fires before that, is set again for what is left (``_idle_timer``)."""
        self._idle_until = self.loop.time() + (duration or self._timeout_duration)
        if self._idle_at is None or self._idle_at > self._idle_until:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._idle_at = self._idle_until
            self._timeout_handle = self.loop.call_at(self._idle_at, self._idle_timer)

    def _idle_timer(self) -> None:
        if self.loop.time() < self._idle_until:
            self._idle_at = self._idle_until
            self._timeout_handle = self.loop.call_at(self._idle_at, self._idle_timer)
            return
        self._idle_at = None   # fired: the next command (if any is still read) sets it again
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        """aiosmtpd closes a session idle for the command timeout without a word: say why (as Postfix)."""
        self._closed_by_limit(f"{self.owner.name}_timeout", b"421 4.4.2 Timeout, closing connection", self._timeout_duration)

    def _tls_failed(self, why: TLSSetupException | str) -> None:
        """STARTTLS went wrong by the client's doing: one rate-limited info line, the connection closed."""
        if isinstance(why, str):
            error, exc = why, None
        else:
            cause = why.__cause__
            error, exc = getattr(cause, "reason", None) or type(cause).__name__, why
        suppressed = self.owner.tls_failures.allow(self.client)
        if suppressed is not None:
            log.info(f"{self.owner.name}_tls_failed", client=self.client, error=error, suppressed=suppressed)
        if self.transport is None:
            return
        if exc is None:
            self.owner.refusals.labels(step="STARTTLS", code="554").inc()
            self._close(b"554 5.5.1 Error: improper command pipelining after STARTTLS")
        else:
            self.hangup = True
            self.transport.close()
            # The TLS layer never connected us, so it will not tell us the connection is gone.
            self.connection_lost(exc)

    def shutdown(self) -> None:
        """Daemon stopping: idle sessions are told 421 and closed now; a busy one after its reply."""
        self._close_soon(SHUTDOWN_REPLY)

    # ------------------------------------------------------------------ replies

    async def push(self, status: Any) -> None:
        if self.hangup:
            return  # the client was told we are closing: no reply to anything after that
        if isinstance(status, str):
            status = status.encode("utf-8")
        if not (status[:1] == b"2" and self.step in _GREETING_STEPS):
            status = replies.enhance(status, self.step)
        protocol_error = status[:1] in b"45" and status[3:4] != b"-" and self._account(status)
        self.accounted = False
        if self.step in _HOLDABLE_STEPS and b"\n" in self._reader._buffer and len(self._held) < MAX_HELD:  # noqa: SLF001
            # RFC 2920: the client pipelined more commands, already here; their replies go out
            # together with this one in one write (one syscall and one segment, as Postfix's smtpd).
            self._held += status + b"\r\n"
        else:
            self._write(status + b"\r\n")
            await self._writer.drain()
        if self.transport is None:
            return
        if protocol_error and self.errors >= MAX_ERRORS:
            log.info(f"{self.owner.name}_too_many_errors", client=self.client, errors=self.errors)
            self.owner.refusals.labels(step=self.step or "COMMAND", code="421").inc()
            self._close(TOO_MANY_ERRORS)
        elif self._close_reply is not None and not self.busy:
            self._close(self._close_reply)

    def _account(self, status: bytes) -> bool:
        """Every refusal is logged once and counted; the handler's own are already (``accounted``).
        The rest are protocol errors, counted towards MAX_ERRORS: True for one of those."""
        code = status[:3]
        if self.accounted:
            return False
        step = self.step or "COMMAND"
        self.owner.refusals.labels(step=step, code=code.decode("ascii")).inc()
        if step == "AUTH" and code in _AUTH_VERDICTS:
            return False  # logged by the authentication code, and the cool-down bounds them
        self.errors += 1
        log.info(f"{self.owner.name}_refused", step=step, code=int(code), enhanced=replies.enhanced_code(status),
                 reason=status[4:].decode("utf-8", "replace"), client=self.client)
        return True

    # ------------------------------------------------------------------ aiosmtpd's parsing, made total

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd parses paths with ``email._header_value_parser``, which raises more than the
        HeaderParseError aiosmtpd expects (IndexError on ``<``, AttributeError on ``<a@[``): any
        failure is an unparseable address, answered as a syntax error (replies._BY_STEP). The
        rest is aiosmtpd's ``_getaddr`` step for step, less the class it builds on every MAIL and
        RCPT (tests/test_submission_protocol.py compares the two)."""
        simple = _SIMPLE_PATH.match(arg)
        if simple is not None and "(" not in arg:   # a comment after the path is CFWS to the parser
            # The common case, without the header parser (a tenth of the loop's time under load):
            # <dot-atom@domain> and what follows, exactly as get_angle_addr would split it.
            address = simple.group(1)
            if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
                return None, None
            return address, arg[simple.end():].lstrip()
        # aiosmtpd's own steps, without the typing Protocol class it defines anew on every call.
        if not arg:
            return "", ""
        try:
            address, rest = (get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec)(arg)
            addr = address.addr_spec
        except Exception:  # noqa: BLE001 - whatever the parser trips on, the input was malformed
            return None, None
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    def _getparams(self, params: Any) -> dict[str, str | bool] | None:
        """aiosmtpd's parameter split, with RFC 5321's grammar for what it then reads as numbers:
        ``SIZE=`` is ASCII digits only (aiosmtpd checks ``str.isdigit``, true for '\u00b2', which
        int() refuses, and for other scripts' digits, which int() reads). Keywords are ASCII."""
        result = super()._getparams(params)
        if result is None or not all(key.isascii() for key in result):
            return None
        if "SIZE" in result and policy.ascii_number(result["SIZE"]) is None:
            return None
        return result

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> Any:
        """334 prompt, then the client's answer read like a command line (bounded, CRLF): base64 bytes or MISSING."""
        if isinstance(challenge, str):
            challenge = challenge.encode()
        await self.push(b"334 " + (b64encode(challenge) if encode_to_b64 else challenge))
        line = await self._read_line()
        if self.hangup:
            return MISSING
        if line is None:
            await self.push("500 5.5.6 Authentication exchange line is too long")
            return MISSING
        if not line.endswith(b"\r\n"):
            await self.push("500 5.5.2 Line must end with CRLF (RFC 5321 2.3.8)")
            return MISSING
        blob = line[:-2].strip()
        if blob == b"*":
            await self.push("501 5.7.0 Authentication aborted")
            return MISSING
        try:
            return b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Cannot decode base64")
            return MISSING

    # ------------------------------------------------------------------ commands

    async def smtp_QUIT(self, arg: str) -> None:  # noqa: N802
        await super().smtp_QUIT(arg)
        if not arg:
            self.hangup = True  # 221 said: what the client pipelined after QUIT is not run

    async def smtp_AUTH(self, arg: str) -> None:  # noqa: N802
        """RFC 4954 4: mechanism names are case-insensitive (aiosmtpd looks them up as sent)."""
        if arg:
            mechanism, space, rest = arg.partition(" ")
            if mechanism.isascii():
                arg = mechanism.upper() + space + rest
        await super().smtp_AUTH(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's naming
        """aiosmtpd's STARTTLS, but through ``loop.start_tls``: with uvloop the TLS layer is its C
        implementation instead of asyncio's pure-Python SSLProtocol, which cost about a sixth of the
        loop's time under load (every reply of every message goes through it)."""
        if self._tls_protocol is not None or self.implicit_tls:
            await self.push("503 5.5.1 TLS already active")
            return
        if self._reader._buffer:  # noqa: SLF001 - aiosmtpd's own way to see what is left (connection_made)
            # RFC 3207 4: nothing may follow STARTTLS before the handshake. Bytes already here are
            # plaintext a client pipelined after it (broken, or injecting commands): refuse and close.
            self._tls_failed("plaintext pipelined after STARTTLS")
            return
        if not _is_uvloop(self.loop):
            # On asyncio's own loop start_tls gains nothing (the same SSLProtocol), and its upgrade
            # of a StreamReaderProtocol in place stalls: keep aiosmtpd's way there (tests' loop).
            await super().smtp_STARTTLS(arg)
            return
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 4.7.0 TLS not available")
            return
        await self.push("220 2.0.0 Ready to start TLS")
        plain = self.transport
        try:
            # Through a TlsReader: uvloop then reads into its buffer instead of a new 256 KiB one per read.
            tls = await self.loop.start_tls(plain, TlsReader(self), self.tls_context, server_side=True)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error
        # What aiosmtpd's own STARTTLS leaves behind: the plain transport (closed with the
        # connection), a "TLS is up" marker carrying the TLS extra info, and connection_made's
        # STARTTLS branch (new session, reader and writer on the TLS transport, leftover plaintext
        # discarded as RFC 3207 4.2 asks).
        self._original_transport = plain
        self._tls_protocol = _TlsUp(tls)
        self.connection_made(tls)

    # ------------------------------------------------------------------ DATA, under the memory budget

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802
        """aiosmtpd's DATA with the message read by data.receive: charged to the budget as it arrives."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        reservation = data.Reservation(self.owner.budget)
        try:
            first = data.first_size(self.envelope.declared_size, self.data_size_limit)
            if not reservation.cover(first):
                await self._refuse_data(data.Outcome.NO_MEMORY)
                return
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            outcome, content = await data.receive(self._reader, reservation, size_limit=self.data_size_limit,
                                                  line_limit=self.line_length_limit)
            if self.hangup:
                return  # closed while the message arrived (421 sent): it is not ours to commit
            if outcome is not data.Outcome.RECEIVED:
                self._set_post_data_state()
                await self._refuse_data(outcome)
                return
            # The handler holds the only reference, so it can drop the buffer once it has prepared.
            self.envelope.original_content = self.envelope.content = content
            del content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
        finally:
            commit, self.commit = self.commit, None
            if commit is not None and not commit.done():
                # Cancelled mid-commit (the client hung up): the commit goes on holding the message.
                commit.add_done_callback(lambda _: reservation.release())
            else:
                reservation.release()
        await self.push("250 OK" if status is MISSING else status)

    async def _refuse_data(self, outcome: data.Outcome) -> None:
        if outcome is data.Outcome.NO_MEMORY:
            self.owner.metrics.memory_refusals.inc()
        await self.push(self.event_handler._refuse(self, "DATA", data.refusal(outcome)))  # noqa: SLF001 - our own handler
