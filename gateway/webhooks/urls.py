"""Which webhook URLs are acceptable, and which addresses a POST may go to (SSRF care).

A URL is http or https, at most MAX_URL characters, printable ASCII without spaces, CR or LF, with
a host and no user:password part (a secret in a URL ends up in logs). Addresses: link-local
(cloud metadata at 169.254.169.254), multicast and unspecified addresses are never POSTed to;
loopback only when ``webhooks.allow_loopback`` says so. Redirects are not followed (sender.py), so a
URL cannot bounce a POST to a refused address.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import InvalidArgument
from ..remotes import refused
from ..validate import MAX_URL

MIN_URL = len("http://a")


def check_url(url: str, *, allow_loopback: bool) -> str:
    if not MIN_URL <= len(url) <= MAX_URL:
        raise InvalidArgument(f"a webhook URL has {MIN_URL}-{MAX_URL} characters")
    if any(not 0x21 <= ord(c) <= 0x7E for c in url):
        raise InvalidArgument("a webhook URL is printable ASCII without spaces, CR or LF (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"malformed webhook URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidArgument("a webhook URL is http:// or https://")
    if not parts.hostname:
        raise InvalidArgument("a webhook URL names a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument("a webhook URL carries no user:password (the signature authenticates the gateway)")
    if port == 0:
        raise InvalidArgument("a webhook URL's port is 1-65535")
    refused = address_refused(parts.hostname, allow_loopback=allow_loopback)
    if refused:
        raise InvalidArgument(f"webhook URL refused: {refused}")
    return url


def address_refused(host: str, *, allow_loopback: bool) -> str:
    """Why a POST to ``host`` (a name or an address) must not be made; '' when it may (remotes.py's rule)."""
    return refused(host, allow_loopback=allow_loopback, setting="webhooks.allow_loopback")
