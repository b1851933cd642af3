"""The forecast scheduler's settings from EMMA_FORECAST_* variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.env import env_flag, env_float
from core.errors import ConfigError
from services.forecast.errors import ForecastError


class ForecastConfigError(ForecastError, ConfigError):
    """An EMMA_FORECAST_* variable is malformed."""


@dataclass(frozen=True)
class SchedulerConfig:
    """enabled: EMMA_FORECAST_SCHEDULER (on/off). interval_s: EMMA_FORECAST_INTERVAL, seconds between
    rounds, each site once per round (default 6 hours, at least 15 minutes). poll_s: how often a
    replica looks for unclaimed work. lease_s: how long a claim holds before another replica may take
    the site over (a replica that died mid-run). score_delay_s: EMMA_FORECAST_SCORE_DELAY_S, how long
    after a forecast's last slot it is scored (late uploads of an edge that was offline)."""

    enabled: bool = True
    interval_s: float = 6 * 3600.0
    poll_s: float = 30.0
    lease_s: float = 300.0
    horizon_slots: int = 4 * 48
    score_delay_s: float = 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SchedulerConfig:
        err = ForecastConfigError
        return cls(
            enabled=env_flag(env, "EMMA_FORECAST_SCHEDULER", cls.enabled, err),
            interval_s=env_float(env, "EMMA_FORECAST_INTERVAL", cls.interval_s, 900.0, err),
            poll_s=env_float(env, "EMMA_FORECAST_POLL_S", cls.poll_s, 0.01, err),
            lease_s=env_float(env, "EMMA_FORECAST_LEASE_S", cls.lease_s, 1.0, err),
            score_delay_s=env_float(env, "EMMA_FORECAST_SCORE_DELAY_S", cls.score_delay_s, 0.0, err),
        )
