"""The replay server as a running uvicorn server: in-process on 127.0.0.1 port 0 for tests, or the
`python -m launcher.market_replay` process for demos."""

from __future__ import annotations

from collections.abc import Sequence

from launcher.in_process_server import InProcessServer
from launcher.market_replay.app import Fault, ReplayState, Seen, create_app
from launcher.market_replay.recordings import Catalog


class ReplayServer(InProcessServer):
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
        super().__init__(create_app(self.state, control), self.state, host, port, "replay server")

    @property
    def seen(self) -> list[Seen]:
        return self.state.seen

    def inject(self, fault: Fault) -> None:
        self.state.faults.append(fault)
