"""The API listener: one aiohttp application serving the route table (routes.py).

Per request, in this order (each step's refusal is a problem body, problems.py):
    in-flight bound (503) -> client address (X-Forwarded-For only from api.trusted_proxies)
    -> API key (401) -> the key's rate limit (429 + Retry-After) -> the route's permission (403)
    -> the key's own in-flight bound (429)
    -> path, query and body decoded against the route's models (400/413/415/422)
    -> If-Match against the object's current ETag (412) -> the endpoint
    -> the reply converted to the route's response model (so nothing undocumented leaves: a field a
       service returns but the model does not name is dropped) -> ETag / 304 on reads
    -> for a successful change, an ``api_change`` event (who, what, when) committed before the reply.

Public, without a key: /v1/openapi.json (openapi.py) and the page rendering it, /v1/docs/ (docs.py).
/health, /metrics and the public pages are the web server's (gateway/web.py), never served here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..config import Config, split_hostport
from ..web import start_site
from ..errors import StartupError
from ..lifecycle import Component, Listener
from ..budget import ByteBudget
from ..submission.data import COPIES, Reservation, refusal as data_refusal, Outcome
from ..submission.ratelimit import RateLimiter
from .decoding import checked_numbers, list_fields, plain, read_chunked
from .docs import Docs
from .keys import KeyChecker
from .openapi import document
from .paging import MAX_CONDITION, etag, matches
from .problems import CONTENT_TYPE as PROBLEM_TYPE, ApiProblem, forbidden, from_exception, from_validation, invalid, not_found, unauthorized
from .routes import Call, Caller, Reply, Route, item_reads

log = structlog.get_logger("api")

JSON = "application/json"
MAX_PATH_PARAM = 320
CONDITIONS = ("If-Match", "If-None-Match")
# A client address may send this many seconds of api.auth_failure_rate bad keys at once; then it is
# refused until the budget refills. At most MAX_BLOCKED addresses are remembered (the oldest go).
AUTH_FAILURE_BURST = 5.0
MAX_BLOCKED = 100_000
# Locks of objects being changed, by (tenant, path): If-Match's check and the change run under one.
MAX_LOCKS = 10000
# A body read under the memory budget (_read_reserved): given back when its request ends.
RESERVATION = web.RequestKey("reservation", Reservation)


class _Refusals(logging.Filter):
    """aiohttp logs every request its parser refuses (a URL past 8,190 bytes, bytes that are not HTTP)
    at ERROR with a traceback: anyone could fill the log with them. They are the client's fault: one
    line at INFO, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"{record.msg}: {type(exc).__name__} {exc.code}"
            record.exc_info = record.exc_text = None
        return True


PARSER_LOG = logging.getLogger("gateway.api.http")
PARSER_LOG.addFilter(_Refusals())


def problem_response(problem: ApiProblem, instance: str = "") -> web.Response:
    body = problem.body
    if instance and not body.instance:
        body = msgspec.structs.replace(body, instance=instance)
    return web.Response(body=msgspec.json.encode(body), status=problem.status, content_type=PROBLEM_TYPE,
                        headers=problem.headers())


def no_memory() -> ApiProblem:
    err = data_refusal(Outcome.NO_MEMORY)
    return ApiProblem(503, "insufficient-resources", "The gateway has no room for the message now", err.public,
                      smtp=err.reply, retry_after=30)


async def _harden(request: web.Request, response: web.StreamResponse) -> None:
    # Every answer, errors and the docs' files too: no browser guesses a JSON body is HTML.
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def _no_body(request: web.Request) -> bool:
    """Nothing sent (Content-Length 0, or neither it nor chunked transfer), and no media type named but
    application/octet-stream, which clients such as aiohttp's add to every bodiless POST."""
    media = request.headers.get("Content-Type")
    return not request.body_exists and (media is None or request.content_type == "application/octet-stream")


class ApiServer(Component):
    name = "api"

    def __init__(self, config: Callable[[], Config], store: Any, routes: list[Route], metrics: Any, *, tls: Any = None,
                 budget: ByteBudget | None = None, sock: socket.socket | None = None):
        self.config = config
        self.sock = sock   # bound and listening already (a pipeline worker's, gateway/pipelines.py), else api.listen
        self.budget = budget     # the daemon's in-flight memory budget: routes with ``reserve`` read their bodies under it
        self.store = store
        self.routes = routes
        self.metrics = metrics
        self.tls = tls
        api = config().api
        self.keys = KeyChecker(store, ttl=api.key_cache_ttl, default_rate=api.rate_limit)
        # Both in the store (every process and node shares them): the keys' buckets taken in chunks,
        # the bad keys' one token a failure (rare, and each must count).
        self.limiter = RateLimiter(shared=store.limits, scope="apikey")
        self._failures = RateLimiter(shared=store.limits, scope="apifail", exact=True)   # bad keys, per client address
        self._blocked: OrderedDict[str, float] = OrderedDict()  # client address -> refused until (monotonic)
        self._inflight = 0
        self.served = 0   # requests answered by this process (status: which pipeline worker serves how many)
        self._inflight_by_client: dict[str, int] = {}   # only addresses with requests in flight (bounded by max_inflight)
        self._per_key: dict[int, int] = {}   # requests in flight by API key id (only keys with one open)
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}
        self._reads = item_reads(routes)
        self._lists = {id(r): (list_fields(r.query)) for r in routes}
        self._runner: web.AppRunner | None = None
        self._address = api.listen
        self._document: bytes | None = None
        self.docs = Docs()

    # ------------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        # The body limit of the send route is its own (checked before reading); aiohttp's own cap is
        # the largest any route takes, so a body past every route's limit is never read at all.
        largest = max([self.config().api.max_body_bytes, *[self._limit(r) for r in self.routes]])
        app = web.Application(client_max_size=largest, middlewares=[self._guard])
        app.on_response_prepare.append(_harden)
        app.router.add_get("/v1/openapi.json", self._openapi)
        self.docs.add_routes(app.router)
        for route in self.routes:
            app.router.add_route(route.method, route.path, self._handler(route))
        return app

    async def start(self) -> None:
        api = self.config().api
        host, port = split_hostport(api.listen)
        # keepalive_timeout runs from the connection's start too: one that sends nothing (or never
        # finishes its headers) is closed after it, not held for aiohttp's default hour.
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, keepalive_timeout=api.idle_timeout,
                                     logger=PARSER_LOG)
        await self._runner.setup()
        ssl_context = None
        if api.tls:
            self.tls.load()
            ssl_context = self.tls.context
        if self.sock is not None:
            site: web.BaseSite = web.SockSite(self._runner, self.sock, ssl_context=ssl_context)
        else:
            site = web.TCPSite(self._runner, host, port, reuse_address=True, ssl_context=ssl_context, backlog=512)
        try:
            self._address = await start_site(self._runner, site, "api", api.listen) or self._address
        except StartupError:
            self._runner = None
            raise
        log.info("api_listening", address=self._address, tls=api.tls, routes=len(self.routes))

    async def stop(self, deadline: float) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.limiter.close()   # the keys' tokens this process holds go back to the store

    async def reload(self, config: Config) -> None:
        self.keys.ttl = config.api.key_cache_ttl
        self.keys.default_rate = config.api.rate_limit
        self._document = None

    def listeners(self) -> list[Listener]:
        return [Listener("api", self._address, up=self._runner is not None)]

    def status(self) -> dict[str, Any]:
        return {"api": {"requests": self.served, "in_flight": self._inflight}}

    # ------------------------------------------------------------------ the pipeline

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The in-flight bounds (all clients, and one client address: so one address cannot take every
        slot), and problem bodies for what aiohttp itself refuses (no route, method)."""
        api = self.config().api
        client = self._client(request)
        mine = self._inflight_by_client.get(client, 0)
        if self._inflight >= api.max_inflight or mine >= api.max_inflight_per_client:
            return problem_response(ApiProblem(503, "busy", "Too many requests in flight", "try again shortly", retry_after=1))
        self._inflight += 1
        self._inflight_by_client[client] = mine + 1
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return problem_response(not_found(f"no route {request.path[:200]}"))
        except web.HTTPMethodNotAllowed as exc:
            problem = ApiProblem(405, "method-not-allowed", "Method not allowed", f"{request.method} is not allowed here")
            response = problem_response(problem)
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
            return response
        except web.HTTPRequestEntityTooLarge:
            return problem_response(invalid("the request body is too large", None, 413))
        finally:
            self._inflight -= 1
            left = self._inflight_by_client.pop(client) - 1
            if left:
                self._inflight_by_client[client] = left

    def _client(self, request: web.Request) -> str:
        peer = request.remote or ""
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded and self._trusted(peer):
            # The right-most address the trusted proxy saw; what is left of it the client wrote itself.
            return forwarded.split(",")[-1].strip()[:64]
        return peer

    def _trusted(self, peer: str) -> bool:
        proxies = self.config().api.trusted_proxies
        if not proxies or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(p, strict=False) for p in proxies)

    def scheme(self, request: web.Request) -> str:
        """https or http as the client sees it (X-Forwarded-Proto only from a trusted proxy)."""
        proto = request.headers.get("X-Forwarded-Proto", "").strip().lower()
        if proto in ("http", "https") and self._trusted(request.remote or ""):
            return proto
        return "https" if self.config().api.tls else "http"

    async def _authenticate(self, request: web.Request, client: str) -> Caller:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("send the API key as Authorization: Bearer gw_live_...")
        caller, why = await self.keys.check(token.strip(), client)
        if caller is None:
            log.info("api_key_refused", reason=why, client=client)
            raise unauthorized("the API key is not valid (unknown, revoked or expired)")
        return caller

    async def _checked_key(self, request: web.Request, client: str) -> Caller:
        """The caller, or 401; an address that keeps sending bad keys is refused (429) before its
        keys are looked at, for as long as its budget of failures takes to refill."""
        api = self.config().api
        now = time.monotonic()
        blocked = self._blocked.get(client)
        if blocked is not None and blocked > now:
            raise self._too_many_failures(blocked - now)
        try:
            return await self._authenticate(request, client)
        except ApiProblem:
            wait = await self._failures.wait(client, api.auth_failure_rate, api.auth_failure_rate * AUTH_FAILURE_BURST)
            if not wait:
                raise
            self._blocked[client] = now + wait
            self._blocked.move_to_end(client)
            while len(self._blocked) > MAX_BLOCKED:
                self._blocked.popitem(last=False)
            log.info("api_client_cooling_down", client=client, seconds=round(wait, 1))
            raise self._too_many_failures(wait) from None

    @staticmethod
    def _too_many_failures(wait: float) -> ApiProblem:
        return ApiProblem(429, "too-many-failures", "Too many requests with a missing or invalid API key",
                          "this address sent too many bad keys; wait before trying again", retry_after=wait)

    def _handler(self, route: Route) -> Callable[[web.Request], Any]:
        name = f"{route.method} {route.path}"
        counters: dict[int, Any] = {}
        seconds = self.metrics.api_seconds.labels(method=route.method)

        async def handle(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            try:
                response = await self._serve(route, request)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a problem body
                problem = from_exception(exc)
                if problem is None:
                    log.exception("api_internal_error", route=name)
                    problem = ApiProblem(500, "internal", "Internal error", "the gateway failed to handle this request; it is logged")
                response = problem_response(problem, request.path[:500])
            counter = counters.get(response.status)
            if counter is None:   # a labelled child is a lock and a dict lookup of a tuple: once per route and status
                counter = counters[response.status] = self.metrics.api_requests.labels(route=name, status=str(response.status))
            seconds.observe(time.perf_counter() - started)
            counter.inc()
            self.served += 1
            return response

        return handle

    async def _serve(self, route: Route, request: web.Request) -> web.StreamResponse:
        client = self._client(request)
        caller = await self._checked_key(request, client)
        wait = await self.limiter.wait(caller.key_id, caller.rate_limit, max(1.0, caller.rate_limit * self.config().api.rate_burst))
        if wait:
            raise ApiProblem(429, "rate-limited", "The API key's rate limit is spent",
                             f"this key may make {caller.rate_limit:g} requests a second", retry_after=wait)
        if not caller.may(route.permission):
            raise forbidden(route.permission, caller.role)
        held = self._per_key.get(caller.key_id, 0)
        if held >= self.config().api.max_inflight_per_key:
            # One key's slow requests must not take every place of max_inflight from the other tenants.
            raise ApiProblem(429, "too-many-in-flight", "The API key has too many requests in flight",
                             f"this key may have {self.config().api.max_inflight_per_key} requests open at once", retry_after=1)
        self._per_key[caller.key_id] = held + 1
        try:
            return await self._call(route, request, caller, client)
        finally:
            left = self._per_key.pop(caller.key_id) - 1
            if left:
                self._per_key[caller.key_id] = left
            reservation = request.get(RESERVATION)   # a body read under the memory budget (_read_reserved)
            if reservation is not None:
                reservation.release()

    async def _call(self, route: Route, request: web.Request, caller: Caller, client: str) -> web.StreamResponse:
        params = self._params(request)
        query = self._query(route, request)
        body, content_type = await self._body(route, request)
        call = Call(caller=caller, params=params, query=query, body=body, request=request, content_type=content_type)
        for name in CONDITIONS:
            if len(request.headers.get(name, "")) > MAX_CONDITION:
                raise invalid(f"{name} is longer than {MAX_CONDITION} characters", f"header.{name}", 400)
        if route.method == "GET":
            result = await route.handler(call)
            if isinstance(result, web.StreamResponse):
                return result   # streamed by the endpoint itself (bytes of unbounded size): no ETag
            return self._respond(route, result, request)
        if_match = request.headers.get("If-Match")
        read = self._reads.get(route.path)
        if if_match is None or read is None:
            result = await route.handler(call)
        else:
            async with self._lock(caller.tenant_id, request.path):
                current = self._encode(read, await read.handler(Call(caller=caller, params=params, query=read.query() if read.query else None,
                                                                      body=None, request=request)))
                if not matches(if_match, etag(current[0])):
                    raise ApiProblem(412, "precondition-failed", "The object changed since it was read",
                                     "If-Match does not name the current ETag; read it again")
                result = await route.handler(call)
        response = self._respond(route, result, request)
        if route.audit and 200 <= response.status < 300:
            await self.store.events.append(caller.tenant_id, "api_change", f"{route.method} {request.path[:300]}", {
                "key": caller.public_id, "key_name": caller.name, "role": caller.role, "client": client,
                "route": f"{route.method} {route.path}", "status": response.status})
        return response

    def _lock(self, tenant_id: int, path: str) -> asyncio.Lock:
        key = (tenant_id, path)
        lock = self._locks.get(key)
        if lock is None:
            if len(self._locks) >= MAX_LOCKS:
                for k in [k for k, l in self._locks.items() if not l.locked()]:
                    del self._locks[k]
            lock = self._locks[key] = asyncio.Lock()
        return lock

    @staticmethod
    def _params(request: web.Request) -> dict[str, str]:
        params = dict(request.match_info)
        for name, value in params.items():
            if len(value) > MAX_PATH_PARAM or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
                raise not_found(f"no such {name}")
        return params

    def _query(self, route: Route, request: web.Request) -> Any:
        if route.query is None:
            if request.query:
                raise invalid(f"this route takes no query parameters (got {', '.join(sorted(request.query))[:200]})", "query")
            return None
        lists = self._lists[id(route)]
        raw: dict[str, Any] = {}
        for key in request.query.keys():
            if key in raw:
                continue
            values = request.query.getall(key)
            raw[key] = values if key in lists else values[-1]
        try:
            return checked_numbers(msgspec.convert(raw, route.query, strict=False), "query")
        except msgspec.ValidationError as exc:
            raise from_validation(exc, "query") from None

    def _limit(self, route: Route) -> int:
        if callable(route.max_body):
            return route.max_body(self.config())
        return route.max_body or self.config().api.max_body_bytes

    async def _body(self, route: Route, request: web.Request) -> tuple[Any, str]:
        if route.body is None and not route.raw:
            return None, ""
        limit = self._limit(route)
        if request.content_length is not None and request.content_length > limit:
            raise invalid(f"the request body is larger than {limit} bytes", None, 413)
        if route.body_optional and _no_body(request):
            return msgspec.json.decode(b"{}", type=route.body), JSON   # e.g. a DKIM rotation with the defaults
        media = request.content_type
        if media != JSON and media not in route.raw or (media == JSON and route.body is None):
            takes = ([JSON] if route.body is not None else []) + list(route.raw)
            raise invalid(f"send the body as {' or '.join(takes)}, not {media or 'nothing'}", "body", 415)
        try:
            # A body trickled in a byte at a time would hold its in-flight slot (and its reservation) for ever.
            # One that came whole with its headers (most: a 4 KB send is one segment) waits for nothing:
            # no timer (arming and cancelling one was 3% of a send's CPU, py-spy --gil).
            arrived = request.content.is_eof()
            async with contextlib.nullcontext() if arrived else asyncio.timeout(self.config().api.body_timeout):
                if route.reserve and self.budget is not None:
                    data = await self._read_reserved(route, request, limit)
                elif request.content_length is not None:
                    data = await request.read()       # declared and within the limit: aiohttp stops there
                else:
                    data = await read_chunked(request, limit)
        except TimeoutError:
            raise ApiProblem(408, "request-timeout", "The request body did not arrive in time",
                             f"the whole body must arrive within api.body_timeout ({self.config().api.body_timeout:g} s)") from None
        if len(data) > limit:
            raise invalid(f"the request body is larger than {limit} bytes", None, 413)
        if media in route.raw:
            return data, media
        try:
            return checked_numbers(msgspec.json.decode(data, type=route.body), ""), media
        except msgspec.ValidationError as exc:
            raise from_validation(exc) from None
        except msgspec.DecodeError as exc:
            raise invalid(f"the body is not JSON: {exc}", "body", 400) from None
        except RecursionError:      # msgspec's guard against [[[[...]]]]: a refusal, not a crash
            raise invalid("the body's JSON is nested too deeply", "body", 400) from None

    async def _read_reserved(self, route: Route, request: web.Request, limit: int) -> bytes:
        """The body, read while the memory budget covers ``route.reserve`` times what has arrived (as
        submission's DATA, submission/data.py); past the budget 503 + Retry-After, as SMTP's 452 4.3.1.
        The reservation is given back when the request ends (``_serve``)."""
        reservation = Reservation(self.budget)
        request[RESERVATION] = reservation
        declared = request.content_length
        if declared is not None and not reservation.cover(route.reserve * declared // COPIES):
            raise no_memory()
        if declared is not None:
            return await request.read()   # covered already; aiohttp stops at client_max_size
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise invalid(f"the request body is larger than {limit} bytes", None, 413)
            if not reservation.cover(route.reserve * size // COPIES):
                raise no_memory()
            chunks.append(chunk)
        return b"".join(chunks)

    def _encode(self, route: Route, result: Any) -> tuple[bytes, int, dict[str, str], str]:
        reply = result if isinstance(result, Reply) else Reply(body=result)
        status = reply.status or route.status
        content_type = reply.content_type or route.produces
        if reply.body is None or isinstance(reply.body, bytes):
            return reply.body or b"", status, reply.headers, content_type
        value = reply.body
        if route.response is not None:
            # Shape the reply by its model: what the model does not name is not sent. Structs are
            # taken apart first: convert passes an instance of the model through as it is, so a
            # Page(data=[row, ...]) would carry every column of its rows.
            value = msgspec.convert(plain(value), route.response, from_attributes=True)
        return msgspec.json.encode(value), status, reply.headers, content_type

    def _respond(self, route: Route, result: Any, request: web.Request) -> web.StreamResponse:
        if isinstance(result, web.StreamResponse):
            return result   # the endpoint streamed it itself (a CSV export): no ETag for what was never whole
        body, status, headers, content_type = self._encode(route, result)
        if status == 204 or (not body and route.response is None):
            return web.Response(status=status if status != 200 else 204, headers=headers)
        if request.method == "GET" and status == 200:
            tag = etag(body)
            none_match = request.headers.get("If-None-Match")
            if none_match is not None and matches(none_match, tag):
                return web.Response(status=304, headers={**headers, "ETag": tag})
            headers = {**headers, "ETag": tag}
        return web.Response(body=body, status=status, headers=headers, content_type=content_type)

    async def _openapi(self, request: web.Request) -> web.Response:
        if self._document is None:
            url = self.config().api.public_url
            self._document = msgspec.json.encode(document(self.routes, server_url=url))
        return web.Response(body=self._document, content_type=JSON)
