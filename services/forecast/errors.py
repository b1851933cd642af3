"""The forecast models' errors: one root (ForecastError) under core's EmmaError, like market's."""

from __future__ import annotations

from core.errors import ConfigError, EmmaError


class ForecastError(EmmaError):
    """Root of every deliberate error of the forecast package."""


class ForecastInputError(ForecastError):
    """An input a forecast cannot be made from; `field` names it (e.g. `arrays[0].tilt_deg`, `slots`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class MissingSiteData(ForecastError):
    """The site lacks what a requested kind needs: `missing` is "pv_system" or "location"."""

    def __init__(self, missing: str, message: str) -> None:
        super().__init__(message)
        self.missing = missing


class WeatherError(ForecastError):
    """The weather source gave no usable answer. `retry` says whether asking again later can help
    (True for 429/5xx/timeouts/refused connections, False for a refused query or an unreadable answer)."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class WeatherConfigError(ForecastError, ConfigError):
    """An EMMA_WEATHER_* variable is invalid; the message names it."""
