"""A local replay of ENTSO-E, REE REData and ESIOS serving real recorded documents under the real
paths, for tests and for demos without internet (`python -m launcher.market_replay --help`)."""

from __future__ import annotations

from launcher.market_replay.app import Fault, Seen
from launcher.market_replay.server import ReplayServer

__all__ = ["Fault", "ReplayServer", "Seen"]
