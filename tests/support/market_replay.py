"""The market replay server (launcher.market_replay) on 127.0.0.1 port 0, and a SourcesConfig whose
base URLs point at it, for tests of the real market clients over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from launcher.market_replay import Fault, ReplayServer
from services.market.sources import SourcesConfig

# Fresh per session: the replay checks them like the real APIs do, and no test depends on their value.
ENTSOE_TOKEN = "entsoe-" + secrets.token_hex(16)
ESIOS_TOKEN = "esios-" + secrets.token_hex(16)


def sources_config(url: str, **overrides: Any) -> SourcesConfig:
    """Clients aimed at the replay at `url`: short timeouts and backoffs so failures are quick."""
    config = SourcesConfig(
        entsoe_token=ENTSOE_TOKEN,
        esios_token=ESIOS_TOKEN,
        entsoe_url=f"{url}/api",
        redata_url=url,
        esios_url=url,
        connect_timeout_s=2.0,
        read_timeout_s=2.0,
        retries=2,
        backoff_s=0.01,
        backoff_max_s=0.05,
        ree_per_minute=6000,
    )
    return replace(config, **overrides)


@asynccontextmanager
async def replay_server(*faults: Fault, redate: bool = False, control: bool = False) -> AsyncIterator[ReplayServer]:
    server = ReplayServer(ENTSOE_TOKEN, ESIOS_TOKEN, redate=redate, control=control, faults=faults)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@dataclass
class SleepLog:
    """An asyncio.sleep that remembers each delay asked of it (and waits at most `cap` seconds of it)."""

    cap: float = 10.0
    delays: list[float] = field(default_factory=list)

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(min(delay, self.cap))
