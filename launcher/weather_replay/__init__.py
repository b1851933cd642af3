"""A local replay of Open-Meteo's /v1/forecast serving a real recorded answer (recordings/)
re-dated to any requested window, for tests and for `emma up` without internet."""

from __future__ import annotations

from launcher.weather_replay.app import Fault
from launcher.weather_replay.server import WeatherReplayServer, running_weather_replay

__all__ = ["Fault", "WeatherReplayServer", "running_weather_replay"]
