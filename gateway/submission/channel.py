"""What preparing a message changes for its conversation and its channel address.

    edits(inspected, sent_from, chain) -> (prepare.Edits or None, reply copy address or '')

- References: rebuilt from our own records (``chain``: the recorded conversation the message
  answers, oldest first, from ``store.queue.lineage``) even when the client stripped it.
- From a channel address (``sent_from``: its record in the use-case context):
  reply copy  Reply-To gets the copy address (after the app's own Reply-To, when it set one: the
              customer's reply reaches both), and the caller adds it as an envelope recipient;
              never a Bcc header, which recipients could see;
  header and footer, text and HTML, in the first text/plain and text/html body parts;
  vCard       attached to the first message of a new thread (no recorded parent).

Large bodies are decorated in a worker thread, so a 20 MB message does not stall the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import decorate, prepare

THREAD_ABOVE = 256 * 1024   # bytes of body decorated off the event loop


async def edits(found: prepare.Inspected, sent_from: dict[str, Any] | None, chain: list[str]) -> tuple[prepare.Edits | None, str]:
    drop: set[bytes] = set()
    add: list[bytes] = []
    body = None
    refs = prepare.references(found.references, found.in_reply_to, chain)
    if refs is not None:
        drop.add(b"references")
        add.append(prepare.references_field(refs))
    copy = ""
    if sent_from is not None:
        copy = sent_from.get("reply_copy") or ""
        if copy:
            field = decorate.reply_to(found.parsed.fields, copy)
            if field is not None:
                drop.add(b"reply-to")
                add.append(field)
        decorations = decorate.Decorations(header_text=sent_from.get("header_text") or "", header_html=sent_from.get("header_html") or "",
                                           footer_text=sent_from.get("footer_text") or "", footer_html=sent_from.get("footer_html") or "")
        card = decorate.vcard(sent_from.get("display_name") or "", sent_from["address"]) if sent_from.get("vcard") and not chain else None
        if decorations or card is not None:
            args = (found.parsed.fields, found.parsed.body, decorations, card)
            if len(found.parsed.body) > THREAD_ABOVE:
                done = await asyncio.to_thread(decorate.decorate, *args)
            else:
                done = decorate.decorate(*args)
            if done is not None:
                drop |= decorate.REPLACED
                add += done.fields
                body = done.body
    if not (drop or add):
        return None, copy
    return prepare.Edits(drop=frozenset(drop), add=tuple(add), body=body), copy
