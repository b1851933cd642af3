"""The replay server as a running uvicorn server: in-process on 127.0.0.1 port 0 for tests, or the
`python -m launcher.market_replay` process for demos."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import uvicorn

from launcher.market_replay.app import Fault, ReplayState, Seen, create_app
from launcher.market_replay.recordings import Catalog


class ReplayServer:
    """`async with ReplayServer(entsoe_token=..., esios_token=...) as server:` then `server.url`."""

    def __init__(
        self,
        entsoe_token: str,
        esios_token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        redate: bool = False,
        control: bool = False,
        faults: Sequence[Fault] = (),
        catalog: Catalog | None = None,
    ) -> None:
        if not entsoe_token or not esios_token:
            raise ValueError("the replay server checks tokens like the real APIs: give both tokens")
        self.state = ReplayState(catalog or Catalog.load(), entsoe_token, esios_token, redate, list(faults))
        self.app = create_app(self.state, control)
        self._config = uvicorn.Config(
            self.app, host=host, port=port, lifespan="off", log_level="warning", timeout_graceful_shutdown=2
        )
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = port
        self.host = host

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def seen(self) -> list[Seen]:
        return self.state.seen

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
                raise RuntimeError("the replay server stopped while starting")
            await asyncio.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.state.closing.set()  # hanging answers end now
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._server = self._task = None

    async def __aenter__(self) -> ReplayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
