"""The JSON a tenant's application gets for one received message (the ``inbound`` member of a
``received`` event in a webhook POST). Pure: built from what the store read and a function that
mints each attachment's URL.

Bounded: each body (text, html, stripped_text) is cut past ``max_body`` bytes at a character
boundary and named in ``truncated``; the whole message stays available (`gateway inbox export`).
Inline (cid:) parts are listed too, with ``inline`` true and their Content-ID, so an application
can render the HTML; every attachment carries its URL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

BODIES = ("text", "html", "stripped_text")
# When the bodies are cut to nothing and the event still does not fit a POST (hundreds of attachments
# with long names, a subject of a quarter megabyte): what the squeezed payload keeps of the rest.
SQUEEZED_TEXT = 998          # bytes of subject and from_name (one RFC 5322 line)
SQUEEZED_LIST = 20           # entries of to, cc, reply_to, references, defects
LISTS = ("to", "cc", "reply_to", "references", "defects")


def cut(text: str, max_bytes: int) -> tuple[str, bool]:
    """``text`` within ``max_bytes`` of UTF-8, never splitting a character; (text, was cut)."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode("utf-8", "ignore"), True


def inbound_payload(row: dict[str, Any], *, url_for: Callable[[int], str], max_body: int, squeeze: bool = False,
                    max_attachments: int | None = None) -> dict[str, Any]:
    """``row``: store.inbox.delivery_view's (the processed row, its summary, its attachments).
    ``squeeze``: subject, from_name and the address lists cut too; ``max_attachments``: only the
    first ones listed. Whatever was cut is named in ``truncated``."""
    summary = row.get("summary") or {}
    out: dict[str, Any] = {
        "inbound_id": row["inbound_id"],
        "message_id": row["header_message_id"] or summary.get("message_id", ""),
        "kind": row["kind"],
        "classification": {"kind": row["kind"], "rule": summary.get("classification", "")},
        "thread_id": row["thread_id"],
        "parent": row["parent_message_id"],
        "usecase": row["usecase"],
        "usecase_id": row["usecase_id"],
        "address": row["address"],
        "address_id": row["address_id"],
        "source": row["source"],
        "received_at": row["received_at"],
        "envelope": {"mail_from": row["mail_from"], "recipients": row["recipients"]},
        "from": row["from_address"],
        "from_name": summary.get("from_name", ""),
        "to": summary.get("to", []),
        "cc": summary.get("cc", []),
        "reply_to": summary.get("reply_to", []),
        "subject": row["subject"],
        "date": summary.get("date", ""),
        "in_reply_to": summary.get("in_reply_to", ""),
        "references": summary.get("references", []),
        "forwarded_by": summary.get("forwarded_by", ""),
        "flags": row["flags"],
        "size": row["size"],
    }
    truncated = []
    for name in BODIES:
        text, was_cut = cut(summary.get(name) or "", max_body)
        out[name] = text
        if was_cut:
            truncated.append(name)
    out["truncated"] = truncated
    attachments = list(row.get("attachments", ()))
    if max_attachments is not None and len(attachments) > max_attachments:
        attachments = attachments[:max_attachments]
        truncated.append("attachments")
    out["attachments"] = [
        {"position": a["position"], "filename": a["filename"], "content_type": a["content_type"], "size": a["size"],
         "sha256": a["sha256"], "content_id": a["content_id"], "inline": a["inline"], "url": url_for(a["position"])}
        for a in attachments]
    out["auth"] = summary.get("auth") or {"header": row.get("auth_results", "")}
    out["report"] = summary.get("report")
    out["defects"] = summary.get("defects", [])
    if squeeze:
        for name in ("subject", "from_name"):
            out[name], was_cut = cut(out[name] or "", SQUEEZED_TEXT)
            if was_cut:
                truncated.append(name)
        for name in LISTS:
            if len(out[name]) > SQUEEZED_LIST:
                out[name] = out[name][:SQUEEZED_LIST]
                truncated.append(name)
    return out
