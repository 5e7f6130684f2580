"""SMTP out: sessions (one TCP connection each, reused for several messages to the same server),
the direct route (recipient domain's MX) and the SMTP relay route (a connector's smarthost).

This is the boundary with the SMTP client (smtpclient.py): its exceptions are translated here, once,
into ``Reply`` values per recipient. A failure to connect, a dropped connection, a timeout or a
garbled reply is temporary; only a 5xx reply to MAIL, RCPT or DATA is permanent. Addresses are
checked for CR, LF and NUL before anything is sent (the client refuses them too).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .. import logs
from ..crlf import has_line_breakers
from .loops import LoopGuard
from .mx import DestinationError, MxResolver
from .reply import Reply, describe_failure
from .smtpclient import SMTPReplyError, SmtpClient, Transaction
from ..errors import DeliveryError

log = logs.get_logger("delivery")   # assembled once per configuration (logs.py)


# Called with each transaction's replies (rcpt -> Reply) the moment that transaction ends, so what a
# remote accepted is known (and recorded) even if the rest of the attempt is cut short.
ReplySink = Callable[[dict[str, Reply]], None]


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpts: tuple[str, ...]


@dataclass(frozen=True)
class SessionOptions:
    helo: str
    connect_timeout: float
    command_timeout: float
    tls: str = "opportunistic"   # off | opportunistic | starttls (required) | implicit
    verify: bool = False         # check the certificate (never for opportunistic TLS)
    username: str = ""
    password: str = field(default="", repr=False)


class SessionError(DeliveryError):
    """Could not get a usable session; ``reply`` is always temporary."""

    def __init__(self, reply: Reply):
        self.reply = reply
        super().__init__(reply.line)


def unsafe_address(address: str) -> bool:
    return has_line_breakers(address)


def _tls_context(verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SmtpSession:
    """One connection to one server. ``steps`` records what ``open`` did (for `connector test`).

    ``guard`` checks the address the connection really reached, for a server given by name (a
    smarthost): a name that resolves to one of our own listeners or to loopback is refused there,
    with the guard's permanent reply, before anything is sent."""

    def __init__(self, address: str, port: int, server_name: str, options: SessionOptions, *, guard: LoopGuard | None = None,
                 target: str = ""):
        self.address, self.port, self.server_name, self.options = address, port, server_name, options
        self.guard, self.target = guard, target
        self.remote = f"{server_name}[{address}]:{port}" if server_name != address else f"[{address}]:{port}"
        self.sent = 0
        self.broken = False
        self.tls = False
        self.steps: list[dict] = []
        self._smtp: SmtpClient | None = None

    @property
    def alive(self) -> bool:
        return self._smtp is not None and not self.broken and self._smtp.connected

    def _step(self, name: str, ok: bool, detail: str) -> None:
        self.steps.append({"step": name, "ok": ok, "detail": " ".join(detail.split())})

    async def open(self) -> None:
        o = self.options
        smtp = self._smtp = SmtpClient(local_hostname=o.helo, timeout=o.command_timeout)
        step = "connect"
        try:
            greeting = await smtp.connect(self.address, self.port, timeout=o.connect_timeout,
                                          tls_context=_tls_context(o.verify) if o.tls == "implicit" else None,
                                          server_hostname=self.server_name)
            self.tls = o.tls == "implicit"
            self._step(step, True, f"{greeting.code} {greeting.message}")
            peer = smtp.peer() if self.guard is not None else None
            refusal = self.guard.refusal(peer[0], peer[1], self.target) if peer is not None else None
            if refusal is not None:
                raise SessionError(refusal)
            step = "ehlo"
            ehlo = await smtp.ehlo()
            self._step(step, True, f"{ehlo.code} {ehlo.message.splitlines()[0] if ehlo.message else ''}")
            if o.tls in ("opportunistic", "starttls"):
                step = "starttls"
                if smtp.supports("starttls"):
                    await smtp.starttls(_tls_context(o.verify), self.server_name)
                    self.tls = True
                    await smtp.ehlo()
                    ssl_obj = smtp.ssl_object()
                    self._step(step, True, ssl_obj.version() if ssl_obj else "TLS")
                elif o.tls == "starttls":
                    raise SessionError(Reply.temporary(f"{self.remote} does not offer STARTTLS", "4.7.4", self.remote))
                else:
                    self._step(step, True, "not offered; continuing without TLS")
            if o.username:
                step = "auth"
                response = await smtp.login(o.username, o.password)
                self._step(step, True, f"{response.code} {response.message}")
        except SessionError as exc:
            self._step(step, False, exc.reply.line)
            self._abort()
            raise
        except SMTPReplyError as exc:
            self._step(step, False, f"{exc.reply.code} {exc.reply.message}")
            self._abort()
            raise SessionError(Reply.temporary(f"{self.remote} {step} failed: {exc.reply.code} {exc.reply.message}", "4.4.2",
                                               self.remote)) from exc
        except Exception as exc:  # noqa: BLE001 - any network/TLS failure: this server, not now
            self._step(step, False, f"{type(exc).__name__}: {exc}")  # operators (connector test) see the detail
            self._abort()
            raise SessionError(Reply.temporary(f"{self.remote} {step} failed: {describe_failure(exc)}", "4.4.1", self.remote)) from exc
        except BaseException:  # cancelled: never leave a half-open connection behind
            self._abort()
            raise

    def _abort(self) -> None:
        self.broken = True
        if self._smtp is not None:
            self._smtp.abort()

    async def close(self) -> None:
        if self._smtp is None:
            return
        if self.alive:
            try:
                await asyncio.wait_for(self._smtp.quit(), self.options.command_timeout)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self._abort()

    async def send(self, envelope: Envelope, data: bytes) -> dict[str, Reply]:
        """One transaction; a Reply for every recipient. Marks the session broken when it is lost."""
        smtp = self._smtp
        if unsafe_address(envelope.mail_from) or any(unsafe_address(r) for r in envelope.rcpts):
            raise ValueError("CR, LF or NUL in an envelope address")  # our own bug: the caller holds the message
        utf8 = not (envelope.mail_from.isascii() and all(r.isascii() for r in envelope.rcpts))
        options, encoding = [], "ascii"
        if utf8:
            if not smtp.supports("smtputf8"):
                reply = Reply.permanent(f"{self.remote} does not support SMTPUTF8, needed for a non-ASCII address", "5.6.7",
                                        self.remote, 553)
                return {r: reply for r in envelope.rcpts}
            options, encoding = ["SMTPUTF8"], "utf-8"
        elif smtp.supports("smtputf8") and not data[:data.find(b"\r\n\r\n") + 2].isascii():
            # UTF-8 header fields (RFC 6532) travel under SMTPUTF8 where it is offered; elsewhere as
            # 8-bit data, as Postfix sends mail its client did not flag SMTPUTF8.
            options = ["SMTPUTF8"]
        if smtp.supports("8bitmime") and not data.isascii():
            options.append("BODY=8BITMIME")
        if smtp.supports("size"):
            options.append(f"SIZE={len(data)}")
        tx = Transaction()
        try:
            await smtp.send_mail(tx, envelope.mail_from, list(envelope.rcpts), data, options=options, encoding=encoding)
        except Exception as exc:  # noqa: BLE001 - lost connection, timeout, garbled reply, anything: temporary
            self._abort()
            log.info("delivery_session_lost", remote=self.remote, stage=tx.stage, error=f"{type(exc).__name__}: {exc}")
            lost = Reply.temporary(f"{self.remote} lost during {tx.stage}: {describe_failure(exc)}", "4.4.2", self.remote)
            return self._results(envelope, tx, lost)
        except BaseException:  # cancelled (the attempt's time budget) or our own bug: the connection is out of step
            self._abort()
            raise
        if tx.final is not None and tx.final.ok:
            self.sent += 1
        results = self._results(envelope, tx, None)
        codes = {r.code for r in results.values()}
        if 421 in codes or tx.mail.code == 421:
            self._abort()  # the server is closing this connection
        elif tx.final is None or 400 <= tx.final.code < 500:
            await self._rset()  # the transaction did not complete: leave the connection clean for the next one
        return results

    def _results(self, envelope: Envelope, tx: Transaction, lost: Reply | None) -> dict[str, Reply]:
        """A Reply per recipient from what the server answered; ``lost`` for those it never answered."""
        results: dict[str, Reply] = {}
        if tx.mail is not None and not tx.mail.ok:
            reply = Reply.from_smtp(tx.mail.code, tx.mail.message, self.remote)
            return {r: reply for r in envelope.rcpts}
        for rcpt, answer in tx.rcpts.items():
            if not answer.ok:
                results[rcpt] = Reply.from_smtp(answer.code, answer.message, self.remote)
        last = tx.final if tx.final is not None else tx.data if tx.data is not None and tx.data.code != 354 else None
        if last is None and lost is None and tx.data is None:
            # RCPT answered 421, or nobody was accepted: the last answer stands for the rest
            answered = list(tx.rcpts.values())
            last = answered[-1] if answered and answered[-1].code == 421 else None
        for rcpt in envelope.rcpts:
            if rcpt in results:
                continue
            if last is not None:
                results[rcpt] = Reply.from_smtp(last.code, last.message, self.remote)
            else:
                results[rcpt] = lost or Reply.temporary(f"{self.remote} gave no reply for this recipient", "4.4.2", self.remote)
        return results

    async def _rset(self) -> None:
        try:
            await self._smtp.rset()
        except Exception:  # noqa: BLE001 - a session that cannot RSET is not reused
            self._abort()


class SessionPool:
    """Idle sessions by key (direct: address, port, tls; relay: ``relay_session_key``), kept ``idle_timeout`` seconds for the next message."""

    def __init__(self, idle_timeout: float, max_messages: int):
        self.idle_timeout = idle_timeout
        self.max_messages = max_messages
        self._idle: dict[tuple, list[tuple[float, SmtpSession]]] = {}
        self._closing: set[asyncio.Task] = set()

    def take(self, key: tuple) -> SmtpSession | None:
        sessions = self._idle.get(key)
        now = time.monotonic()
        while sessions:
            expires, session = sessions.pop()
            if expires > now and session.alive:
                return session
            self._close_later(session)
        return None

    def give(self, key: tuple, session: SmtpSession) -> None:
        if session.alive and session.sent < self.max_messages and self.idle_timeout > 0:
            self._idle.setdefault(key, []).append((time.monotonic() + self.idle_timeout, session))
        else:
            self._close_later(session)

    def _close_later(self, session: SmtpSession) -> None:
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def sweep(self) -> None:
        now = time.monotonic()
        for key in list(self._idle):
            keep = []
            for expires, session in self._idle[key]:
                if expires > now and session.alive:
                    keep.append((expires, session))
                else:
                    self._close_later(session)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    @property
    def idle(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def close_all(self) -> None:
        for sessions in self._idle.values():
            for _, session in sessions:
                self._close_later(session)
        self._idle.clear()
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)


async def send_all(pool: SessionPool, key: tuple, make: "callable", envelopes: Sequence[Envelope],
                   data: bytes, report: ReplySink | None = None) -> dict[str, Reply]:
    """Send every envelope over one session (pooled or new). Raises SessionError when none opens.

    ``report`` gets each transaction's replies as soon as it ends. A pooled session the server
    closed while idle fails on its first command; that transaction is retried once on a fresh
    connection rather than deferred.
    """
    # Checked for every envelope before anything is sent: raising after an earlier envelope went out
    # would hold (and on release resend) recipients the remote already accepted.
    if any(unsafe_address(env.mail_from) or any(unsafe_address(r) for r in env.rcpts) for env in envelopes):
        raise ValueError("CR, LF or NUL in an envelope address")  # our own bug: the caller holds the message
    session = pool.take(key)
    reused = session is not None
    if session is None:
        session = make()
        await session.open()
    results: dict[str, Reply] = {}
    try:
        for env in envelopes:
            if not session.alive:
                session = make()
                await session.open()  # SessionError: the rest is deferred by the caller
                reused = False
            sent_before = session.sent
            got = await session.send(env, data)
            if reused and session.broken and session.sent == sent_before and all(r.code == 451 for r in got.values()):
                session = make()
                await session.open()
                got = await session.send(env, data)
            reused = False
            results.update(got)
            if report is not None:
                report(got)
    except SessionError as exc:
        for env in envelopes:
            for rcpt in env.rcpts:
                results.setdefault(rcpt, exc.reply)
    finally:
        pool.give(key, session)
    return results


@dataclass(frozen=True)
class MxLimits:
    """Bounds on one attempt over an MX list (Postfix's smtp_mx_address_limit, smtp_mx_session_limit)."""

    addresses: int = 5   # addresses tried at most; 0: no limit
    sessions: int = 2    # sessions that got past the greeting and still failed; 0: no limit


class DirectCourier:
    """The `direct` route: the recipient domain's MX hosts in preference order.

    Each address is tried in turn until one session opens. An address that would loop back to the
    gateway is skipped (and when every address loops, the mail bounces 5.4.6); at most
    ``limits.addresses`` addresses are tried and ``limits.sessions`` sessions that answered the
    greeting but then failed (EHLO, STARTTLS, ...), then the attempt is deferred.
    """

    def __init__(self, resolver: MxResolver, pool: SessionPool, options: SessionOptions, port: int, *,
                 limits: MxLimits = MxLimits(), guard: LoopGuard | None = None):
        self.resolver, self.pool, self.options, self.port = resolver, pool, options, port
        self.limits, self.guard = limits, guard

    async def deliver(self, domain: str, envelopes: Sequence[Envelope], data: bytes,
                      report: ReplySink | None = None) -> dict[str, Reply]:
        rcpts = [r for env in envelopes for r in env.rcpts]
        try:
            destinations = await self.resolver.destinations(domain)
        except DestinationError as exc:
            return {r: exc.reply for r in rcpts}
        last: Reply | None = None
        loop: Reply | None = None
        tried = sessions = 0
        for dest in destinations:
            for address in dest.addresses:
                refusal = self.guard.refusal(address, self.port, domain) if self.guard is not None else None
                if refusal is not None:
                    loop = loop or refusal
                    continue
                if self.limits.addresses and tried >= self.limits.addresses:
                    return self._all(rcpts, last, domain, f"gave up after {tried} MX addresses (delivery.mx_address_limit)")
                if self.limits.sessions and sessions >= self.limits.sessions:
                    return self._all(rcpts, last, domain, f"gave up after {sessions} failed sessions (delivery.mx_session_limit)")
                tried += 1
                made: list[SmtpSession] = []

                def make(a: str = address, h: str = dest.host) -> SmtpSession:
                    made.append(SmtpSession(a, self.port, h, self.options))
                    return made[-1]

                try:
                    return await send_all(self.pool, (address, self.port, self.options.tls, ""), make, envelopes, data, report)
                except SessionError as exc:
                    last = exc.reply  # try the next address, then the next MX
                    if made and made[-1].steps and made[-1].steps[0]["step"] == "connect" and made[-1].steps[0]["ok"]:
                        sessions += 1
        if last is None and loop is not None:
            return {r: loop for r in rcpts}  # every address is ourselves: a loop, not a passing outage
        return self._all(rcpts, last, domain, "")

    @staticmethod
    def _all(rcpts: list[str], last: Reply | None, domain: str, why: str) -> dict[str, Reply]:
        reply = last or Reply.temporary(f"no MX of {domain} could be reached", "4.4.1")
        if why:
            reply = Reply.temporary(f"{reply.text}; {why}", reply.enhanced or "4.4.1", reply.remote, reply.code or 451)
        return {r: reply for r in rcpts}


def relay_session_key(identity: tuple, host: str, port: int, options: SessionOptions) -> tuple:
    """The pool key of a smarthost session: whose connector it is and which secret it logged in with.

    Host and username are not an identity: every SendGrid customer logs in as `apikey`, so two
    tenants' connectors to one smarthost must never share an authenticated session. The secret's
    digest (never the secret) makes a changed password open new sessions instead of reusing old ones.
    """
    secret = hashlib.sha256(b"relay-session\0" + options.password.encode("utf-8")).digest()
    return ("relay", *identity, host, port, options.tls, options.verify, options.username, secret)


class RelayCourier:
    """An `smtp` connector: every message goes to one smarthost, with its TLS mode and credentials.
    ``identity`` names the connector (tenant id, connector id): sessions are pooled per connector."""

    def __init__(self, name: str, host: str, port: int, pool: SessionPool, options: SessionOptions, *, identity: tuple,
                 guard: LoopGuard | None = None):
        self.name, self.host, self.port, self.pool, self.options = name, host, port, pool, options
        self.key = relay_session_key(identity, host, port, options)
        self.guard = guard

    async def deliver(self, envelopes: Sequence[Envelope], data: bytes, report: ReplySink | None = None) -> dict[str, Reply]:
        key = self.key
        try:
            return await send_all(self.pool, key, lambda: SmtpSession(self.host, self.port, self.host, self.options, guard=self.guard,
                                                                      target=f"connector {self.name}"), envelopes, data, report)
        except SessionError as exc:
            return {r: exc.reply for env in envelopes for r in env.rcpts}
