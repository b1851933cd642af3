"""A site's measured load and PV from the telemetry store, by the channel convention of
docs/forecasting.md ("Measured history"):

- PV power: `<device>/ActivePower` (W, > 0 producing) of every device whose id is `pv` or starts
  with `pv_` or `pv-` (the edge daemon's `sim_pv` devices are `pv_1`, ...), summed over devices and
  edges.
- Site load: `<device>/ActivePower` (W, > 0 consuming) of every device whose id is `load` or starts
  with `load_` or `load-`, summed likewise. Batteries and EV chargers are left out: the optimizer
  plans them, so they are decisions, not load to forecast.

A 15-minute slot is known only when every matching series has a mean there; otherwise it is NaN (a
gap), because a partial sum would read as a drop in load or PV. The models count NaN as missing and
say so in their degraded reasons.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime

from services.forecast.model import SLOT
from services.names import SiteName
from services.platform.migrations import Conn
from services.telemetry import ChannelMeans, site_channel_means, site_channels

PV_DEVICE = re.compile(r"^pv([_-].*)?$", re.IGNORECASE)
LOAD_DEVICE = re.compile(r"^load([_-].*)?$", re.IGNORECASE)
POWER_CHANNEL = "ActivePower"

Series = list[tuple[datetime, float]]


@dataclass(frozen=True)
class Measured:
    """Both series on the same 15-minute slots from `start` (NaN where unknown); `pv_channels` and
    `load_channels` name what was summed ("edge: device/Channel"), empty when the site has none."""

    start: datetime
    load: Series
    pv: Series
    load_channels: tuple[str, ...]
    pv_channels: tuple[str, ...]


def matching(channels: list[str], device: re.Pattern[str]) -> list[str]:
    """The `device/ActivePower` channels whose device id matches the convention."""
    out = []
    for channel in channels:
        dev, _, name = channel.partition("/")
        if name == POWER_CHANNEL and device.match(dev):
            out.append(channel)
    return out


def summed(means: list[ChannelMeans], start: datetime, slots: int) -> Series:
    """The sum of the series per slot from `start`; NaN where any series lacks the slot (or none exist)."""
    total = [0.0] * slots
    seen = [0] * slots
    for m in means:
        for t, value in m.means:
            i = int((t - start) / SLOT)
            if 0 <= i < slots:
                total[i] += value
                seen[i] += 1
    need = len(means)
    return [
        (start + SLOT * i, total[i] if need and seen[i] == need and math.isfinite(total[i]) else math.nan)
        for i in range(slots)
    ]


async def read_measured(conn: Conn, site: SiteName, start: datetime, end: datetime) -> Measured:
    """The site's measured load and PV on the slots of [start, end) (start on a 15-minute boundary)."""
    slots = int((end - start) / SLOT)
    names = sorted({channel for _, channel, _ in await site_channels(conn, site)})
    pv_names = matching(names, PV_DEVICE)
    load_names = matching(names, LOAD_DEVICE)
    means = await site_channel_means(conn, site, pv_names + load_names, start, end)
    # Power in kW would be summed with W; only watts count (the edge daemon's devices report W).
    pv = [m for m in means if m.channel in pv_names and m.unit == "W"]
    load = [m for m in means if m.channel in load_names and m.unit == "W"]
    return Measured(
        start,
        summed(load, start, slots) if load else [],
        summed(pv, start, slots) if pv else [],
        tuple(f"{m.edge.edge}: {m.channel}" for m in load),
        tuple(f"{m.edge.edge}: {m.channel}" for m in pv),
    )
