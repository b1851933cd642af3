"""The weather replay as a running uvicorn server on loopback (port 0 by default), in-process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from launcher.in_process_server import InProcessServer
from launcher.weather_replay.app import Fault, ReplayState, create_app, load_recording


class WeatherReplayServer(InProcessServer):
    """`async with WeatherReplayServer() as server:` then `server.url` (EMMA_WEATHER_URL)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, control: bool = False, faults: Sequence[Fault] = ()):
        self.state = ReplayState(load_recording(), list(faults))
        super().__init__(create_app(self.state, control), self.state, host, port, "weather replay server")

    @property
    def requests(self) -> list[dict[str, str]]:
        return self.state.requests

    def inject(self, fault: Fault) -> None:
        self.state.faults.append(fault)


@contextlib.asynccontextmanager
async def running_weather_replay(
    host: str = "127.0.0.1", port: int = 0, control: bool = False
) -> AsyncIterator[WeatherReplayServer]:
    """The replay server running for the block (what `emma up` starts when there is no internet)."""
    async with WeatherReplayServer(host, port, control) as server:
        yield server
