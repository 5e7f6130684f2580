"""The loop guard: delivery never connects back to the gateway itself, as Postfix refuses with
"mail for X loops back to myself".

Refused, always: an address and port one of the daemon's own listeners is bound to (a wildcard
listener counts for the loopback addresses). Refused unless ``delivery.allow_loopback``: any
loopback or unspecified address (127.0.0.0/8, ::1, 0.0.0.0, ::), where nothing but this host
answers. Refused always, as no mail server is there: link-local (cloud metadata at 169.254.169.254),
multicast and reserved addresses (5.4.4, unroutable). A loop refusal is a permanent 5.4.6 (RFC 3463 "routing loop detected"): retrying cannot help.

Host names are not resolved here: an MX's addresses come resolved from DNS and are checked before
connecting; a smarthost given by name is checked for ``localhost`` before connecting and, once
connected, on the address the name really reached (``SmtpSession``'s guard), so a name that resolves
to a loopback address or to one of our listeners is refused before anything is sent.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Callable, Iterable

from ..config import split_hostport
from .reply import Reply

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_VERDICTS = 4096   # remembered (address, port) verdicts; past it they are all forgotten
OWN_RECHECK = 5.0     # seconds a complete answer of own() is used before it is asked again


@functools.lru_cache(maxsize=1024)   # a pure function of the text, asked for every delivery (the MX's address)
def host_ip(host: str) -> IP | None:
    """The address a host names without asking DNS: an IP literal ([v6], zone and v4-mapped forms
    unwrapped), 127.0.0.1 for the localhost names, None for any other name. The loop guard and the
    webhook URL rules both read hosts through this. Memoised: the addresses it returns are immutable."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        name = host.lower().rstrip(".")
        local = name in ("localhost", "localhost.localdomain") or name.endswith(".localhost")
        return ipaddress.ip_address("127.0.0.1") if local else None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def unroutable(ip: IP) -> bool:
    """Link-local (169.254.169.254 is a cloud's metadata service), multicast or reserved: no mail
    server, webhook receiver or mailbox a tenant may name is there (remotes.py refuses them too)."""
    return ip.is_link_local or ip.is_multicast or ip.is_reserved


def _local(ip: IP) -> bool:
    return ip.is_loopback or ip.is_unspecified


class LoopGuard:
    def __init__(self, *, allow_loopback: bool, own: Callable[[], Iterable[str]] = lambda: (),
                 clock: Callable[[], float] = time.monotonic):
        self.allow_loopback = allow_loopback
        self.own = own   # the daemon's listening addresses, 'host:port', read when asked (they bind late)
        self.clock = clock
        self._own_seen: tuple[str, ...] | None = None        # what own() said last time ...
        self._own_parsed: tuple[tuple[IP, int], ...] = ()     # ... parsed: (address, port) of each listener
        self._own_until = 0.0    # the answer is used without asking again until then (``_listening``)
        self._own_complete = False
        # (address, port, allow_loopback) -> why it is refused ('' when it is not), for the listeners
        # own() said last: every delivery asks for its MX's address, and ipaddress's is_loopback and
        # friends are network lookups (18.3 -> 0.9 us a call with own() remembered, scripts/bench_cpu.py loop_guard).
        self._verdicts: dict[tuple[IP, int, bool], str] = {}

    def _listening(self) -> tuple[tuple[IP, int], ...]:
        """own() as addresses, parsed again (and the verdicts forgotten) only when its answer changed.

        Asking costs more than the rest of the guard (the daemon builds every component's listener
        records: 47 us a call measured in the daemon under load, once per delivery), so a complete
        answer, every listener an address and a port that are known, is used for OWN_RECHECK
        seconds. Until the listeners are bound an answer may be incomplete (port 0, a host name
        not yet resolved by the bind): then every delivery asks again, as before. Listen addresses
        change only with a restart (config: restart=True), so nothing binds anew meanwhile."""
        now = self.clock()
        if now < self._own_until:
            return self._own_parsed
        seen = tuple(self.own())
        if seen != self._own_seen:
            parsed, complete = [], True
            for address in seen:
                try:
                    host, own_port = split_hostport(address)
                except ValueError:
                    continue   # not host:port (the admin socket's path): no network listener
                own_ip = host_ip(host)
                if own_ip is not None:
                    parsed.append((own_ip, own_port))
                complete = complete and own_ip is not None and own_port != 0
            self._own_seen, self._own_parsed, self._own_complete = seen, tuple(parsed), complete
            self._verdicts.clear()
        self._own_until = now + OWN_RECHECK if self._own_complete else 0.0
        return self._own_parsed

    def _verdict(self, ip: IP, port: int) -> str:
        """Why connecting to ``ip``:``port`` is refused: 'own', 'loopback', 'unroutable', or '' (it is not)."""
        listening = self._listening()
        key = (ip, port, self.allow_loopback)
        why = self._verdicts.get(key)
        if why is None:
            if any(own_port == port and (own_ip == ip or (own_ip.is_unspecified and _local(ip))) for own_ip, own_port in listening):
                why = "own"
            elif _local(ip) and not self.allow_loopback:
                why = "loopback"
            elif unroutable(ip):
                why = "unroutable"
            else:
                why = ""
            if len(self._verdicts) >= MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = why
        return why

    def refusal(self, host: str, port: int, target: str) -> Reply | None:
        """A permanent reply when connecting to ``host``:``port`` (for mail to ``target``) would loop; else None."""
        ip = host_ip(host)
        if ip is None:
            return None
        why = self._verdict(ip, port)
        if not why:
            return None
        if why == "unroutable":
            return Reply.permanent(f"mail for {target} not sent: {host} port {port} is a link-local, multicast or reserved address",
                                   "5.4.4", code=554)
        what = "the gateway's own listener" if why == "own" else "a loopback address (delivery.allow_loopback is off)"
        return Reply.permanent(f"mail for {target} loops back to myself: {host} port {port} is {what}", "5.4.6", code=554)
