"""Connector routes: turning a connector row into a courier, the SendGrid v3 HTTP route, and the
checks behind `gateway connector test`.

SendGrid takes JSON, not MIME: the prepared message is parsed and its parts mapped (text, html,
attachments, threading and unsubscribe headers). One request carries every recipient of the
message, one personalization each, so recipients do not see each other; its status applies to all.

HTTP status -> recipient state: 2xx delivered; 429 and 5xx deferred (their service, not the mail);
401/403 deferred too (a wrong API key is an operator's fix, not a reason to bounce a customer's
mail); other 4xx bounced (the request itself is refused and would be refused again).

The MIME parse is bounded (SENDGRID_MAX_BYTES, SENDGRID_MAX_PARTS: SendGrid's own 30 MB limit, and
a part count no real message needs) and runs on a worker thread, never on the event loop. A message
past a bound bounces (5.3.4): sending it again cannot make it smaller.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import email.utils
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..config import DeliveryConfig
from ..errors import DeliveryError
from .courier import RelayCourier, SessionOptions, SessionPool, SmtpSession
from .loops import LoopGuard
from .reply import Reply, describe_failure

# Headers SendGrid accepts in `headers` that matter downstream (threading, unsubscribe).
CARRIED_HEADERS = ("Message-ID", "In-Reply-To", "References", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Id", "Feedback-ID")
SMTP_TLS_MODES = ("none", "starttls", "implicit")
SENDGRID_MAX_BYTES = 30 * 1024 * 1024   # SendGrid's v3 limit for a whole message
SENDGRID_MAX_PARTS = 256


class PayloadRefused(DeliveryError):
    """The message is past a bound of the SendGrid mapping; ``reply`` is the permanent answer."""

    def __init__(self, reply: Reply):
        self.reply = reply
        super().__init__(reply.line)


@dataclass(frozen=True)
class ConnectorSpec:
    """A connector row as delivery needs it (secret included; never logged or printed)."""

    id: int
    tenant_id: int
    name: str
    kind: str
    enabled: bool
    settings: dict[str, Any]
    secret: str

    def __repr__(self) -> str:
        return f"ConnectorSpec({self.tenant_id}/{self.name}, {self.kind})"


def smtp_options(spec: ConnectorSpec, config: DeliveryConfig, helo: str) -> SessionOptions:
    tls = spec.settings.get("tls", "starttls")
    return SessionOptions(
        helo=helo, connect_timeout=config.connect_timeout, command_timeout=config.command_timeout,
        tls={"none": "off"}.get(tls, tls), verify=bool(spec.settings.get("verify_tls", True)),
        username=spec.settings.get("username", ""), password=spec.secret,
    )


def relay_courier(spec: ConnectorSpec, config: DeliveryConfig, helo: str, pool: SessionPool,
                  guard: LoopGuard | None = None) -> RelayCourier:
    s = spec.settings
    return RelayCourier(spec.name, s["host"], int(s.get("port", 587)), pool, smtp_options(spec, config, helo),
                        identity=(spec.tenant_id, spec.id), guard=guard)


# --------------------------------------------------------------------------- SendGrid


def _address(value: str) -> dict[str, str]:
    name, addr = email.utils.parseaddr(value)
    return {"email": addr, "name": name} if name else {"email": addr}


def sendgrid_payload(data: bytes, rcpts: Sequence[str], spec: ConnectorSpec, queue_id: str) -> dict[str, Any]:
    """The v3 JSON for the message; raises PayloadRefused past SENDGRID_MAX_BYTES or SENDGRID_MAX_PARTS.
    CPU-bound on large mail: call it off the event loop."""
    remote = f"connector {spec.name} (sendgrid)"
    if len(data) > SENDGRID_MAX_BYTES:
        raise PayloadRefused(Reply.permanent(f"message of {len(data)} bytes is over SendGrid's {SENDGRID_MAX_BYTES}-byte limit",
                                             "5.3.4", remote, 552))
    msg = email.message_from_bytes(data, policy=email.policy.default)
    parts = sum(1 for _ in msg.walk())
    if parts > SENDGRID_MAX_PARTS:
        raise PayloadRefused(Reply.permanent(f"message has {parts} MIME parts, more than {SENDGRID_MAX_PARTS}", "5.3.4", remote, 552))
    sender = spec.settings.get("sender") or str(msg.get("From", ""))
    payload: dict[str, Any] = {
        "personalizations": [{"to": [{"email": r}]} for r in rcpts],
        "from": _address(sender),
        "subject": str(msg.get("Subject", "")) or "(no subject)",
        "custom_args": {"queue_id": queue_id},
    }
    reply_to = spec.settings.get("reply_to") or str(msg.get("Reply-To", ""))
    if reply_to:
        payload["reply_to"] = _address(reply_to)
    content = []
    for subtype in ("plain", "html"):
        part = msg.get_body(preferencelist=(subtype,)) if msg.is_multipart() or msg.get_content_subtype() == subtype else None
        if part is not None and part.get_content_subtype() == subtype:
            content.append({"type": f"text/{subtype}", "value": part.get_content()})
    if not content:
        content.append({"type": "text/plain", "value": " "})
    payload["content"] = content
    attachments = []
    for part in msg.iter_attachments() if msg.is_multipart() else ():
        raw = part.get_payload(decode=True) or b""
        attachments.append({"content": base64.b64encode(raw).decode("ascii"), "type": part.get_content_type(),
                            "filename": part.get_filename() or "attachment", "disposition": part.get_content_disposition() or "attachment"})
    if attachments:
        payload["attachments"] = attachments
    headers = {h: " ".join(str(msg[h]).split()) for h in CARRIED_HEADERS if msg.get(h)}
    if headers:
        payload["headers"] = headers
    return payload


def sendgrid_reply(status: int, body: str, remote: str) -> Reply:
    detail = " ".join(body.split())[:300]
    if 200 <= status < 300:
        return Reply(250, "2.0.0", f"accepted by SendGrid (HTTP {status})", remote)
    if status == 429:
        return Reply.temporary(f"SendGrid rate limit (HTTP 429) {detail}", "4.7.0", remote)
    if status in (401, 403):
        return Reply.temporary(f"SendGrid refused the API key (HTTP {status}) {detail}", "4.7.0", remote)
    if 400 <= status < 500:
        return Reply.permanent(f"SendGrid refused the message (HTTP {status}) {detail}", "5.6.0", remote, 554)
    return Reply.temporary(f"SendGrid unavailable (HTTP {status}) {detail}", "4.3.0", remote)


class SendGridCourier:
    def __init__(self, spec: ConnectorSpec, http: aiohttp.ClientSession, config: DeliveryConfig):
        self.spec = spec
        self.http = http
        self.base_url = (spec.settings.get("base_url") or config.sendgrid_url).rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=config.command_timeout, connect=config.connect_timeout)
        self.remote = f"connector {spec.name} (sendgrid)"

    async def deliver(self, rcpts: Sequence[str], data: bytes, queue_id: str) -> dict[str, Reply]:
        try:
            # Off the loop: parsing a large message would stall every session the loop serves.
            payload = await asyncio.to_thread(sendgrid_payload, data, rcpts, self.spec, queue_id)  # other errors: ours, held
        except PayloadRefused as exc:
            return {r: exc.reply for r in rcpts}
        try:
            async with self.http.post(f"{self.base_url}/v3/mail/send", json=payload, timeout=self.timeout,
                                      headers={"Authorization": f"Bearer {self.spec.secret}"}) as response:
                body = await response.text()
                reply = sendgrid_reply(response.status, body, self.remote)
        except Exception as exc:  # noqa: BLE001 - network, timeout, anything from aiohttp: temporary
            reply = Reply.temporary(f"SendGrid request failed: {describe_failure(exc)}", "4.4.1", self.remote)
        return {r: reply for r in rcpts}


# --------------------------------------------------------------------------- `connector test`


def outgoing_target(spec: ConnectorSpec, config: DeliveryConfig) -> tuple[str, int]:
    """(host, port) an smtp or sendgrid connector connects to."""
    if spec.kind == "smtp":
        return spec.settings["host"], int(spec.settings.get("port", 587))
    url = urlsplit((spec.settings.get("base_url") or config.sendgrid_url))
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


async def test_connector(spec: ConnectorSpec, config: DeliveryConfig, helo: str) -> dict[str, Any]:
    """Make a real connection and report each step: {"ok": bool, "steps": [{step, ok, detail}]}."""
    if spec.kind == "smtp":
        s = spec.settings
        session = SmtpSession(s["host"], int(s.get("port", 587)), s["host"], smtp_options(spec, config, helo))
        try:
            await session.open()
        except Exception:  # noqa: BLE001 - the failing step is in session.steps
            pass
        ok = bool(session.steps) and all(step["ok"] for step in session.steps)
        await session.close()
        if ok:
            session.steps.append({"step": "quit", "ok": True, "detail": "closed"})
        return {"ok": ok, "steps": session.steps}
    if spec.kind == "sendgrid":
        base = (spec.settings.get("base_url") or config.sendgrid_url).rstrip("/")
        timeout = aiohttp.ClientTimeout(total=config.command_timeout, connect=config.connect_timeout)
        steps: list[dict[str, Any]] = []
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/v3/scopes", timeout=timeout,
                                    headers={"Authorization": f"Bearer {spec.secret}"}) as response:
                    body = await response.text()
                    steps.append({"step": "connect", "ok": True, "detail": f"{base} answered HTTP {response.status}"})
                    if response.status != 200:
                        steps.append({"step": "auth", "ok": False, "detail": f"API key refused (HTTP {response.status})"})
                        return {"ok": False, "steps": steps}
                    steps.append({"step": "auth", "ok": True, "detail": "API key accepted"})
                    try:
                        scopes = json.loads(body).get("scopes", [])
                    except (ValueError, AttributeError):
                        scopes = []
                    can_send = "mail.send" in scopes
                    steps.append({"step": "scope", "ok": can_send,
                                  "detail": "key may send mail" if can_send else "key lacks the mail.send scope"})
                    return {"ok": can_send, "steps": steps}
        except Exception as exc:  # noqa: BLE001 - reported as the failing step
            steps.append({"step": "connect", "ok": False, "detail": f"{base}: {type(exc).__name__}: {exc}"})
            return {"ok": False, "steps": steps}
    return {"ok": False, "steps": [{"step": "kind", "ok": False, "detail": f"cannot test a {spec.kind} connector yet"}]}
