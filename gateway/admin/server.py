"""The daemon's side of the admin socket. No logic of its own: it parses a line, calls the named
service method and writes the reply line.

Request:  {"id": 1, "method": "tenant.add", "params": {"name": "acme"}}
Reply:    {"id": 1, "result": ...}   or   {"id": 1, "error": {"code": "not_found", "message": "..."}}

A request is bounded before any method sees it: one line of at most ``admin.max_request_bytes``,
nesting at most ``MAX_DEPTH`` deep (the parser's own recursion limit stops a 100,000-deep line
first), no NaN or infinity; then registry.check_params applies gateway/validate.py's boundary rules.
A refused request gets an error reply and the connection keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import stat
from pathlib import Path
from typing import Any

import structlog

from ..errors import ServiceError, StartupError, StorageFull
from ..lifecycle import Component, Listener
from .registry import AdminMethod, check_params

log = structlog.get_logger("admin")

# Requests are flat (an object of params holding scalars and lists of scalars): 3 levels. Leave room.
MAX_DEPTH = 16


def error_reply(req_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": req_id, "error": {"code": code, "message": message}}


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a request may carry")


def depth(value: Any) -> int:
    """How deep lists and objects nest in a parsed request (iterative: a deep value cannot recurse here)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:  # past the limit the answer is known; stop walking
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_request(line: bytes) -> tuple[Any, dict[str, Any] | None]:
    """(the parsed line, None), or (None, the error reply saying why it cannot be a request)."""
    try:
        request = json.loads(line, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        return None, error_reply(None, "too_deep", f"request nested deeper than {MAX_DEPTH} levels")
    except (ValueError, UnicodeDecodeError) as exc:
        return None, error_reply(None, "parse_error", f"malformed JSON: {str(exc)[:200]}")
    if depth(request) > MAX_DEPTH:
        return None, error_reply(None, "too_deep", f"request nested deeper than {MAX_DEPTH} levels")
    return request, None


class AdminServer(Component):
    name = "admin"

    def __init__(self, path: Path, methods: dict[str, AdminMethod], *, max_request_bytes: int = 1 << 20, metrics: Any = None):
        self.path = path
        self.methods = methods
        self.max_request_bytes = max_request_bytes
        self.metrics = metrics
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._remove_stale_socket()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=64 * 1024)
            os.chmod(self.path, 0o660)
        except OSError as exc:
            raise StartupError(f"admin socket: cannot listen on {self.path}: {exc.strerror or exc}") from None

    def _remove_stale_socket(self) -> None:
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StartupError(f"admin socket: cannot inspect {self.path}: {exc.strerror}") from None
        if not stat.S_ISSOCK(mode):
            # Never delete something that is not a socket: the path is probably misconfigured.
            raise StartupError(f"admin socket path {self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()  # nobody answers: left behind by a dead daemon
            log.info("admin_stale_socket_removed", path=str(self.path))
            return
        finally:
            probe.close()
        raise StartupError(f"admin socket {self.path} is in use by another process")

    async def stop(self, deadline: float) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._sessions):
                task.cancel()
            await self._server.wait_closed()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def reload(self, config: Any) -> None:
        # The socket path needs a restart; the request limit applies to the next line read.
        self.max_request_bytes = config.admin.max_request_bytes

    def listeners(self) -> list[Listener]:
        return [Listener("admin", str(self.path), up=self._server is not None and self._server.is_serving())]

    # ------------------------------------------------------------------ serving

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._sessions.add(task)
        try:
            async for line in self._lines(reader, writer):
                reply = await self.handle_line(line)
                writer.write(json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._sessions.discard(task)
            writer.close()

    async def _lines(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        """Yield request lines; a line over the limit is answered with an error and skipped."""
        buf = bytearray()
        skipping = False
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            while chunk:
                newline = chunk.find(b"\n")
                part, chunk = (chunk, b"") if newline < 0 else (chunk[:newline], chunk[newline + 1 :])
                if not skipping:
                    buf += part
                    if len(buf) > self.max_request_bytes:
                        skipping = True
                        buf.clear()
                if newline < 0:
                    continue
                if skipping:
                    skipping = False
                    reply = error_reply(None, "too_large", f"request line over {self.max_request_bytes} bytes")
                    writer.write(json.dumps(reply).encode() + b"\n")
                    await writer.drain()
                    continue
                line = bytes(buf)
                buf.clear()
                if line.strip():
                    yield line

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        request, refusal = parse_request(line)
        if refusal is not None:
            return refusal
        if not isinstance(request, dict):
            return error_reply(None, "invalid_request", "a request is a JSON object")
        req_id = request.get("id")
        method, params = request.get("method"), request.get("params", {})
        if not isinstance(method, str):
            return error_reply(req_id, "invalid_request", "'method' must be a string")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return error_reply(req_id, "invalid_request", "'params' must be an object")
        fn = self.methods.get(method)
        if fn is None:
            return error_reply(req_id, "method_not_found", f"unknown method {method!r}")
        outcome = "ok"
        try:
            bound = check_params(fn, params)
            result = await fn(*bound.args, **bound.kwargs)
            return {"id": req_id, "result": result}
        except ServiceError as exc:
            outcome = exc.code
            return error_reply(req_id, exc.code, exc.message)
        except StorageFull as exc:
            # Logged once per episode by the store; the operator gets the reason, not "internal".
            outcome = "storage_full"
            return error_reply(req_id, "storage_full", f"cannot write: {exc}")
        except Exception:  # noqa: BLE001 - the daemon keeps serving; the log has the traceback
            outcome = "internal"
            log.exception("admin_method_failed", method=method)
            return error_reply(req_id, "internal", "internal error; see the daemon log")
        finally:
            if self.metrics is not None:
                self.metrics.admin_requests.labels(method=method, outcome=outcome).inc()
