"""Delivery of received mail to the tenant's application: what a ``received`` event's webhook
carries, and the attachment URLs in it.

    webhook sender (gateway/webhooks/sender.py), at send time, for each ``received`` event:
        payload(tenant, inbound id) -> the inbound JSON (payload.py), attachment URLs minted now
    GET /inbound/attachments/<token>   (the daemon's web server)
        token of ours, not expired, attachment still stored -> 200, the bytes streamed from the file
        not ours (malformed, altered, retired key)          -> 404 problem (nothing says why)
        ours but expired                                    -> 403 problem
        the attachment or its file is gone (retention)      -> 404 problem

The event stays small (ids only); the body, bodies and URLs are built for each POST from the
stored row, so a retry after a long outage carries fresh URLs. A row gone by then (retention) is
sent as ``"inbound": null``. Files are served as downloads only: ``Content-Disposition:
attachment`` with a safe filename, ``nosniff`` and a sandboxing CSP, so an HTML or SVG attachment
never runs on the gateway's origin (where the unsubscribe pages live).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from ..config import Config
from ..lifecycle import Component
from ..metrics import Metrics
from ..store import Store
from ..unsubscribe.links import Keyring
from . import downloads
from .attachments import AttachmentFiles
from .payload import inbound_payload

log = structlog.get_logger("inbound")

MIME_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
# Bytes of a POST left for the event around its ``inbound`` member (ids, type, data, time).
EVENT_ROOM = 4096
SECURITY_HEADERS = {
    "Cache-Control": "private, no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the UTF-8 name (RFC 6266, RFC 8187); never a
    separator, quote or control character, whatever the stored name holds."""
    clean = "".join(c for c in filename if c.isprintable() and c not in '/\\"\r\n').strip(". ") or "attachment"
    fallback = "".join(c if c.isascii() and (c.isalnum() or c in "._- ()[]+,") else "_" for c in clean)[:150] or "attachment"
    return f'attachment; filename="{fallback}"; filename*=UTF-8\'\'{urllib.parse.quote(clean[:200], safe="")}'


class AppDelivery(Component):
    name = "inbound-delivery"

    def __init__(self, store: Store, keyring: Keyring, config: Callable[[], Config], attachments: AttachmentFiles,
                 metrics: Metrics, *, clock: Callable[[], float] = time.time):
        self.store, self.keyring, self.config, self.attachments = store, keyring, config, attachments
        self.metrics, self.clock = metrics, clock

    # ------------------------------------------------------------------ the webhook payload

    @property
    def max_post_bytes(self) -> int:
        return self.config().inbox.max_post_bytes

    async def payload(self, tenant_id: int, inbound_id: str) -> dict[str, Any] | None:
        """The inbound JSON of one received message of the tenant; None when the row is gone."""
        row = await self.store.inbox.delivery_view(tenant_id, inbound_id)
        if row is None:
            return None
        cfg = self.config()
        key_id, secret = await self.keyring.signing()
        expires = int(self.clock() + cfg.inbox.attachment_url_ttl)

        def url_for(position: int) -> str:
            claim = downloads.Download(key_id, tenant_id, row["id"], position, expires)
            return downloads.url(cfg.web.public_url, downloads.mint(claim, secret))

        # One event alone must fit a POST (a receiver that refuses it would hold its endpoint's
        # head for ever): bodies are cut further until the encoded event fits, with room for the
        # event around it; then the subject and lists, then the attachment list (the application
        # finds the rest with `gateway inbox show`; ``truncated`` says what was cut).
        max_body, room = cfg.inbox.max_body_bytes, cfg.inbox.max_post_bytes - EVENT_ROOM
        squeeze, max_attachments = False, None
        while True:
            built = inbound_payload(row, url_for=url_for, max_body=max_body, squeeze=squeeze, max_attachments=max_attachments)
            if len(json.dumps(built, separators=(",", ":"), default=str)) <= room or max_attachments == 0:
                return built
            if max_body:
                max_body = max_body // 2 if max_body > 64 else 0
            elif not squeeze:
                squeeze = True
            else:
                max_attachments = len(built["attachments"]) // 2

    # ------------------------------------------------------------------ GET /inbound/attachments/<token>

    def web_routes(self) -> list[web.RouteDef]:
        return [web.get(downloads.PATH, self._get)]

    def _problem(self, status: int, title: str, detail: str) -> web.Response:
        self.metrics.http_requests.labels(path="/inbound/attachments", status=str(status)).inc()
        return web.json_response({"type": "about:blank", "title": title, "status": status, "detail": detail}, status=status,
                                 content_type="application/problem+json", headers=SECURITY_HEADERS)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        try:
            claim = await self.keyring.verify(request.match_info["token"], downloads.verify)
        except downloads.InvalidToken as exc:
            log.info("attachment_token_refused", reason=str(exc))
            return self._problem(404, "Not Found", "no such attachment")
        if claim.expires < self.clock():
            return self._problem(403, "Forbidden", "this attachment link has expired; a new one comes with the next delivery")
        found = await self.store.inbox.download(claim.tenant_id, claim.row_id, claim.position)
        path = self.attachments.path(found["sha256"]) if found else None
        if found is None or not path.is_file():
            return self._problem(404, "Not Found", "no such attachment (it may have been removed after the retention period)")
        content_type = found["content_type"] if MIME_TYPE.match(found["content_type"] or "") else "application/octet-stream"
        self.metrics.http_requests.labels(path="/inbound/attachments", status="200").inc()
        # FileResponse streams the file in chunks (sendfile where it can): never read whole into memory.
        return web.FileResponse(path, headers={**SECURITY_HEADERS, "Content-Type": content_type,
                                               "Content-Disposition": content_disposition(found["filename"])})
