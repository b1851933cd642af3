"""Simulated household load: a daily profile in the site's local time plus seeded Gaussian noise.

Sign convention: ActivePower is positive when consuming.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from edge_daemon.channels import ChannelStore
from edge_daemon.devices.base import ChannelAccess, ChannelSpec, Device, publish
from edge_daemon.params import ParamReader

# Hourly shape of a residential load (relative, local time): night base, morning bump, evening peak.
DEFAULT_PROFILE: tuple[float, ...] = (
    0.55,
    0.50,
    0.48,
    0.47,
    0.48,
    0.55,
    0.80,
    1.10,
    1.05,
    0.90,
    0.85,
    0.85,
    0.90,
    0.85,
    0.80,
    0.80,
    0.90,
    1.20,
    1.60,
    1.80,
    1.60,
    1.30,
    1.00,
    0.70,
)


@dataclass(frozen=True, slots=True)
class LoadParams:
    mean_power_w: float
    noise_w: float = 0.0
    seed: int = 0
    profile: tuple[float, ...] = DEFAULT_PROFILE


def parse_load(r: ParamReader) -> LoadParams:
    profile = r.get_float_list("profile", DEFAULT_PROFILE)
    if len(profile) != 24:
        raise r.error("profile", f"expected 24 hourly values, got {len(profile)}")
    if any(v < 0 for v in profile) or sum(profile) <= 0:
        raise r.error("profile", "values must be non-negative and not all zero")
    return LoadParams(
        mean_power_w=r.get_float("mean_power_w", minimum=0),
        noise_w=r.get_float("noise_w", 0.0, minimum=0),
        seed=r.get_int("seed", 0),
        profile=profile,
    )


class SimLoad(Device):
    type_name = "sim_load"
    site_power_sign = -1

    def __init__(self, device_id: str, params: LoadParams, tz: ZoneInfo) -> None:
        super().__init__(device_id)
        self.params = params
        self.tz = tz
        mean = sum(params.profile) / len(params.profile)
        # Normalised so the configured mean is the daily mean whatever the shape's scale.
        self._shape = [v / mean for v in params.profile]
        self._rng = random.Random(params.seed)
        self.power_w = 0.0
        self._channels = (ChannelSpec("ActivePower", "W", ChannelAccess.READ, "Power consumed", 0, None),)

    @property
    def channels(self) -> tuple[ChannelSpec, ...]:
        return self._channels

    def profile_power(self, now: float) -> float:
        local = datetime.fromtimestamp(now, self.tz)
        hour = local.hour + local.minute / 60 + local.second / 3600
        i = int(hour) % 24
        frac = hour - int(hour)
        # Interpolate between hour centres so the profile has no steps on the hour.
        j = (i + 1) % 24
        level = self._shape[i] + (self._shape[j] - self._shape[i]) * frac
        return self.params.mean_power_w * level

    def read(self, store: ChannelStore, now: float) -> None:
        noise = self._rng.gauss(0.0, self.params.noise_w) if self.params.noise_w > 0 else 0.0
        self.power_w = max(0.0, self.profile_power(now) + noise)
        publish(store, self, {"ActivePower": self.power_w}, now)

    def write(self, store: ChannelStore) -> None:
        """A plain load has nothing to control."""
