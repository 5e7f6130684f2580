"""`gateway connector test` for incoming settings: connect, TLS, log in and open the folder for real,
reporting each step. Nothing on the server changes (IMAP: EXAMINE, read-only; POP3: STAT, QUIT).
"""

from __future__ import annotations

from typing import Any

from ..config import PollerConfig
from .imap import ImapSession
from .mailbox import Incoming, MailboxError, tls_context
from .pop3 import Pop3Session


async def test_incoming(incoming: Incoming, config: PollerConfig) -> dict[str, Any]:
    """{"ok": bool, "steps": [{step, ok, detail}]}; the first failing step ends the list."""
    try:
        ctx = tls_context(incoming, config.ca_file)
    except OSError as exc:
        return {"ok": False, "steps": [{"step": "tls", "ok": False, "detail": f"poller.ca_file: {exc.strerror or exc}"}]}
    cls = ImapSession if incoming.protocol == "imap" else Pop3Session
    session = cls(incoming, ctx, connect_timeout=config.connect_timeout, command_timeout=config.command_timeout)
    steps = session.steps
    try:
        await session.open()
        if isinstance(session, ImapSession):
            folder = await session.select(incoming.folder, readonly=True)
            steps.append({"step": "folder", "ok": True,
                          "detail": f"{incoming.folder}: {folder.exists} messages, UIDVALIDITY {folder.uidvalidity}"
                                    f"{', IDLE offered' if session.can_idle else ', no IDLE: polled every poller.interval'}"})
            if incoming.move_to:
                found = await session.folder_exists(incoming.move_to)
                steps.append({"step": "target", "ok": found, "detail": f"{incoming.move_to}: " + ("exists" if found else "no such folder")})
        else:
            count, size = await session.stat()
            steps.append({"step": "mailbox", "ok": True, "detail": f"{count} messages, {size} bytes"})
    except MailboxError as exc:
        steps.append({"step": exc.step, "ok": False, "detail": str(exc)})
    finally:
        if isinstance(session, Pop3Session) and session.conn is not None and all(s["ok"] for s in steps):
            try:
                await session.quit()
            except MailboxError:
                await session.close()
        else:
            await session.close()
    return {"ok": bool(steps) and all(s["ok"] for s in steps), "steps": steps}
