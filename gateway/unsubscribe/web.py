"""The unsubscribe endpoints on the daemon's web server (RFC 8058).

    POST /u/TOKEN  body List-Unsubscribe=One-Click  -> 200, suppressed (a mailbox provider's one-click)
                   body action=unsubscribe          -> 200, the page: unsubscribed (the page's button)
                   body action=resubscribe          -> 200, the page: subscribed again
    GET  /u/TOKEN                                   -> 200, the page: the state now and one button

No login and no cookie: the signed token is the authority. Idempotent: a repeated POST answers 200
and writes nothing more. A tampered, unknown or retired token answers 400 and changes nothing; so
does a POST whose body asks for nothing we know, or a token whose use case or domain is gone. A
full disk answers 503 with Retry-After (the provider tries again). A GET never changes anything.
Responses are not cached and send no Referer onward (the token is in the URL).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from ..config import Config
from ..errors import StorageFull
from ..lifecycle import Component
from ..metrics import Metrics
from ..store import Store
from . import pages
from .links import Keyring
from .tokens import Claim, InvalidToken

log = structlog.get_logger("unsubscribe")

PATH = "/u/{token}"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}
SOURCES = ("one-click", "page", "mailto")


class Unsubscriber(Component):
    name = "unsubscribe"

    def __init__(self, store: Store, keyring: Keyring, metrics: Metrics, config: Callable[[], Config] | None = None):
        self.store, self.keyring, self.metrics, self.config = store, keyring, metrics, config

    async def start(self) -> None:
        if self.config is not None:
            self._check_url(self.config())

    async def reload(self, config: Config) -> None:
        self._check_url(config)

    @staticmethod
    def _check_url(config: Config) -> None:
        url = config.web.public_url
        if urlsplit(url).scheme != "https" and urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            log.warning("unsubscribe_url_not_https", public_url=url,
                        hint="Gmail and Yahoo honour one-click unsubscribe only over https: set web.public_url")

    def web_routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self._get, allow_head=False), web.post(PATH, self._post)]

    # ------------------------------------------------------------------ the writes (also for mailto)

    async def apply(self, claim: Claim, source: str, *, resubscribe: bool = False) -> bool | None:
        """Unsubscribe (or re-subscribe) what ``claim`` names; True when that changed anything, None
        when what it names is gone (its use case or domain deleted): nothing to do, the link is dead."""
        assert source in SOURCES
        detail = {"usecase_id": claim.usecase_id, "key_id": claim.key_id, "issued_at": claim.issued_at}
        if resubscribe:
            changed = await self.store.unsubscribes.resubscribe(claim.tenant_id, claim.suppression_scope, claim.address,
                                                                source=source, detail=detail)
        else:
            changed = await self.store.unsubscribes.unsubscribe(claim.tenant_id, claim.suppression_scope, claim.address,
                                                                source=source, detail=detail)
        if changed:
            log.info("resubscribed" if resubscribe else "unsubscribed", tenant_id=claim.tenant_id, scope=claim.scope,
                     scope_id=claim.scope_id, source=source)
        return changed

    async def apply_token(self, token: str, source: str = "mailto") -> dict[str, Any] | None:
        """An unsubscribe request by token alone (the mailto: form, from the inbound processor):
        {tenant_id, usecase_id, changed}, or None when the token is not ours or names what is gone."""
        try:
            claim = await self.keyring.verify(token)
        except InvalidToken as exc:
            log.info("unsubscribe_token_refused", reason=str(exc), method=source)
            return None
        changed = await self.apply(claim, source)
        if changed is None:
            return None
        return {"tenant_id": claim.tenant_id, "usecase_id": claim.usecase_id, "changed": bool(changed)}

    # ------------------------------------------------------------------ HTTP

    def _reply(self, status: int, body: str, content_type: str = "text/html") -> web.Response:
        self.metrics.http_requests.labels(path="/u", status=str(status)).inc()
        headers = {**SECURITY_HEADERS, "Retry-After": "300"} if status == 503 else SECURITY_HEADERS
        return web.Response(status=status, text=body, content_type=content_type, charset="utf-8", headers=headers)

    async def _claim(self, request: web.Request) -> Claim | None:
        try:
            return await self.keyring.verify(request.match_info["token"])
        except InvalidToken as exc:
            log.info("unsubscribe_token_refused", reason=str(exc), method=request.method)
            return None

    async def _info(self, claim: Claim) -> dict[str, Any] | None:
        return await self.store.unsubscribes.page(claim.tenant_id, claim.usecase_id, claim.suppression_scope, claim.address)

    async def _get(self, request: web.Request) -> web.Response:
        claim = await self._claim(request)
        info = await self._info(claim) if claim else None
        if claim is None or info is None:
            return self._reply(400, pages.invalid())
        return self._reply(200, pages.confirmation(request.match_info["token"], claim.address, info))

    async def _post(self, request: web.Request) -> web.Response:
        claim = await self._claim(request)
        if claim is None:
            return self._reply(400, pages.invalid())
        form = await request.post()
        one_click = form.get("List-Unsubscribe") == "One-Click"
        action = form.get("action")
        if not one_click and action not in ("unsubscribe", "resubscribe"):
            return self._reply(400, "expected List-Unsubscribe=One-Click (RFC 8058)\n", "text/plain")
        try:
            changed = await self.apply(claim, "one-click" if one_click else "page", resubscribe=action == "resubscribe" and not one_click)
        except StorageFull:
            return self._reply(503, pages.unavailable())
        if changed is None:
            return self._reply(400, pages.invalid())
        if one_click:
            return self._reply(200, "unsubscribed\n", "text/plain")
        info = await self._info(claim)
        if info is None:
            return self._reply(400, pages.invalid())
        return self._reply(200, pages.confirmation(request.match_info["token"], claim.address, info,
                                                   changed="resubscribed" if action == "resubscribe" else "unsubscribed"))
