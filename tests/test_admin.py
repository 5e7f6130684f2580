"""The admin socket protocol: JSON lines in, one reply line out, and no bad request stops it."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest

from gateway.admin.registry import admin_method, check_params, collect
from gateway.admin.server import AdminServer
from gateway.errors import NotFound, StartupError
from gateway.metrics import Metrics
from tests.support.daemon import running_daemon


class Conn:
    """A raw client on the socket, to send what the real client never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path) -> "Conn":
        return cls(*await asyncio.open_unix_connection(str(path), limit=1 << 22))

    async def send_raw(self, data: bytes) -> dict:
        self.writer.write(data)
        await self.writer.drain()
        return json.loads(await asyncio.wait_for(self.reader.readline(), 10))

    async def call(self, request: object) -> dict:
        return await self.send_raw(json.dumps(request).encode() + b"\n")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def code(reply: dict) -> str:
    return reply["error"]["code"]


async def test_bad_requests_get_errors_and_the_connection_keeps_serving(tmp_path):
    async with running_daemon(tmp_path) as d:
        c = await Conn.open(d.daemon.paths.socket)
        try:
            assert await c.call({"id": 1, "method": "ping"}) == {"id": 1, "result": "pong"}
            reply = await c.send_raw(b"{not json\n")
            assert code(reply) == "parse_error" and reply["id"] is None
            assert code(await c.send_raw(b"\xff\xfe\n")) == "parse_error"
            assert code(await c.call([1, 2, 3])) == "invalid_request"
            assert code(await c.call("ping")) == "invalid_request"
            assert code(await c.call({"id": 2})) == "invalid_request"
            assert code(await c.call({"id": 3, "method": 7})) == "invalid_request"
            assert code(await c.call({"id": 4, "method": "ping", "params": [1]})) == "invalid_request"
            reply = await c.call({"id": 5, "method": "no.such"})
            assert reply == {"id": 5, "error": {"code": "method_not_found", "message": "unknown method 'no.such'"}}
            # Wrong params: missing, unexpected, wrong type.
            reply = await c.call({"id": 6, "method": "tenant.show", "params": {}})
            assert code(reply) == "invalid_params" and "name" in reply["error"]["message"]
            assert code(await c.call({"id": 7, "method": "tenant.show", "params": {"name": "a", "extra": 1}})) == "invalid_params"
            reply = await c.call({"id": 8, "method": "tenant.show", "params": {"name": 42}})
            assert reply["error"] == {"code": "invalid_params", "message": "bad params: 'name' has the wrong type (int)"}
            reply = await c.call({"id": 9, "method": "tenant.add", "params": {"name": "a", "monthly_quota": True}})
            assert code(reply) == "invalid_params"
            # Service errors carry their own codes.
            assert code(await c.call({"id": 10, "method": "tenant.show", "params": {"name": "ghost"}})) == "not_found"
            assert code(await c.call({"id": 11, "method": "tenant.add", "params": {"name": "Bad Name"}})) == "invalid"
            # Blank lines are ignored, several requests in one write are answered in order.
            c.writer.write(b"\n\n" + b"".join(json.dumps({"id": i, "method": "ping"}).encode() + b"\n" for i in (20, 21)))
            await c.writer.drain()
            assert [json.loads(await c.reader.readline())["id"] for _ in range(2)] == [20, 21]
            # Still alive, same connection.
            assert await c.call({"id": 99, "method": "ping"}) == {"id": 99, "result": "pong"}
        finally:
            await c.close()


async def test_line_over_the_limit_is_refused_and_the_next_one_served(tmp_path):
    async with running_daemon(tmp_path) as d:
        limit = d.daemon.config.admin.max_request_bytes
        assert limit == 1 << 20
        c = await Conn.open(d.daemon.paths.socket)
        try:
            huge = json.dumps({"id": 1, "method": "ping", "params": {"pad": "x" * (limit + 10)}}).encode() + b"\n"
            reply = await c.send_raw(huge)
            assert reply == {"id": None, "error": {"code": "too_large", "message": f"request line over {limit} bytes"}}
            # Exactly at the limit is fine (and answered with a params error, as 'pad' is unknown).
            pad = limit - len(json.dumps({"id": 2, "method": "ping", "params": {"pad": ""}}))
            at_limit = json.dumps({"id": 2, "method": "ping", "params": {"pad": "y" * pad}}).encode()
            assert len(at_limit) == limit
            assert code(await c.send_raw(at_limit + b"\n")) == "invalid_params"
            assert await c.call({"id": 3, "method": "ping"}) == {"id": 3, "result": "pong"}
        finally:
            await c.close()


async def test_many_connections_at_once(tmp_path):
    async with running_daemon(tmp_path) as d:
        conns = [await Conn.open(d.daemon.paths.socket) for _ in range(20)]
        try:
            replies = await asyncio.gather(*(c.call({"id": i, "method": "ping"}) for i, c in enumerate(conns)))
            assert [r["id"] for r in replies] == list(range(20))
        finally:
            for c in conns:
                await c.close()


class Boom:
    @admin_method("boom")
    async def boom(self) -> None:
        raise RuntimeError("secret internal detail /etc/shadow")

    @admin_method("missing")
    async def missing(self, what: str) -> None:
        raise NotFound(f"no {what}")

    @admin_method("echo")
    async def echo(self, text: str, times: int = 1, ratio: float = 1.0, tags: list[str] | None = None) -> dict:
        return {"text": text * times, "ratio": ratio, "tags": tags}


async def test_unexpected_exceptions_never_reach_the_client(tmp_path):
    metrics = Metrics()
    server = AdminServer(tmp_path / "a.sock", collect(Boom()), metrics=metrics)
    await server.start()
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "a.sock").st_mode) == 0o660
        c = await Conn.open(tmp_path / "a.sock")
        reply = await c.call({"id": 1, "method": "boom"})
        assert reply == {"id": 1, "error": {"code": "internal", "message": "internal error; see the daemon log"}}
        assert await c.call({"id": 2, "method": "missing", "params": {"what": "x"}}) == {
            "id": 2, "error": {"code": "not_found", "message": "no x"}}
        ok = await c.call({"id": 3, "method": "echo", "params": {"text": "ab", "times": 2, "ratio": 3, "tags": ["t"]}})
        assert ok == {"id": 3, "result": {"text": "abab", "ratio": 3, "tags": ["t"]}}
        assert code(await c.call({"id": 4, "method": "echo", "params": {"text": "a", "tags": [1]}})) == "invalid_params"
        await c.close()
        assert metrics.registry.get_sample_value("gateway_admin_requests_total", {"method": "boom", "outcome": "internal"}) == 1
        assert metrics.registry.get_sample_value("gateway_admin_requests_total", {"method": "echo", "outcome": "ok"}) == 1
    finally:
        await server.stop(asyncio.get_running_loop().time() + 5)
    assert not (tmp_path / "a.sock").exists()


async def test_socket_in_use_or_not_a_socket_is_refused(tmp_path):
    first = AdminServer(tmp_path / "a.sock", collect(Boom()))
    await first.start()
    try:
        with pytest.raises(StartupError, match="is in use by another process"):
            await AdminServer(tmp_path / "a.sock", {}).start()
    finally:
        await first.stop(0)
    (tmp_path / "file").write_text("precious")
    with pytest.raises(StartupError, match="exists and is not a socket"):
        await AdminServer(tmp_path / "file", {}).start()
    assert (tmp_path / "file").read_text() == "precious"


def test_check_params_binds_and_types():
    fn = Boom().echo
    assert check_params(fn, {"text": "a"}).arguments == {"text": "a"}
    for bad in ({}, {"text": 1}, {"text": "a", "times": "2"}, {"text": "a", "times": 1.5}, {"text": "a", "nope": 1}):
        with pytest.raises(Exception) as exc:
            check_params(fn, bad)
        assert getattr(exc.value, "code", None) == "invalid_params", bad


def test_collect_refuses_duplicate_names():
    with pytest.raises(ValueError, match="defined twice"):
        collect(Boom(), Boom())


async def test_deep_nesting_is_refused_and_the_connection_keeps_serving(tmp_path):
    async with running_daemon(tmp_path) as d:
        c = await Conn.open(d.daemon.paths.socket)
        try:
            reply = await c.send_raw(b"[" * 100_000 + b"]" * 100_000 + b"\n")
            assert reply["error"]["code"] == "too_deep" and reply["id"] is None
            inner = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
            assert code(await c.send_raw(b'{"id":1,"method":"ping","params":{"a":' + inner + b"}}\n")) == "too_deep"
            # Unbalanced and deep: refused as well; and deeper than ours but far within Python's limit.
            assert code(await c.send_raw(b"[" * 50_000 + b"\n")) == "too_deep"
            assert code(await c.send_raw(b'{"id":1,"method":"ping","params":{"a":' + b"[" * 40 + b"]" * 40 + b"}}\n")) == "too_deep"
            # Brackets inside strings are text, not nesting; escaped quotes do not end a string.
            ok = await c.call({"id": 2, "method": "tenant.add", "params": {"name": "brackets", "display_name": '[{"\\' * 40}})
            assert ok["result"]["display_name"] == '[{"\\' * 40
            assert await c.call({"id": 3, "method": "ping"}) == {"id": 3, "result": "pong"}
        finally:
            await c.close()


async def test_non_finite_numbers_in_json_are_refused(tmp_path):
    async with running_daemon(tmp_path) as d:
        c = await Conn.open(d.daemon.paths.socket)
        try:
            for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
                line = b'{"id":1,"method":"domain.reverify","params":{"older_than":' + literal + b"}}\n"
                reply = await c.send_raw(line)
                assert code(reply) in ("parse_error", "invalid"), (literal, reply)
            assert await c.call({"id": 2, "method": "ping"}) == {"id": 2, "result": "pong"}
        finally:
            await c.close()


# Values no admin method may accept: each must be refused with a usage or not-found error, never
# an internal error and never a result.
HOSTILE = {
    "int beyond 64 bits": 2**64,
    "negative int beyond 64 bits": -(2**70),
    "lone surrogate (non-UTF-8 argument)": "ab\udcff",
    "100 KB string": "a" * 100_000,
    "terminal escape": "x\x1b[2J",
    "NUL": "a\x00b",
    "bidi override": "abc\u202edef",
}


def placeholder(hint) -> object:
    """A well-formed value of the parameter's type, for the parameters not under test."""
    text = str(hint)
    if "list" in text:
        return ["t"]
    if "bool" in text:
        return False
    if "int" in text:
        return 1
    if "float" in text:
        return 1.0
    return "t"


async def test_every_method_refuses_hostile_values(tmp_path):
    import inspect
    import typing

    async with running_daemon(tmp_path) as d:
        methods = next(c for c in d.daemon.components if c.name == "admin").methods
        c = await Conn.open(d.daemon.paths.socket)
        tried = 0
        try:
            for method, fn in sorted(methods.items()):
                hints = typing.get_type_hints(fn)
                params = inspect.signature(fn).parameters
                required = {p: placeholder(hints.get(p)) for p, spec in params.items() if spec.default is inspect.Parameter.empty}
                for name in params:
                    if "bool" in str(hints.get(name)) and "None" not in str(hints.get(name)):
                        continue  # a flag: its type check is the whole rule
                    for label, value in HOSTILE.items():
                        bad = value if "list" not in str(hints.get(name)) else [value]
                        reply = await c.call({"id": 1, "method": method, "params": {**required, name: bad}})
                        tried += 1
                        assert "error" in reply, (method, name, label, reply)
                        assert reply["error"]["code"] in ("invalid", "invalid_params", "not_found"), (method, name, label, reply)
                        assert "\x1b" not in reply["error"]["message"] and len(reply["error"]["message"]) < 500, (method, name, label)
            assert tried > 200
            assert await c.call({"id": 2, "method": "ping"}) == {"id": 2, "result": "pong"}
        finally:
            await c.close()
