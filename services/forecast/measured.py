"""A site's measured load and PV from the telemetry store, by the channel convention of
docs/forecasting.md ("Measured history"):

- PV power: `<device>/ActivePower` (W, > 0 producing) of every device whose id is `pv` or starts
  with `pv_` or `pv-` (the edge daemon's `sim_pv` devices are `pv_1`, ...), summed over devices and
  edges.
- Site load: `<device>/ActivePower` (W, > 0 consuming) of every device whose id is `load` or starts
  with `load_` or `load-`, summed likewise. Batteries and EV chargers are left out: the optimizer
  plans them, so they are decisions, not load to forecast.

- Derived site load, for a site whose edges have no load device but meter the grid connection:
  `grid + PV + battery - EV`, from `<device>/ActivePower` of the devices `grid*` (W, > 0 importing,
  < 0 exporting: import - export), `pv*` (> 0 producing), `battery*` (> 0 discharging, < 0
  charging) and `ev*` (> 0 charging a car), each term only where the site has such channels. It is
  the power balance of the site bus (what the edge daemon's simulated grid meter measures by
  construction); EV charging is taken out because, like the battery, it is planned, not forecast.

A 15-minute slot is known only when every matching series has a mean there; otherwise it is NaN (a
gap), because a partial sum would read as a drop in load or PV. The models count NaN as missing and
say so in their degraded reasons.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from services.forecast.model import SLOT
from services.names import SiteName
from services.platform.migrations import Conn
from services.telemetry import ChannelMeans, site_channel_means, site_channels

PV_DEVICE = re.compile(r"^pv([_-].*)?$", re.IGNORECASE)
LOAD_DEVICE = re.compile(r"^load([_-].*)?$", re.IGNORECASE)
GRID_DEVICE = re.compile(r"^grid([_-].*)?$", re.IGNORECASE)
BATTERY_DEVICE = re.compile(r"^battery([_-].*)?$", re.IGNORECASE)
EV_DEVICE = re.compile(r"^ev([_-].*)?$", re.IGNORECASE)
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
    # How the load was measured: "" (no load), "load devices", or the derivation from the grid meter.
    load_source: str = ""


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
    return combined([(1.0, m) for m in means], start, slots)


def combined(terms: list[tuple[float, ChannelMeans]], start: datetime, slots: int) -> Series:
    """sum(sign x series) per slot from `start`; NaN where any series lacks the slot (or there are none)."""
    total = np.zeros(slots)
    seen = np.zeros(slots, dtype=np.int64)
    origin = start.timestamp()
    slot_s = SLOT.total_seconds()
    for sign, m in terms:
        if not m.means:
            continue
        when = np.fromiter((t.timestamp() for t, _ in m.means), dtype=np.float64, count=len(m.means))
        value = np.fromiter((v for _, v in m.means), dtype=np.float64, count=len(m.means))
        index = np.floor((when - origin) / slot_s).astype(np.int64)
        inside = (index >= 0) & (index < slots)
        np.add.at(total, index[inside], sign * value[inside])
        np.add.at(seen, index[inside], 1)
    known = (seen == len(terms)) & np.isfinite(total) if terms else np.zeros(slots, dtype=bool)
    values = np.where(known, total, math.nan).tolist()
    return [(start + SLOT * i, values[i]) for i in range(slots)]


async def read_measured(conn: Conn, site: SiteName, start: datetime, end: datetime) -> Measured:
    """The site's measured load and PV on the slots of [start, end) (start on a 15-minute boundary).
    The load is the load devices' sum; without any, derived from the grid meter where there is one."""
    slots = int((end - start) / SLOT)
    names = sorted({channel for _, channel, _ in await site_channels(conn, site)})
    pv_names = matching(names, PV_DEVICE)
    load_names = matching(names, LOAD_DEVICE)
    # The grid, battery and EV channels are read only when the load has to be derived.
    balance = [] if load_names else matching(names, GRID_DEVICE)
    if balance:
        balance += matching(names, BATTERY_DEVICE) + matching(names, EV_DEVICE)
    means = await site_channel_means(conn, site, pv_names + load_names + balance, start, end)
    # Power in kW would be summed with W; only watts count (the edge daemon's devices report W).
    watts = [m for m in means if m.unit == "W"]
    pv = [m for m in watts if m.channel in pv_names]
    load = [m for m in watts if m.channel in load_names]
    load_series = summed(load, start, slots) if load else []
    load_from = load
    source = "load devices" if load else ""
    grid = [m for m in watts if m.channel in balance and GRID_DEVICE.match(_device(m))]
    if not load and grid:
        battery = [m for m in watts if m.channel in balance and BATTERY_DEVICE.match(_device(m))]
        ev = [m for m in watts if m.channel in balance and EV_DEVICE.match(_device(m))]
        terms = [(1.0, m) for m in grid + pv + battery] + [(-1.0, m) for m in ev]
        load_series = combined(terms, start, slots)
        load_from = grid + pv + battery + ev
        source = "derived: grid + PV + battery - EV"
    return Measured(
        start,
        load_series,
        summed(pv, start, slots) if pv else [],
        tuple(f"{m.edge.edge}: {m.channel}" for m in load_from),
        tuple(f"{m.edge.edge}: {m.channel}" for m in pv),
        source,
    )


def _device(m: ChannelMeans) -> str:
    return m.channel.partition("/")[0]
