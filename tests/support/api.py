"""The tenant HTTP API from a test: keys made over the admin socket, calls with a real aiohttp client.

    async with running_daemon(tmp_path) as d:
        key = await api_key(d, "acme", "owner")
        async with api_client(d, key) as api:
            status, body, headers = await api.get("/v1/tenant")
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, AsyncIterator

import aiohttp

from tests.support.daemon import DaemonHandle


async def api_key(d: DaemonHandle, tenant: str, role: str, *, usecase: str | None = None, **options: Any) -> str:
    """A new key's token (the tenant must exist)."""
    made = await d.call("apikey.add", tenant=tenant, role=role, usecase=usecase, **options)
    return made["token"]


class ApiClient:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None):
        self.session = session
        self.base = base
        self.token = token

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**h, **(extra or {})}

    async def request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                      headers: dict[str, str] | None = None, params: Any = None) -> tuple[int, Any, Any]:
        """(status, decoded body -- JSON when it is JSON, else bytes, None when empty --, headers)."""
        kwargs: dict[str, Any] = {"headers": self.headers(headers), "params": params}
        if json_body is not None:
            kwargs["data"] = json.dumps(json_body).encode()
            kwargs["headers"].setdefault("Content-Type", "application/json")
        elif data is not None:
            kwargs["data"] = data
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            raw = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            body: Any = raw or None
            if raw and ("json" in ctype):
                body = json.loads(raw)
            return resp.status, body, resp.headers

    async def get(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        return await self.request("POST", path, json_body=body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        return await self.request("PUT", path, json_body=body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any, Any]:
        return await self.request("PATCH", path, json_body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        return await self.request("DELETE", path, **kw)


@contextlib.asynccontextmanager
async def api_client(d: DaemonHandle, token: str | None = None, *, scheme: str = "http") -> AsyncIterator[ApiClient]:
    async with aiohttp.ClientSession() as session:
        yield ApiClient(session, f"{scheme}://{d.address('api')}", token)


__all__ = ["api_key", "api_client", "ApiClient"]
