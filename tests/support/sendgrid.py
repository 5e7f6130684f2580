"""A local server speaking the part of SendGrid's v3 API the gateway uses, on 127.0.0.1.

    async with sendgrid_api(token="SG.test") as api:     # api.url -> 'http://127.0.0.1:PORT'
        api.next_status = [429]                           # answer the next send with 429, then 202
        await api.wait_for(1)                             # until one accepted send
        api.sent[0]["personalizations"]

POST /v3/mail/send: Bearer token checked (401), JSON validated like SendGrid does (400 with an
``errors`` list), 202 with an X-Message-Id. GET /v3/scopes: the token's scopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any, AsyncIterator

from aiohttp import web


def validate(payload: Any) -> list[dict[str, str]]:
    errors = []
    if not isinstance(payload, dict):
        return [{"message": "body must be a JSON object", "field": ""}]
    pers = payload.get("personalizations")
    if not isinstance(pers, list) or not pers:
        errors.append({"message": "personalizations are required", "field": "personalizations"})
    else:
        for i, p in enumerate(pers):
            tos = p.get("to") if isinstance(p, dict) else None
            if not isinstance(tos, list) or not tos or not all(isinstance(t, dict) and "@" in str(t.get("email", "")) for t in tos):
                errors.append({"message": "each personalization needs to[] with emails", "field": f"personalizations.{i}.to"})
    sender = payload.get("from")
    if not isinstance(sender, dict) or "@" not in str(sender.get("email", "")):
        errors.append({"message": "from.email is required", "field": "from.email"})
    content = payload.get("content")
    if not isinstance(content, list) or not content or not all(isinstance(c, dict) and c.get("type") and c.get("value") for c in content):
        errors.append({"message": "content needs type and a non-empty value", "field": "content"})
    elif content[0]["type"] != "text/plain" and any(c["type"] == "text/plain" for c in content):
        errors.append({"message": "text/plain must come first", "field": "content.0.type"})
    if not payload.get("subject") and not all(isinstance(p, dict) and p.get("subject") for p in pers or []):
        errors.append({"message": "subject is required", "field": "subject"})
    return errors


class SendGridApi:
    def __init__(self, token: str, scopes: list[str]):
        self.token = token
        self.scopes = scopes
        self.requests: list[dict[str, Any]] = []   # every send request: {"status", "json", "auth"}
        self.sent: list[dict[str, Any]] = []       # accepted payloads
        self.next_status: list[int] = []           # statuses to answer next sends with, before 202
        self.url = ""
        self._changed = asyncio.Condition()

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.token}"

    async def send(self, request: web.Request) -> web.Response:
        record: dict[str, Any] = {"auth": request.headers.get("Authorization", "")}
        try:
            if not self._authorized(request):
                record["status"] = 401
                return web.json_response({"errors": [{"message": "The provided authorization grant is invalid"}]}, status=401)
            try:
                payload = await request.json()
            except ValueError:
                record["status"] = 400
                return web.json_response({"errors": [{"message": "Bad Request", "field": None}]}, status=400)
            record["json"] = payload
            errors = validate(payload)
            if errors:
                record["status"] = 400
                return web.json_response({"errors": errors}, status=400)
            if self.next_status:
                record["status"] = self.next_status.pop(0)
                return web.json_response({"errors": [{"message": "scripted"}]}, status=record["status"])
            record["status"] = 202
            self.sent.append(payload)
            return web.Response(status=202, headers={"X-Message-Id": secrets.token_urlsafe(16)})
        finally:
            self.requests.append(record)
            async with self._changed:
                self._changed.notify_all()

    async def scopes_handler(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"errors": [{"message": "authorization required"}]}, status=401)
        return web.json_response({"scopes": self.scopes})

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Until ``count`` sends were accepted."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.sent) >= count)
        return self.sent

    async def wait_requests(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.requests) >= count)
        return self.requests


@contextlib.asynccontextmanager
async def sendgrid_api(token: str = "SG.test-token", scopes: list[str] | None = None) -> AsyncIterator[SendGridApi]:
    api = SendGridApi(token, scopes if scopes is not None else ["mail.send"])
    app = web.Application()
    app.router.add_post("/v3/mail/send", api.send)
    app.router.add_get("/v3/scopes", api.scopes_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp has no public accessor
    api.url = f"http://127.0.0.1:{port}"
    try:
        yield api
    finally:
        await runner.cleanup()


__all__ = ["sendgrid_api", "SendGridApi"]
