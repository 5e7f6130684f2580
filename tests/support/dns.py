"""A small authoritative DNS server for tests, built on dnspython, on 127.0.0.1 (UDP and TCP).

    with DnsServer() as dns:                       # or the `dns_server` pytest fixture
        dns.add("acme.test", "MX", "10 mx.acme.test.")
        dns.add("acme.test", "TXT", "v=spf1 -all")       # TXT: plain text is quoted and split for you
        dns.set("acme.test", "A", "127.0.0.1")            # replace the rrset
        dns.remove("acme.test", "TXT")                    # remove an rrset (or one value of it)
        dns.servfail("broken.test")                       # answer SERVFAIL for this name (any type)
        dns.drop("slow.test", "TXT")                      # never answer: the client times out
        dns.load_zone(text, origin="acme.test")           # BIND zone text (e.g. `domain records --format zone`)
        resolver.nameservers, resolver.port = [dns.host], dns.port

It answers every name from one record store, like an authoritative server for every zone the tests
create: NXDOMAIN when nothing exists at or below a name, NODATA (NOERROR, empty answer) when the
name exists with other types, SOA of the closest registered zone in the authority section of
negative answers. CNAMEs are followed inside the store, as an authoritative server does for in-zone
targets. UDP replies that do not fit (512 bytes, or the EDNS payload) are truncated so the client
retries over TCP, as real resolvers do.

The server runs on its own thread and event loop, so tests, synchronous callers (dkimpy's dnsfunc)
and the daemon's event loop can all query it. Mutations are locked and take effect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone

ANY_TYPE = None


def to_name(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name
    return dns.name.from_text(name.rstrip(".") + "." if name not in (".", "") else ".")


def to_type(rdtype: str | int) -> int:
    return dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str) else int(rdtype)


def txt_presentation(value: str | Iterable[str]) -> str:
    """A TXT value in zone-file form: plain text is quoted and split into 255-byte strings."""
    if isinstance(value, str):
        if value.startswith('"'):
            return value  # already presentation form
        raw = value.encode()
        parts = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    else:
        parts = [p.encode() for p in value]
    return " ".join('"' + p.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


class DnsServer:
    """See the module docstring. Start with ``start()`` or as a context manager."""

    def __init__(self, host: str = "127.0.0.1", ttl: int = 300):
        self.host = host
        self.port = 0
        self.ttl = ttl
        self._lock = threading.Lock()
        self._data: dict[dns.name.Name, dict[int, dns.rdataset.Rdataset]] = {}
        self._zones: set[dns.name.Name] = set()
        self._existing: set[dns.name.Name] | None = None  # names with data or descendants; None = stale
        self._servfail: set[tuple[dns.name.Name, int | None]] = set()
        self._drop: set[tuple[dns.name.Name, int | None]] = set()
        self.queries: list[tuple[str, str]] = []  # (name, type) of every question, in arrival order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ data

    def add_zone(self, origin: str) -> None:
        """Register a zone apex: negative answers below it carry its SOA."""
        with self._lock:
            self._zones.add(to_name(origin))

    def add(self, name: str, rdtype: str | int, *values: Any, ttl: int | None = None) -> None:
        """Add values (presentation text; TXT may be plain text or a list of strings) to an rrset."""
        owner, t = to_name(name), to_type(rdtype)
        rdatas = [self._rdata(t, v) for v in values]
        with self._lock:
            types = self._data.setdefault(owner, {})
            rds = types.get(t)
            if rds is None:
                rds = types[t] = dns.rdataset.Rdataset(dns.rdataclass.IN, t)
            rds.update_ttl(self.ttl if ttl is None else ttl)
            for rd in rdatas:
                rds.add(rd)
            self._existing = None

    def set(self, name: str, rdtype: str | int, *values: Any, ttl: int | None = None) -> None:
        """Replace the rrset (no values: remove it)."""
        self.remove(name, rdtype)
        if values:
            self.add(name, rdtype, *values, ttl=ttl)

    def remove(self, name: str, rdtype: str | int | None = None, value: Any = None) -> None:
        """Remove one value, one rrset, or (no type) everything at the name."""
        owner = to_name(name)
        with self._lock:
            types = self._data.get(owner)
            if types is None:
                return
            if rdtype is None:
                del self._data[owner]
            else:
                t = to_type(rdtype)
                if value is None:
                    types.pop(t, None)
                elif t in types:
                    types[t].discard(self._rdata(t, value))
                    if not types[t]:
                        del types[t]
                if not types:
                    del self._data[owner]
            self._existing = None

    def records(self, name: str, rdtype: str | int) -> list[str]:
        """The rrset's values in presentation form (TXT as its joined text)."""
        t = to_type(rdtype)
        with self._lock:
            rds = self._data.get(to_name(name), {}).get(t)
            if not rds:
                return []
            if t == dns.rdatatype.TXT:
                return [b"".join(rd.strings).decode() for rd in rds]
            return [rd.to_text() for rd in rds]

    def load_zone(self, text: str, origin: str) -> None:
        """Add every record of BIND zone text (relative names are relative to ``origin``)."""
        zone = dns.zone.from_text(text, origin=to_name(origin), relativize=False, check_origin=False)
        with self._lock:
            for owner, node in zone.nodes.items():
                for rds in node.rdatasets:
                    types = self._data.setdefault(owner, {})
                    mine = types.setdefault(rds.rdtype, dns.rdataset.Rdataset(dns.rdataclass.IN, rds.rdtype))
                    mine.update_ttl(rds.ttl)
                    for rd in rds:
                        mine.add(rd)
            self._existing = None

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._zones.clear()
            self._servfail.clear()
            self._drop.clear()
            self._existing = None
        self.queries.clear()

    def servfail(self, name: str, rdtype: str | int | None = ANY_TYPE) -> None:
        """Answer SERVFAIL to queries for this name (and type, when given)."""
        with self._lock:
            self._servfail.add((to_name(name), None if rdtype is None else to_type(rdtype)))

    def drop(self, name: str, rdtype: str | int | None = ANY_TYPE) -> None:
        """Never answer queries for this name (and type): the client sees a timeout."""
        with self._lock:
            self._drop.add((to_name(name), None if rdtype is None else to_type(rdtype)))

    def heal(self, name: str | None = None) -> None:
        """Undo servfail()/drop() for one name, or for all names."""
        with self._lock:
            if name is None:
                self._servfail.clear()
                self._drop.clear()
            else:
                owner = to_name(name)
                self._servfail = {k for k in self._servfail if k[0] != owner}
                self._drop = {k for k in self._drop if k[0] != owner}

    def queried(self, name: str, rdtype: str | None = None) -> int:
        """How many questions asked for this name (and type)."""
        want = to_name(name).to_text()
        return sum(1 for n, t in self.queries if n == want and (rdtype is None or t == rdtype.upper()))

    @staticmethod
    def _rdata(t: int, value: Any) -> dns.rdata.Rdata:
        if isinstance(value, dns.rdata.Rdata):
            return value
        text = txt_presentation(value) if t in (dns.rdatatype.TXT, dns.rdatatype.SPF) else str(value)
        return dns.rdata.from_text(dns.rdataclass.IN, t, text)

    # ------------------------------------------------------------------ answering

    def _exists(self, name: dns.name.Name) -> bool:
        if self._existing is None:
            existing: set[dns.name.Name] = set()
            for owner in self._data:
                while owner not in existing and owner != dns.name.root:
                    existing.add(owner)
                    owner = owner.parent()
            self._existing = existing
        return name in self._existing

    def _soa(self, name: dns.name.Name) -> dns.rrset.RRset:
        apex = max((z for z in self._zones if name.is_subdomain(z)), key=len, default=None)
        if apex is None:
            # No registered zone: the last two labels stand in (acme.test for _dmarc.acme.test).
            apex = dns.name.Name(name.labels[-3:]) if len(name) > 3 else name
        rrset = dns.rrset.RRset(apex, dns.rdataclass.IN, dns.rdatatype.SOA)
        rrset.update_ttl(60)
        rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA,
                                      f"ns.{apex.to_text()} hostmaster.{apex.to_text()} 1 3600 600 86400 60"))
        return rrset

    def _matches(self, rules: set, name: dns.name.Name, t: int) -> bool:
        return (name, None) in rules or (name, t) in rules

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """The response to one query, or None to stay silent."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        self.queries.append((qname.to_text(), dns.rdatatype.to_text(qtype)))
        with self._lock:
            if self._matches(self._drop, qname, qtype):
                return None
            if self._matches(self._servfail, qname, qtype):
                response.flags &= ~dns.flags.AA
                response.set_rcode(dns.rcode.SERVFAIL)
                return response
            name, seen = qname, set()
            while True:
                types = self._data.get(name, {})
                rds = types.get(qtype)
                if rds:
                    response.answer.append(dns.rrset.from_rdata_list(name, rds.ttl, list(rds)))
                    return response
                cname = types.get(dns.rdatatype.CNAME)
                if cname and qtype != dns.rdatatype.CNAME and name not in seen:
                    seen.add(name)
                    response.answer.append(dns.rrset.from_rdata_list(name, cname.ttl, list(cname)))
                    name = cname[0].target
                    if self._matches(self._servfail, name, qtype):
                        response.set_rcode(dns.rcode.SERVFAIL)
                        return response
                    continue
                if not self._exists(name):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(self._soa(name))
                return response

    def _wire(self, query: dns.message.Message, response: dns.message.Message, limit: int) -> bytes:
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.RA | dns.flags.TC
            return truncated.to_wire()

    # ------------------------------------------------------------------ serving

    def start(self) -> "DnsServer":
        self._thread = threading.Thread(target=self._run, name="test-dns", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._startup_error = exc
            self._ready.set()
        finally:
            loop.close()

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket on the same free port (retry when TCP's half is taken)."""
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(64)
            return udp, tcp
        raise OSError("no free port for both UDP and TCP")

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        udp_sock, tcp_sock = self._bind_pair()
        self.port = udp_sock.getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp_sock)
        server = await asyncio.start_server(self._tcp, sock=tcp_sock)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            transport.close()
            server.close()
            await server.wait_closed()

    def _decode(self, wire: bytes) -> dns.message.Message | None:
        try:
            return dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                query = self._decode(await reader.readexactly(size))
                if query is None:
                    break
                response = self.answer(query)
                if response is None:
                    continue  # silent; the client's timeout fires
                wire = self._wire(query, response, 65535)
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = self.server._decode(data)
        if query is None:
            return
        response = self.server.answer(query)
        if response is None:
            return
        limit = max(512, query.payload) if query.edns >= 0 else 512
        self.transport.sendto(self.server._wire(query, response, limit), addr)


# What the gateway under test calls itself in DNS: the include its tenants' SPF records name, the
# address that include authorises, and its inbound (MX) hostname.
GATEWAY_SPF = "_spf.gateway.test"
GATEWAY_IP = "192.0.2.10"
GATEWAY_MX = "mx.gateway.test"


def publish_gateway(server: DnsServer) -> None:
    """Serve the gateway's own records (its SPF include, its MX host's addresses); idempotent."""
    server.set(GATEWAY_SPF, "TXT", f"v=spf1 ip4:{GATEWAY_IP} -all")
    server.set(GATEWAY_MX, "A", "127.0.0.1")


def dns_overrides(server: DnsServer, timeout: float = 3.0) -> dict[str, Any]:
    """Config overrides that point the daemon's resolver at ``server`` and describe the gateway's
    DNS identity (GATEWAY_*, published on ``server`` by this call); ``.test`` names are allowed."""
    from gateway.config import DomainsConfig

    publish_gateway(server)
    reserved = [r for r in DomainsConfig().reserved if r != "test"]
    return {
        "dns": {"nameservers": [server.host], "port": server.port, "timeout": timeout},
        "domains": {"sending_ips": [GATEWAY_IP], "spf_include": GATEWAY_SPF, "mx_hostname": GATEWAY_MX, "reserved": reserved},
    }


__all__ = ["DnsServer", "dns_overrides", "publish_gateway", "txt_presentation", "GATEWAY_IP", "GATEWAY_MX", "GATEWAY_SPF"]
