"""An ASGI app served by uvicorn inside the calling process: the replay servers' shared lifecycle.

Tests and `emma up` run the replay servers (market, weather) in-process on port 0; `start` returns
once the socket listens and reports the port the OS chose, and `stop` first sets `closing`, so
answers a fault keeps hanging end at once instead of holding up uvicorn's graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol, Self

import uvicorn


class HasClosing(Protocol):
    """The app's state: hanging answers wait on `closing`."""

    closing: asyncio.Event


class InProcessServer:
    """`async with` a subclass, then `server.url`; subclasses build their app and its state."""

    def __init__(self, app: Any, state: HasClosing, host: str, port: int, name: str) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._state = state
        self._name = name
        self._config = uvicorn.Config(
            app, host=host, port=port, lifespan="off", log_level="warning", timeout_graceful_shutdown=2
        )
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        # A fresh event per start: an event may belong to the loop of an earlier start.
        self._state.closing = asyncio.Event()
        server = uvicorn.Server(self._config)
        self._server = server
        self._task = asyncio.create_task(server.serve())
        while not server.started:
            if self._task.done():
                await self._task  # raises what stopped it (port taken, ...)
                raise RuntimeError(f"the {self._name} stopped while starting")
            await asyncio.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._state.closing.set()  # hanging answers end now
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = self._task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
