"""What every SMTP listener's handler does the same way: the submission handler and the MX
handler (gateway/inbound/handler.py) are both ``SmtpHandler``s.

    _refuse           an SMTPError as the reply line, logged (``<listener>_refused``) and counted once
    handle_exception  anything unexpected: 451 4.3.0, the traceback to the log, never its text to the client
    handle_EHLO       PIPELINING and ENHANCEDSTATUSCODES added to aiosmtpd's list
    handle_DATA       the final dot: ``_accept`` (the subclass's checks and commit), its SMTPError refused,
                      StorageFull 452 4.3.1, anything else 451 4.3.0
    _commit_shielded  once the durable write has started it runs to its end, even when the session is
                      cancelled (the client hung up at the final dot); ``drain`` waits for those at stop
    inspect_content   the DATA checks both listeners make before any work: bare CR/LF and NUL, size,
                      header size, Received count (a loop)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import logs
from ..errors import SMTPError, StorageFull
from ..metrics import Metrics
from . import policy, prepare

log = logs.get_logger("submission")   # assembled once per configuration (logs.py)

INTERNAL_ERROR = "451 4.3.0 Internal error, please try again later"
STORAGE_FULL = "452 4.3.1 Insufficient system storage"


def client_ip(server: Any) -> str:
    peer = server.session.peer if server.session else None
    return str(peer[0]) if isinstance(peer, tuple) else str(peer or "unknown")


def inspect_content(data: bytes | bytearray, *, max_size: int, max_header_bytes: int, max_received: int,
                    lenient: bool = False, addresses: bool = True) -> prepare.Inspected:
    """The message as received passes the checks every listener makes (SMTPError otherwise);
    ``lenient`` and ``addresses`` as prepare.inspect's (the MX sets both)."""
    policy.check_line_endings(data)
    if len(data) > max_size:
        raise policy.message_too_big(max_size)
    found = prepare.inspect(data, max_header_bytes=max_header_bytes, lenient=lenient, addresses=addresses)
    policy.check_received_count(found.received, max_received)
    return found


class SmtpHandler:
    """Base of a listener's aiosmtpd handler. ``listener`` names its log events; ``refusals`` is its
    Counter (by step and code)."""

    listener = "smtp"

    def __init__(self, *, hostname: str, metrics: Metrics, refusals: Any):
        self.hostname = hostname
        self.metrics = metrics
        self.refusals = refusals
        self._commits: set[asyncio.Task[str]] = set()  # commits whose session may be gone (_commit_shielded)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for the commits in flight, also those whose session has already gone."""
        if self._commits:
            await asyncio.wait(set(self._commits), timeout=timeout)

    def _log_context(self, server: Any) -> dict[str, Any]:
        """Extra fields of a refusal's log line (the submission handler names the use case)."""
        return {}

    def _refuse(self, server: Any, step: str, err: SMTPError) -> str:
        self.refusals.labels(step=step, code=str(err.code)).inc()
        log.info(f"{self.listener}_refused", step=step, code=err.code, enhanced=err.enhanced, reason=err.reason,
                 client=client_ip(server), **self._log_context(server))
        server.accounted = True  # the protocol does not log this reply a second time
        return err.reply

    async def handle_exception(self, error: Exception) -> str:
        log.error(f"{self.listener}_exception", error_type=type(error).__name__, exc_info=error)
        return INTERNAL_ERROR

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:  # noqa: N802
        """RFC 2920 PIPELINING (commands are read and answered strictly in order, so a client may send
        them in groups) and RFC 2034 ENHANCEDSTATUSCODES (every reply has one; see replies.py)."""
        session.host_name = hostname  # aiosmtpd leaves this to an EHLO hook
        return responses[:-1] + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES"] + responses[-1:]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        started = time.perf_counter()
        server.busy = True
        try:
            return await self._accept(server, envelope, started)
        except SMTPError as err:
            return self._refuse(server, "DATA", err)
        except StorageFull:
            # Counted per message; logged once per episode by the store (store_full ... store_space_recovered).
            self.refusals.labels(step="DATA", code="452").inc()
            server.accounted = True  # not the client's protocol error, and counted once
            return STORAGE_FULL
        except Exception as exc:  # noqa: BLE001 - nothing unexpected reaches the client; it may retry
            log.error(f"{self.listener}_data_failed", client=client_ip(server), error_type=type(exc).__name__, exc_info=exc)
            return INTERNAL_ERROR
        finally:
            server.busy = False

    async def _accept(self, server: Any, envelope: Any, started: float) -> str:
        raise NotImplementedError

    async def _commit_shielded(self, server: Any, commit: Callable[[], Awaitable[str]]) -> str:
        """Run ``commit()`` (the durable write and what follows it) as a task of its own, shielded from
        the session's cancellation and awaited by ``drain``; its reply, or its exception."""
        task = asyncio.ensure_future(commit())
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        server.commit = task  # the DATA reservation is released when the commit ends, not before
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._orphaned_commit_done)  # nobody is left to answer for its outcome
            raise

    def _orphaned_commit_done(self, commit: asyncio.Task[str]) -> None:
        """A commit whose session was cancelled: a failed write is logged here (the client got no 250)."""
        exc = None if commit.cancelled() else commit.exception()
        if exc is not None:
            log.warning(f"{self.listener}_commit_failed_after_hangup", error_type=type(exc).__name__)
