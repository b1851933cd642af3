"""The alarm engine's settings from EMMA_ALARM_* variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.env import env_flag, env_float, env_int
from services.alarm.errors import AlarmConfigError


@dataclass(frozen=True)
class EngineConfig:
    """enabled: EMMA_ALARM_ENGINE (on/off). interval_s: EMMA_ALARM_INTERVAL_S, seconds between two
    evaluations (default 1 s: a sample becomes a visible alarm within about a second of its commit).
    samples_per_channel: EMMA_ALARM_SAMPLES_PER_CHANNEL, the most samples of one channel judged per
    evaluation; the rest wait for the next one, so one chatty channel cannot stall the others."""

    enabled: bool = True
    interval_s: float = 1.0
    samples_per_channel: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EngineConfig:
        err = AlarmConfigError
        return cls(
            enabled=env_flag(env, "EMMA_ALARM_ENGINE", cls.enabled, err),
            interval_s=env_float(env, "EMMA_ALARM_INTERVAL_S", cls.interval_s, 0.01, err),
            samples_per_channel=env_int(env, "EMMA_ALARM_SAMPLES_PER_CHANNEL", cls.samples_per_channel, 1, None, err),
        )
