"""The confirmation pages, as plain functions of what the store says: readable without JavaScript and
on a phone (viewport, one column, large buttons), everything from the outside HTML-escaped.

Every page is a form that POSTs to the page's own link (the token is the authority: no login, no
cookie). A GET only shows; link scanners that fetch every URL in a message change nothing.
"""

from __future__ import annotations

from html import escape
from typing import Any

STYLE = """
body{margin:0;background:#f4f5f7;color:#1d1f23;font:17px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:32rem;margin:0 auto;padding:2rem 1.25rem}
h1{font-size:1.45rem;line-height:1.25;margin:0 0 1rem}
p{margin:0 0 1rem}
.card{background:#fff;border-radius:12px;padding:1.5rem 1.25rem;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.addr{font-weight:600;overflow-wrap:anywhere}
button{display:block;width:100%;font:inherit;font-weight:600;padding:.85rem 1rem;border:0;border-radius:8px;
background:#1a56db;color:#fff;cursor:pointer}
button.secondary{background:#e8eaee;color:#1d1f23}
.small{font-size:.9rem;color:#5b616e;margin-top:1.25rem}
.sender{font-size:.95rem;font-weight:600;color:#5b616e;text-transform:uppercase;letter-spacing:.04em;margin-bottom:.5rem}
""".strip()


def _page(title: str, body: str, sender: str = "") -> str:
    if sender:
        body = f'<p class="sender">{escape(sender)}</p>' + body
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"robots\" content=\"noindex, nofollow\">"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><main><div class=\"card\">{body}</div></main></body></html>\n")


def _button(token: str, action: str, label: str, secondary: bool = False) -> str:
    cls = ' class="secondary"' if secondary else ""
    return (f'<form method="post" action="{escape(token)}"><input type="hidden" name="action" value="{action}">'
            f'<button type="submit"{cls}>{escape(label)}</button></form>')


def what(info: dict[str, Any]) -> str:
    """What the subscriber gets, in words: the use case's mail, or everything from a sending domain."""
    tenant = info["tenant"]
    if info.get("domain"):
        return f"emails from {tenant} sent from {info['domain']}"
    usecase = info.get("usecase")
    if usecase and usecase.get("entity") and usecase["entity"] != tenant:
        return f"{usecase['entity']} emails from {tenant}"
    return f"these emails from {tenant}"


def confirmation(token: str, address: str, info: dict[str, Any], *, changed: str = "") -> str:
    """The page for a valid token: its state now, and the one button that changes it.
    ``changed`` is 'unsubscribed' or 'resubscribed' right after a POST from the page."""
    tenant, topic, addr = escape(info["tenant"]), escape(what(info)), f'<span class="addr">{escape(address)}</span>'
    entry = info.get("suppression")
    if entry is None:
        head = "You are subscribed again" if changed == "resubscribed" else "Unsubscribe?"
        text = (f"<p>{addr} will get {topic} again.</p>" if changed == "resubscribed"
                else f"<p>Stop sending {topic} to {addr}?</p>")
        return _page(f"{head} – {info['tenant']}", f"<h1>{escape(head)}</h1>{text}" + _button(token, "unsubscribe", "Unsubscribe"),
                     info["tenant"])
    if entry["reason"] != "unsubscribe":
        # A complaint, a bounce or an operator's entry: not the subscriber's to lift from here.
        return _page(f"Not subscribed – {info['tenant']}",
                     f"<h1>Not subscribed</h1><p>{addr} gets no {topic}.</p>"
                     f'<p class="small">{tenant} stopped these emails to this address.</p>', info["tenant"])
    head = "You are unsubscribed"
    return _page(f"{head} – {info['tenant']}",
                 f"<h1>{head}</h1><p>{addr} will get no more {topic}.</p>"
                 + _button(token, "resubscribe", "Subscribe again", secondary=True)
                 + '<p class="small">Unsubscribed by mistake? The button above undoes it.</p>', info["tenant"])


def invalid() -> str:
    return _page("Link not valid", "<h1>This link is not valid</h1><p>It may be incomplete: open it again from the email, "
                 "or copy the whole link into the address bar. Nothing was changed.</p>")


def unavailable() -> str:
    return _page("Try again later", "<h1>Please try again in a few minutes</h1><p>Nothing was changed.</p>")
