"""A TCP relay on 127.0.0.1 that can go silent: the network failure no server sends a BYE for.

    async with relay(dovecot.host, dovecot.imap_port) as proxy:    # proxy.port to connect to
        proxy.freeze()        # bytes stop flowing both ways; connections stay open (a dead NAT, a cut cable)
        proxy.thaw()          # new connections relay again (frozen ones stay frozen)
        proxy.connections     # how many clients connected so far

It runs on the test's own event loop and closes every connection on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator


class Relay:
    def __init__(self, host: str, port: int):
        self.host, self.target = host, port
        self.port = 0
        self.connections = 0
        self._frozen = False
        self._frozen_sessions: list[asyncio.Event] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None

    def freeze(self) -> None:
        self._frozen = True
        for gate in self._frozen_sessions:
            gate.clear()

    def thaw(self) -> None:
        """Relay again for connections made from now on."""
        self._frozen = False

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await gate.wait()          # a frozen session never delivers again
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target)
        self._writers += [writer, up_writer]
        gate = asyncio.Event()
        gate.set()
        self._frozen_sessions.append(gate)
        if self._frozen:
            gate.clear()
        for coro in (self._pipe(reader, up_writer, gate), self._pipe(up_reader, writer, gate)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def start(self) -> "Relay":
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            with contextlib.suppress(OSError):
                writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def relay(host: str, port: int) -> AsyncIterator[Relay]:
    proxy = await Relay(host, port).start()
    try:
        yield proxy
    finally:
        await proxy.close()
