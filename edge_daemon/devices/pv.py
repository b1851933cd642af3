"""Simulated PV inverter: clear-sky plane-of-array irradiance from pvlib, dimmed by cloudiness.

Sign convention: ActivePower is positive when producing.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_daemon.channels import ChannelStore
from edge_daemon.devices.base import ChannelAccess, ChannelSpec, Device, publish
from edge_daemon.params import ParamReader

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_DAY_S = 86_400
_STEP_S = 60


@dataclass(frozen=True, slots=True)
class PvParams:
    peak_power_w: float
    cloudiness: float = 0.0
    tilt_deg: float = 30.0
    azimuth_deg: float = 180.0
    system_losses: float = 0.14


def parse_pv(r: ParamReader) -> PvParams:
    return PvParams(
        peak_power_w=r.get_float("peak_power_w", minimum=0, exclusive_min=True),
        cloudiness=r.get_float("cloudiness", 0.0, minimum=0, maximum=1),
        tilt_deg=r.get_float("tilt_deg", 30.0, minimum=0, maximum=90),
        azimuth_deg=r.get_float("azimuth_deg", 180.0, minimum=0, maximum=360),
        system_losses=r.get_float("system_losses", 0.14, minimum=0, maximum=1),
    )


@functools.lru_cache(maxsize=64)
def _clear_sky_poa(latitude: float, longitude: float, tilt: float, azimuth: float, day: int) -> npt.NDArray[np.float64]:
    """Plane-of-array clear-sky irradiance (W/m2) at one-minute steps over one UTC day.

    pvlib's solar position and Ineichen model cost milliseconds per call, far too much per cycle and
    per device; one vectorised call per day and a linear interpolation per cycle cost microseconds,
    and the cache shares the day between inverters on the same roof.
    """
    # Imported here, not at module level: pvlib pulls in pandas and scipy (over 100 MiB and a second of
    # start-up), which only a site with a simulated inverter needs; every daemon imports this module.
    import numpy as np
    import pandas as pd
    import pvlib

    times = pd.date_range(
        pd.Timestamp(day * _DAY_S, unit="s", tz="UTC"), periods=_DAY_S // _STEP_S + 1, freq=f"{_STEP_S}s"
    )
    location = pvlib.location.Location(latitude, longitude)
    solpos = location.get_solarposition(times)
    sky = location.get_clearsky(times, solar_position=solpos)
    poa = pvlib.irradiance.get_total_irradiance(
        tilt, azimuth, solpos["apparent_zenith"], solpos["azimuth"], sky["dni"], sky["ghi"], sky["dhi"]
    )["poa_global"]
    return np.nan_to_num(np.asarray(poa, dtype=np.float64), nan=0.0).clip(min=0.0)


def clear_sky_poa(latitude: float, longitude: float, tilt: float, azimuth: float, now: float) -> float:
    day, offset = divmod(now, _DAY_S)
    table = _clear_sky_poa(latitude, longitude, tilt, azimuth, int(day))
    index, frac = divmod(offset / _STEP_S, 1.0)
    i = int(index)
    return float(table[i] + (table[i + 1] - table[i]) * frac)


class SimPvInverter(Device):
    type_name = "sim_pv"
    site_power_sign = 1

    def __init__(self, device_id: str, params: PvParams, latitude: float, longitude: float) -> None:
        super().__init__(device_id)
        self.params = params
        self.latitude = latitude
        self.longitude = longitude
        self.cloudiness = params.cloudiness
        self.power_w = 0.0
        self._limit_w: float | None = None
        self._channels = (
            ChannelSpec("ActivePower", "W", ChannelAccess.READ, "AC power produced", 0, params.peak_power_w),
            ChannelSpec(
                "AvailablePower",
                "W",
                ChannelAccess.READ,
                "Power the sun offers before curtailment",
                0,
                params.peak_power_w,
            ),
            ChannelSpec("ActivePowerLimit", "W", ChannelAccess.WRITE, "Curtailment limit", 0, params.peak_power_w),
        )

    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        return self._channels

    def available_power(self, now: float) -> float:
        p = self.params
        poa = clear_sky_poa(self.latitude, self.longitude, p.tilt_deg, p.azimuth_deg, now)
        # Kasten & Czeplak (1980): cloud cover C in [0, 1] scales global irradiance by 1 - 0.75 C^3.4.
        cloud_factor = 1.0 - 0.75 * math.pow(min(1.0, max(0.0, self.cloudiness)), 3.4)
        return min(p.peak_power_w, p.peak_power_w * poa / 1000.0 * (1.0 - p.system_losses) * cloud_factor)

    def read(self, store: ChannelStore, now: float) -> None:
        available = self.available_power(now)
        self.power_w = available if self._limit_w is None else min(available, self._limit_w)
        publish(store, self, {"ActivePower": self.power_w, "AvailablePower": available}, now)

    def write(self, store: ChannelStore) -> None:
        limit = self.output_value(store, "ActivePowerLimit")
        self._limit_w = None if limit is None else min(self.params.peak_power_w, max(0.0, limit))
