"""One-click unsubscribe (RFC 8058, RFC 2369) for the mail of marketing use cases.

    delivery (links.py)  -> each recipient's copy gets List-Unsubscribe: <https://PUBLIC/u/TOKEN>,
                            <mailto:unsubscribe@DOMAIN?subject=unsubscribe TOKEN> and
                            List-Unsubscribe-Post: List-Unsubscribe=One-Click, before DKIM signs them
    web (pages.py)       -> POST /u/TOKEN (one-click or the page's buttons) writes the suppression and
                            the event; GET /u/TOKEN shows a confirmation page and never changes anything
    inbound (mailto.py)  -> the mailto: form; pure, waiting for the inbound MX to hand it requests

Tokens (tokens.py) are pure: HMAC-SHA256 under a key id, keys kept in the store and rotated with
``gateway unsubscribe rotate-key``. A tampered or unknown token changes nothing (400).
"""

from __future__ import annotations


def carries_fields(kind: str, setting: int | bool | None) -> bool:
    """Whether a use case's mail carries List-Unsubscribe: its own setting, else by kind (marketing yes)."""
    return kind == "marketing" if setting is None else bool(setting)
