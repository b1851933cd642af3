"""A TCP forwarder in front of the test PostgreSQL, so a test can cut the network to the database and mend
it: what services see when the database host is unreachable (connections reset, new ones refused)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit, urlunsplit


class DatabaseProxy:
    """`dsn` reached through 127.0.0.1:`port`; cut() resets every connection and refuses new ones until
    restore() listens again on the same port."""

    def __init__(self, dsn: str) -> None:
        self._target = dsn
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def dsn(self) -> str:
        parts = urlsplit(self._target)
        user = parts.netloc.rpartition("@")[0]
        return urlunsplit((parts.scheme, f"{user}@127.0.0.1:{self.port}", parts.path, "", ""))

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self._target)
        query = parse_qs(parts.query)
        host = (query.get("host") or [parts.hostname or "localhost"])[0]
        port = int((query.get("port") or [parts.port or 5432])[0])
        if host.startswith("/"):  # a Unix socket folder, as the embedded server's DSN names it
            return await asyncio.open_unix_connection(str(Path(host) / f".s.PGSQL.{port}"))
        return await asyncio.open_connection(host, port)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await self._open_target()
        except OSError:
            client_w.close()
            return
        self._pipes.update((client_w, server_w))

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        try:
            await asyncio.gather(pump(client_r, server_w), pump(server_r, client_w))
        finally:
            self._pipes.difference_update((client_w, server_w))

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones, as a host that dropped off the network."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._pipes):
            transport = writer.transport
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
        self._pipes.clear()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> DatabaseProxy:
        await self.restore()
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._server is not None:
            await self.cut()
