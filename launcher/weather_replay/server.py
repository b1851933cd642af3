"""The weather replay as a running uvicorn server on loopback (port 0 by default), in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import uvicorn

from launcher.weather_replay.app import Fault, ReplayState, create_app, load_recording


class WeatherReplayServer:
    """`async with WeatherReplayServer() as server:` then `server.url` (EMMA_WEATHER_URL)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, control: bool = False, faults: Sequence[Fault] = ()):
        self.state = ReplayState(load_recording(), list(faults))
        self.app = create_app(self.state, control)
        self._config = uvicorn.Config(
            self.app, host=host, port=port, lifespan="off", log_level="warning", timeout_graceful_shutdown=2
        )
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[dict[str, str]]:
        return self.state.requests

    def inject(self, fault: Fault) -> None:
        self.state.faults.append(fault)

    async def start(self) -> None:
        self.state.closing = asyncio.Event()
        server = uvicorn.Server(self._config)
        self._server = server
        self._task = asyncio.create_task(server.serve())
        while not server.started:
            if self._task.done():
                await self._task  # raises what stopped it (port taken, ...)
                raise RuntimeError("the weather replay server stopped while starting")
            await asyncio.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.state.closing.set()  # hanging answers end now
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = self._task = None

    async def __aenter__(self) -> WeatherReplayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def running_weather_replay(
    host: str = "127.0.0.1", port: int = 0, control: bool = False
) -> AsyncIterator[WeatherReplayServer]:
    """The replay server running for the block (what `emma up` starts when there is no internet)."""
    async with WeatherReplayServer(host, port, control) as server:
        yield server
